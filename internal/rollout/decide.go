package rollout

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// DefaultEtcdGrace is how long the rollout waits on the etcd gate before it calls the cluster Blocked: a member
// that rejoins after its control plane's reboot is the routine wait of every rollout, not a reason to page anyone.
const DefaultEtcdGrace = 5 * time.Minute

// MachineView is what the rollout knows of one machine of the cluster.
type MachineView struct {
	ID     string
	Role   cluster.Role
	Locked bool
	// UnlockedAt is when the machine's last lock was removed (cluster.UnlockedAtAnnotation); zero when unknown.
	UnlockedAt time.Time
	// SkipVersion is the value of the machine's upgrade.SkipAnnotation: the target it was left out of.
	SkipVersion string
	// Status is the last observation; nil before the first.
	Status *observe.MachineStatusSpec
	// Upgrade is the machine's current or last upgrade; nil when it never had one.
	Upgrade *upgrade.MachineUpgradeStatusSpec
	// Config is the machine's config rollout; nil before the engine read its config.
	Config *upgrade.MachineConfigStatusSpec
}

// Version is the Talos version the machine runs: the one its finished upgrade verified, else the observed one.
func (m MachineView) Version() string {
	if m.Upgrade != nil && m.Upgrade.Phase == upgrade.MachineDone {
		return m.Upgrade.ToVersion
	}

	if m.Status != nil {
		return m.Status.TalosVersion
	}

	return ""
}

// SkippedFor reports whether the machine is left out of the upgrade to target (its upgrade.SkipAnnotation names it).
func (m MachineView) SkippedFor(target string) bool {
	return m.SkipVersion != "" && SameVersion(m.SkipVersion, target)
}

// ClusterView is everything Decide reads about one cluster.
type ClusterView struct {
	// Cluster is the cluster's spec.
	Cluster *cluster.ClusterSpec
	// Machines are the cluster's Machines, with their locks, observations and upgrades.
	Machines []MachineView
	// Observed lists the machines that have an observation (MachineStatus) of this cluster. One that is not in
	// Machines shows that the read of the cluster's Machines is partial (a lagging read, a machine being moved or
	// removed): the rollout decides nothing from such a view, since a cluster seen without its control planes would
	// start its workers first.
	Observed []string
	// Etcd is the cluster's observed etcd; nil before the first observation.
	Etcd *observe.EtcdStatusSpec
	// Now is the time of the decision; it only dates waits (EtcdWaitSince) and is compared with them.
	Now time.Time
	// PatchSet names the state of the cluster's config patches (cluster.PatchSet): a machine whose config status was
	// computed from another is not decided from yet.
	PatchSet string
}

// Policy is the engine's side of a decision: the releases it may install and how patient it is.
type Policy struct {
	// Catalogue holds the Talos releases an upgrade may go to or through.
	Catalogue *versions.Catalogue
	// EtcdGrace is how long a wait on the etcd gate is routine (Upgrading) before the cluster is Blocked;
	// zero means DefaultEtcdGrace.
	EtcdGrace time.Duration
}

// Decide computes a cluster's TalosUpgradeStatus from view, given the previous one (whose Plan, Admitted, revert
// state and etcd wait it carries on). It is pure: the controller, the CLI's dry run and the demo all call it, so
// what they show is what the engine does. recheck, when not zero, is how long until the decision changes with no
// input changing (a wait on etcd turning into Blocked).
func Decide(policy Policy, view ClusterView, prev upgrade.TalosUpgradeStatusSpec) (next upgrade.TalosUpgradeStatusSpec, recheck time.Duration) {
	next = prev
	c := view.Cluster
	target := c.TalosVersion

	if reason := unready(view); reason != "" {
		next.Phase, next.Reason = upgrade.PhasePending, reason
		if len(prev.Plan) == 0 {
			next.ToVersion = target
		}

		return next, 0
	}

	hosts := make([]string, 0, len(view.Machines))
	for _, m := range view.Machines {
		hosts = append(hosts, m.Version())
	}

	next.AvailableVersions = availableVersions(policy.Catalogue, hosts, c.KubernetesVersion)

	// A finished upgrade keeps the plan it finished (what it shows) until a machine is off the target again.
	if len(prev.Plan) == 0 || !SameVersion(prev.Plan[len(prev.Plan)-1], target) || prev.Phase == upgrade.PhaseDone && !settled(view.Machines, target) {
		plan, err := policy.Catalogue.Plan(hosts, c.KubernetesVersion, target)
		if err != nil {
			next.Phase, next.ToVersion, next.Error, next.Reason = upgrade.PhaseBlocked, target, err.Error(), ""
			next.Plan, next.Target, next.Admitted, next.Current, next.FailedMachine = nil, "", nil, nil, ""
			next.EtcdWaitSince = time.Time{}

			return next, 0
		}

		planned := len(prev.Plan) > 0 && prev.Phase != upgrade.PhaseDone
		next.Reverting = planned && !SameVersion(prev.Plan[len(prev.Plan)-1], target) && SameVersion(prev.FromVersion, target)

		next.FromVersion = joinReleases(plan.From)
		if next.Reverting {
			next.FromVersion = prev.ToVersion
		}

		next.ToVersion, next.Direction, next.Plan = target, plan.Direction.String(), []string{target}
		next.LastControlPlane = etcdLeader(view.Etcd)
		if len(plan.Hops) > 0 {
			next.Plan = next.Plan[:0]
			for _, hop := range plan.Hops {
				next.Plan = append(next.Plan, hop.Version.Tag())
			}
		}
	}

	if next.LastControlPlane == "" {
		// The leader was not known when the plan was made: no control plane has started since, for none starts
		// without an observed etcd (ControlPlaneMayLeave), so the first leader seen still leads the plan.
		next.LastControlPlane = etcdLeader(view.Etcd)
	}

	return schedule(policy, view, next)
}

// unready says why view cannot be decided from yet: no machine, one not observed, or a partial read.
func unready(view ClusterView) string {
	if len(view.Machines) == 0 {
		return "the cluster has no observed machine yet"
	}

	var unobserved, unseen []string

	for _, m := range view.Machines {
		if m.Version() == "" {
			unobserved = append(unobserved, m.ID)
		}
	}

	for _, id := range view.Observed {
		if !slices.ContainsFunc(view.Machines, func(m MachineView) bool { return m.ID == id }) {
			unseen = append(unseen, id)
		}
	}

	switch {
	case len(unobserved) > 0:
		return "waiting for the machines to be observed: " + strings.Join(unobserved, ", ")
	case len(unseen) > 0:
		return "waiting for a complete view of the cluster's machines: observed but not read: " + strings.Join(unseen, ", ")
	default:
		return ""
	}
}

// settled reports whether every machine runs target or is skipped for it: nothing is left to plan.
func settled(machines []MachineView, target string) bool {
	for _, m := range machines {
		if !SameVersion(m.Version(), target) && !m.SkippedFor(target) {
			return false
		}
	}

	return true
}

// schedule runs Schedule over the view and fills in the phase and progress.
func schedule(policy Policy, view ClusterView, next upgrade.TalosUpgradeStatusSpec) (upgrade.TalosUpgradeStatusSpec, time.Duration) {
	var (
		in       = Input{Plan: next.Plan, Target: next.ToVersion, Paused: view.Cluster.Paused}
		admitted []string
		etcdWait string
		started  bool
		unlocked = UnlockOrder(view, next.WaitingOnLock, next.Unlocked) // next still holds the last decision's lists
	)

	if p, err := cluster.ParseParallelism(view.Cluster.Parallelism); err == nil {
		in.Parallelism = p
	}

	for _, m := range view.Machines {
		rm := Machine{
			ID: m.ID, Role: m.Role, Locked: m.Locked, Last: m.ID == next.LastControlPlane, Version: m.Version(),
			Skipped: m.SkippedFor(next.ToVersion), UnlockedAt: unlocked[m.ID],
		}

		if u := m.Upgrade; u != nil {
			rm.Phase, rm.From, rm.PhaseTarget = u.Phase, u.FromVersion, u.ToVersion
			started = started || slices.ContainsFunc(next.Plan, func(h string) bool { return SameVersion(h, u.ToVersion) })

			if u.Phase == upgrade.MachineCheckingEtcd && u.Waiting != "" {
				etcdWait = m.ID + ": " + u.Waiting
			}
		}

		in.Machines = append(in.Machines, rm)

		if slices.Contains(next.Admitted, m.ID) && pendingStart(m, next.Target) {
			admitted = append(admitted, m.ID)
		}
	}

	d := Schedule(holdingSlots(in, admitted, next.Plan))

	if len(admitted) > 0 && !SameVersion(d.Hop, next.Target) {
		// The pending starts were toward the previous hop and Admitted names machines of one hop: they are released,
		// and decided again like any machine free to start. Keeping them in flight without admitting them would hold
		// their slots for machines their controller never starts.
		admitted = nil
		d = Schedule(in)
	}

	for _, id := range d.Start {
		if i := slices.IndexFunc(view.Machines, func(m MachineView) bool { return m.ID == id }); view.Machines[i].Role == cluster.RoleControlPlane {
			if ok, reason := ControlPlaneMayLeave(view.Etcd, id); !ok {
				etcdWait = fmt.Sprintf("control plane %s waits for etcd: %s", id, reason)

				continue
			}
		}

		admitted = append(admitted, id)
	}

	slices.Sort(admitted)

	current := append(slices.Clone(d.InFlight), admitted...)
	slices.Sort(current)

	next.Target, next.Admitted, next.Current = d.Hop, admitted, slices.Compact(current)
	next.Done, next.Total, next.WaitingOnLock, next.Skipped, next.Reason = d.Finished, d.Total, d.WaitingOnLock, d.Skipped, d.Reason
	next.Unlocked = d.Unlocked
	next.Error, next.FailedMachine = "", ""

	var recheck time.Duration

	grace := policy.EtcdGrace
	if grace == 0 {
		grace = DefaultEtcdGrace
	}

	if etcdWait == "" {
		next.EtcdWaitSince = time.Time{}
	} else {
		if next.EtcdWaitSince.IsZero() {
			next.EtcdWaitSince = view.Now
		}

		next.Reason = etcdWait
		recheck = max(0, next.EtcdWaitSince.Add(grace).Sub(view.Now))
	}

	switch {
	case d.Done:
		next.Phase, next.Admitted, next.Current, next.Reason, next.Reverting = upgrade.PhaseDone, nil, nil, "", false
		next.EtcdWaitSince, recheck = time.Time{}, 0
	case len(d.Failed) > 0:
		next.Phase, next.FailedMachine = upgrade.PhaseFailed, d.Failed[0]
		next.Error = d.Failed[0] + ": " + failure(view.Machines, d.Failed[0])
	case view.Cluster.Paused:
		next.Phase = upgrade.PhasePaused
	case etcdWait != "" && recheck == 0:
		next.Phase = upgrade.PhaseBlocked
		next.Error = fmt.Sprintf("%s (for %s)", etcdWait, view.Now.Sub(next.EtcdWaitSince).Round(time.Second))
	case d.OnlyLocks:
		next.Phase, next.Error = upgrade.PhaseBlocked, d.Reason
	case next.Reverting:
		next.Phase = upgrade.PhaseReverting
	case len(next.Current) == 0 && !started && d.Finished < d.Total:
		next.Phase = upgrade.PhasePending
	default:
		next.Phase = upgrade.PhaseUpgrading
	}

	if next.Phase == upgrade.PhaseBlocked {
		recheck = 0
	}

	return next, recheck
}

// pendingStart reports whether a machine admitted toward hop has not been taken up by its controller yet.
// holdingSlots is in with the machines admitted by the last decision but not yet taken up by their controller
// (pending) shown in flight toward their next hop: an admitted machine holds its slot until it starts.
func holdingSlots(in Input, pending []string, plan []string) Input {
	if len(pending) == 0 {
		return in
	}

	in.Machines = slices.Clone(in.Machines)

	for i := range in.Machines {
		if m := &in.Machines[i]; slices.Contains(pending, m.ID) {
			m.Phase, m.From, m.PhaseTarget = upgrade.MachinePullingImage, m.Version, NextHop(plan, m.Version)
		}
	}

	return in
}

func pendingStart(m MachineView, hop string) bool {
	if m.Locked || SameVersion(m.Version(), hop) {
		return false
	}

	u := m.Upgrade

	switch {
	case u == nil, u.Phase == upgrade.MachineQueued:
		return true
	case u.Phase == upgrade.MachineDone, u.Phase == upgrade.MachineFailed:
		return !SameVersion(u.ToVersion, hop)
	default:
		return false
	}
}

func etcdLeader(etcd *observe.EtcdStatusSpec) string {
	if etcd == nil {
		return ""
	}

	for _, m := range etcd.Members {
		if m.ID == etcd.Leader {
			return m.Machine
		}
	}

	return ""
}

func failure(machines []MachineView, id string) string {
	for _, m := range machines {
		if m.ID == id && m.Upgrade != nil {
			return m.Upgrade.Error
		}
	}

	return "failed"
}

func availableVersions(catalogue *versions.Catalogue, hosts []string, kubernetes string) []string {
	choices, err := catalogue.Choices(hosts, kubernetes)
	if err != nil {
		return nil
	}

	out := make([]string, 0, len(choices))
	for _, choice := range choices {
		out = append(out, choice.Release.Version.Tag())
	}

	return out
}

func joinReleases(vs []versions.Version) string {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		out = append(out, v.Tag())
	}

	return strings.Join(out, ",")
}
