package rollout

import (
	"fmt"
	"slices"
	"time"

	"github.com/upshift-io/upshift/resources/upgrade"
)

// Rollout names one of the rollouts that change a cluster's machines. At most one of them changes machines at a
// time: the one whose turn it is (Turn).
type Rollout string

// The rollouts of a cluster, in the order Turn gives them the cluster when several want it at once: Talos first
// (a Kubernetes target must be one the new Talos runs), then Kubernetes, then config patches.
const (
	RolloutTalos      Rollout = "talos"
	RolloutKubernetes Rollout = "kubernetes"
	RolloutConfig     Rollout = "config"
)

var turnOrder = []Rollout{RolloutTalos, RolloutKubernetes, RolloutConfig}

// Claim is what one rollout asks of its cluster.
type Claim struct {
	// Busy: it has machines or steps in flight, or admitted and not yet taken up. A busy rollout keeps the cluster
	// until they end, whatever else wants it.
	Busy bool
	// Wants: it has work left that it would do now if it had the turn. Work that waits only on locks, or a rollout
	// Blocked until a user acts, is not wanting: it leaves the cluster to the others (a locked machine with a pending
	// change never blocks unrelated work).
	Wants bool
}

// Turn is the one rule that keeps a cluster's Talos upgrade, Kubernetes upgrade and config rollout from ever
// changing machines at once: the rollout with work in flight keeps the turn; else the one that had it (prev)
// keeps it while it still wants it, so a rollout that started is never interrupted by one requested after it;
// else the first that wants it in turnOrder. "" when none wants it.
//
// The rollouts decided by TalosUpgradeStatusController (Talos, config) start nothing unless it is their turn, in
// the same decision; the Kubernetes upgrade, decided by its own controller, starts nothing before it reads its
// turn (TalosUpgradeStatus.YieldsTo), and keeps wanting the turn until it is Done (kuberollout.ClaimOf), so a turn
// is never taken from it while its controller may still act on an older read.
func Turn(prev Rollout, claims map[Rollout]Claim) Rollout {
	for _, r := range turnOrder {
		if claims[r].Busy {
			return r
		}
	}

	if claims[prev].Wants {
		return prev
	}

	for _, r := range turnOrder {
		if claims[r].Wants {
			return r
		}
	}

	return ""
}

// Wants reports whether a rollout decided to phase may have work it would do with the turn: anything but Done,
// Blocked (only locks left, no plan, a refusing check, etcd refusing past the grace period) and Failed, which wait
// for a user or a lock, not for the turn.
func Wants(phase upgrade.ClusterPhase) bool {
	return phase != upgrade.PhaseDone && phase != upgrade.PhaseBlocked && phase != upgrade.PhaseFailed && phase != ""
}

// TalosClaim is the Talos rollout's claim: busy with a machine in flight or admitted by the last decision (prev)
// and not yet taken up; wanting when its decision now (next, made as if it had the turn) is not at rest and came
// from a complete view (a cluster whose machines are not all observed yet has nothing the rollout would start).
func TalosClaim(view ClusterView, prev, next upgrade.TalosUpgradeStatusSpec) Claim {
	busy := slices.ContainsFunc(view.Machines, func(m MachineView) bool {
		return m.Upgrade != nil && m.Upgrade.Phase.InFlight() || slices.Contains(prev.Admitted, m.ID) && pendingStart(m, prev.Target)
	})

	return Claim{Busy: busy, Wants: Wants(next.Phase) && Unready(view) == ""}
}

// ConfigClaim is the config rollout's claim, like TalosClaim: busy with a machine changing its config or admitted
// to and not yet taken up (configBusy), wanting when its decision now (next) is not at rest and an unlocked machine
// has a change pending: machines whose configs are not computed yet (not read, or a patch just written) have
// nothing to apply, and must not keep the turn from the others while they cannot be read.
func ConfigClaim(view ClusterView, prev, next upgrade.ConfigRolloutStatusSpec) Claim {
	pending := slices.ContainsFunc(view.Machines, func(m MachineView) bool { return !m.Locked && m.Config != nil && m.Config.Pending })

	return Claim{Busy: len(configBusy(view, prev)) > 0, Wants: Wants(next.Phase) && pending}
}

// WaitingFor is the reason a rollout gives while turn, another rollout, has the cluster; target, when known, is
// the version that rollout goes to.
func WaitingFor(turn Rollout, target string) string {
	name := map[Rollout]string{RolloutTalos: "Talos upgrade", RolloutKubernetes: "Kubernetes upgrade", RolloutConfig: "config rollout"}[turn]

	switch {
	case name == "":
		return ""
	case target != "":
		return fmt.Sprintf("waiting for the %s to %s to finish", name, target)
	default:
		return fmt.Sprintf("waiting for the %s to finish", name)
	}
}

// ClusterDecision is what TalosUpgradeStatusController writes for a cluster: its Talos upgrade and its config rollout,
// decided together with the turn.
type ClusterDecision struct {
	Talos  upgrade.TalosUpgradeStatusSpec
	Config upgrade.ConfigRolloutStatusSpec
	// Recheck is when the decision should be made again with nothing changed (an etcd wait's grace period); 0 when
	// only an event can change it.
	Recheck time.Duration
}

// DecideCluster decides a cluster's Talos upgrade (Decide) and config rollout (DecideConfig) from view and their
// previous statuses, then gives the turn (Turn) from their claims and the Kubernetes upgrade's (kube, toward
// kubeTarget): the rollouts whose turn it is not start nothing and say whose turn it is; the Kubernetes upgrade
// learns that the turn is its own from Talos.YieldsTo. It is pure, like Decide.
func DecideCluster(policy Policy, view ClusterView, prevTalos upgrade.TalosUpgradeStatusSpec, prevConfig upgrade.ConfigRolloutStatusSpec, kube Claim, kubeTarget string) ClusterDecision {
	var d ClusterDecision

	d.Talos, d.Recheck = Decide(policy, view, prevTalos.DeepCopy())
	d.Config = DecideConfig(view, prevConfig)

	turn := Turn(Rollout(prevTalos.Turn), map[Rollout]Claim{
		RolloutTalos:      TalosClaim(view, prevTalos, d.Talos),
		RolloutKubernetes: kube,
		RolloutConfig:     ConfigClaim(view, prevConfig, d.Config),
	})

	d.Talos.Turn, d.Talos.YieldsTo = string(turn), ""

	var reason string

	switch {
	case turn == RolloutKubernetes && !kube.Wants:
		// Busy on an earlier grant but at rest: the grant is taken back, and the others wait until the upgrade
		// has decided from that (ClaimOf).
		reason = "waiting for the Kubernetes upgrade to release the cluster"
	case turn == RolloutKubernetes:
		d.Talos.YieldsTo, reason = kubeTarget, WaitingFor(turn, kubeTarget)
	case turn == RolloutTalos:
		reason = WaitingFor(turn, d.Talos.ToVersion)
	default:
		reason = WaitingFor(turn, "")
	}

	// With nobody's turn, neither rollout wants it: each is at rest (Done, Blocked, Failed), starts nothing, and
	// keeps its own account of why (an etcd wait keeps its start, so its grace period runs on).
	if turn != RolloutTalos && turn != "" {
		d.Talos.Admitted, d.Talos.Current, d.Talos.EtcdWaitSince = nil, nil, time.Time{}
		d.Recheck = 0

		if Wants(d.Talos.Phase) {
			d.Talos.Phase, d.Talos.Reason = upgrade.PhasePending, reason
		}
	}

	if turn != RolloutConfig && turn != "" {
		d.Config.Admitted, d.Config.Current = nil, nil

		if Wants(d.Config.Phase) {
			d.Config.Phase, d.Config.Reason = upgrade.PhasePending, reason
		}
	}

	return d
}
