package rollout

import (
	"fmt"
	"slices"
	"strings"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// A config rollout is scheduled by Schedule, the one home of the rollout rules (order, control planes one at a
// time, worker slots, locks, failures, pause): each machine is on "the target" when it runs its effective config,
// so the plan is one hop. These name the two states for Schedule.
const (
	configApplied = "config:applied"
	configPending = "config:pending"
	configStale   = "config:stale" // a failed change toward a config that is no longer the machine's target
)

// configBusy lists the machines of view changing their config: in flight, or admitted by the last decision and not
// yet taken up. While any is listed, the config rollout keeps its turn (Turn).
func configBusy(view ClusterView, prev upgrade.ConfigRolloutStatusSpec) []string {
	var busy []string

	for _, m := range view.Machines {
		if c := m.Config; c != nil && (c.Phase.InFlight() || slices.Contains(prev.Admitted, m.ID) && configPendingStart(m)) {
			busy = append(busy, m.ID)
		}
	}

	return busy
}

// configPendingStart reports whether a machine admitted to a config change has not been taken up yet.
func configPendingStart(m MachineView) bool {
	c := m.Config

	return !m.Locked && c.Pending && !c.Phase.InFlight() && (c.Phase != upgrade.MachineFailed || c.ChangeVersion != c.TargetVersion)
}

// DecideConfig computes a cluster's ConfigRolloutStatus from view and the previous one, whose Admitted it carries
// on, as if the rollout had the turn: DecideCluster withholds the starts when it has not. It is pure, like Decide.
func DecideConfig(view ClusterView, prev upgrade.ConfigRolloutStatusSpec) upgrade.ConfigRolloutStatusSpec {
	next := upgrade.ConfigRolloutStatusSpec{Total: len(view.Machines)}

	var unseen []string

	var reason string // why the rollout waits, when it waits on etcd

	in := Input{Target: configApplied, Paused: view.Cluster.Paused}
	if p, err := cluster.ParseParallelism(view.Cluster.Parallelism); err == nil {
		in.Parallelism = p
	}

	leader := etcdLeader(view.Etcd)
	unlocked := UnlockOrder(view, prev.WaitingOnLock, prev.Unlocked)

	for _, m := range view.Machines {
		c := m.Config
		if c != nil && c.TargetVersion == "" && c.Error != "" && !c.Phase.InFlight() {
			next.Phase, next.FailedMachine, next.Error = upgrade.PhaseFailed, m.ID, m.ID+": "+c.Error

			return next
		}

		if c == nil || c.TargetVersion == "" || c.PatchSet != view.PatchSet {
			unseen = append(unseen, m.ID)

			continue
		}

		rm := Machine{ID: m.ID, Role: m.Role, Locked: m.Locked, Last: m.ID == leader, Version: configApplied,
			Phase: c.Phase, From: configPending, PhaseTarget: configApplied, UnlockedAt: unlocked[m.ID],
			Skipped: m.SkipVersion == c.SkipValue()}

		if c.Pending {
			rm.Version = configPending
		}

		if c.Phase == upgrade.MachineCheckingEtcd && c.Waiting != "" {
			reason = fmt.Sprintf("control plane %s waits for etcd: %s", m.ID, c.Waiting)
		}

		if c.ChangeVersion != c.TargetVersion && !c.Phase.InFlight() {
			rm.PhaseTarget = configStale
		}

		if slices.Contains(prev.Admitted, m.ID) && configPendingStart(m) {
			rm.Phase, rm.PhaseTarget = upgrade.MachineApplyingConfig, configApplied // admitted, not yet taken up: it holds its slot
			next.Admitted = append(next.Admitted, m.ID)
		}

		in.Machines = append(in.Machines, rm)
	}

	if len(unseen) > 0 {
		next.Phase, next.Reason = upgrade.PhasePending, "waiting for the effective configs of the machines to be computed: "+strings.Join(unseen, ", ")
		next.Admitted, next.WaitingOnLock, next.Unlocked = prev.Admitted, prev.WaitingOnLock, prev.Unlocked

		return next
	}

	d := Schedule(in)

	for _, id := range d.Start {
		if i := slices.IndexFunc(view.Machines, func(m MachineView) bool { return m.ID == id }); view.Machines[i].Role == cluster.RoleControlPlane {
			if ok, why := ControlPlaneMayLeave(view.Etcd, id); !ok {
				reason = fmt.Sprintf("control plane %s waits for etcd: %s", id, why)

				continue
			}
		}

		next.Admitted = append(next.Admitted, id)
	}

	slices.Sort(next.Admitted)

	current := append(slices.Clone(d.InFlight), next.Admitted...)
	slices.Sort(current)

	next.Current, next.Done, next.WaitingOnLock, next.Reason = slices.Compact(current), d.Finished, d.WaitingOnLock, cmpOr(reason, d.Reason)
	next.Skipped = d.Skipped
	next.Unlocked = d.Unlocked

	switch {
	case d.Done:
		next.Phase, next.Admitted, next.Current, next.Reason = upgrade.PhaseDone, nil, nil, ""
	case len(d.Failed) > 0:
		next.Phase, next.FailedMachine = upgrade.PhaseFailed, d.Failed[0]
		next.Error = d.Failed[0] + ": " + configFailure(view.Machines, d.Failed[0])
	case view.Cluster.Paused:
		next.Phase = upgrade.PhasePaused
	case d.OnlyLocks:
		next.Phase, next.Error = upgrade.PhaseBlocked, "waiting on locked machines: "+strings.Join(d.WaitingOnLock, ", ")
	case len(next.Current) == 0:
		next.Phase = upgrade.PhasePending
	default:
		next.Phase = upgrade.PhaseUpgrading
	}

	return next
}

func configFailure(machines []MachineView, id string) string {
	for _, m := range machines {
		if m.ID == id && m.Config != nil && m.Config.Error != "" {
			return m.Config.Error
		}
	}

	return "failed"
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}

	return b
}
