package rollout

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Machine is one machine of a cluster as the scheduler sees it.
type Machine struct {
	// ID names the machine (also its Talos and Kubernetes node name in the emulator).
	ID string
	// Role decides the order: control planes first, strictly one at a time.
	Role cluster.Role
	// Locked machines are skipped: they neither start nor hold a slot, and are picked up once unlocked.
	Locked bool
	// UnlockedAt is when the machine was unlocked, set only for a machine that waited on a lock in this rollout and
	// has not started since (UnlockOrder): it starts before every machine that did not wait, and after those
	// unlocked before it, so a user who unlocks machines one by one chooses the order they get their change.
	UnlockedAt time.Time
	// Skipped machines were left out of this rollout by a user (`upgrade skip`); they count as finished.
	Skipped bool
	// Last marks the control plane that goes last among the control planes (the etcd leader when the plan was
	// made, TalosUpgradeStatusSpec.LastControlPlane), so leadership moves once.
	Last bool
	// Version is the Talos version the machine runs now.
	Version string
	// Phase is the phase of the machine's current or last upgrade; empty when it never had one.
	Phase upgrade.MachinePhase
	// From is the version that upgrade started from, PhaseTarget the version it heads to. When PhaseTarget is no
	// longer MachineTarget(plan, target, From) the cluster's target moved: an in-flight machine follows Retarget
	// and a failed one no longer halts the rollout.
	From, PhaseTarget string
}

// Input is everything the scheduler decides from.
type Input struct {
	// Machines are all the cluster's machines, in any order.
	Machines []Machine
	// Plan lists the versions the cluster goes through, intermediate hops first and Target last; empty means
	// Target alone.
	Plan []string
	// Target is the version the cluster goes to.
	Target string
	// Parallelism limits the workers in flight; its zero value means one at a time.
	Parallelism cluster.Parallelism
	// Paused stops new starts; machines in flight finish their sequence.
	Paused bool
}

// Decision is what the scheduler concluded for one cluster.
type Decision struct {
	// Hop is the hop of the plan that machines start toward now: the earliest one that a machine free to start
	// (not locked, skipped, finished or in flight) still needs; Target when none does.
	Hop string
	// Start lists the machines to start now, in order; each goes to its NextHop, which is Hop.
	Start []string
	// InFlight lists the machines holding a slot.
	InFlight []string
	// Retarget lists the in-flight machines whose upgrade heads to another version than their way to the target
	// now leads; their controller applies Retarget after the current step.
	Retarget []string
	// WaitingOnLock lists the locked machines that still need the target.
	WaitingOnLock []string
	// Unlocked lists the machines given an UnlockedAt that still wait to start after this decision, in the order
	// they go: the rollout's memory of who waited on a lock (UnlockOrder reads it back).
	Unlocked []string
	// Skipped lists the machines a user left out of this rollout.
	Skipped []string
	// Failed lists the machines whose upgrade failed on their way to the target; while any is listed nothing new
	// starts.
	Failed []string
	// Finished counts the machines on the target (or skipped) with nothing in flight; Total counts all.
	Finished, Total int
	// WorkerSlots is the number of workers allowed in flight, from Parallelism (1 to the number of workers).
	WorkerSlots int
	// Done is true when every machine has finished.
	Done bool
	// OnlyLocks is true when nothing is in flight or can start and the rollout is not done only because of
	// locked machines: the rollout cannot go on until a user unlocks them.
	OnlyLocks bool
	// Reason says, when nothing starts and the rollout is not done, what it waits for.
	Reason string
}

type machineState int

const (
	stateFinished machineState = iota
	stateInFlight
	stateFailed
	stateLocked
	stateCandidate
)

// plan is the scheduler's view of the way to the target.
type plan struct {
	hops   []string
	target string
}

func newPlan(in Input) plan {
	hops := in.Plan
	if len(hops) == 0 {
		hops = []string{in.Target}
	}

	return plan{hops: hops, target: hops[len(hops)-1]}
}

// retargeted reports whether m's upgrade heads elsewhere than its way to the target now leads.
func (p plan) retargeted(m Machine) bool {
	return !SameVersion(m.PhaseTarget, MachineTarget(p.hops, p.target, m.From))
}

func (p plan) classify(m Machine) machineState {
	switch {
	case m.Phase.InFlight():
		return stateInFlight
	case m.Phase == upgrade.MachineFailed && !p.retargeted(m) && !m.Skipped:
		return stateFailed
	case m.Skipped || SameVersion(m.Version, p.target):
		return stateFinished
	case m.Locked:
		return stateLocked
	default:
		return stateCandidate
	}
}

// hopIndex is the position of m's next hop in the plan.
func (p plan) hopIndex(m Machine) int {
	next := NextHop(p.hops, m.Version)

	return slices.IndexFunc(p.hops, func(h string) bool { return SameVersion(h, next) })
}

// Schedule decides which machines of one cluster start next, by the rules of the rollout (docs/architecture.md):
//   - each machine walks its own way along the plan (NextHop): a machine already on a later hop or on the target
//     waits or is finished, and is never taken back through an earlier hop;
//   - machines start toward the earliest hop that a machine free to start still needs; control planes go first
//     and strictly one at a time, and only when no worker is in flight; the one marked Last (the etcd leader when
//     the plan was made) goes last among them;
//   - no worker starts while a control plane is in flight, a control plane needs the hop, or a locked control
//     plane still needs the target;
//   - at most WorkerSlots workers are in flight at once, counted over the whole cluster;
//   - locked machines neither start nor hold a slot, hold back nobody else, and are started once unlocked:
//     before the machines that never waited on a lock, in the order they were unlocked (Machine.UnlockedAt);
//   - a failed machine, or a pause, stops every new start; machines already in flight carry on;
//   - machines are otherwise taken in natural ID order (c1-w-2 before c1-w-10), so decisions are repeatable.
func Schedule(in Input) Decision {
	machines := slices.Clone(in.Machines)
	slices.SortFunc(machines, func(a, b Machine) int {
		return cmp.Or(
			boolCompare(a.Role != cluster.RoleControlPlane, b.Role != cluster.RoleControlPlane),
			boolCompare(a.Last, b.Last),
			boolCompare(a.UnlockedAt.IsZero(), b.UnlockedAt.IsZero()),
			a.UnlockedAt.Compare(b.UnlockedAt),
			naturalCompare(a.ID, b.ID),
		)
	})

	p := newPlan(in)

	var (
		d                        = Decision{Total: len(machines), Hop: p.target}
		workers, workersInFlight int
		cpInFlight               string
		lockedCPNeedsTarget      bool
		candidates               []Machine
		candidateHops            []int
		hop                      = len(p.hops) - 1
	)

	for _, m := range machines {
		isCP := m.Role == cluster.RoleControlPlane
		if !isCP {
			workers++
		}

		if m.Skipped {
			d.Skipped = append(d.Skipped, m.ID)
		}

		switch p.classify(m) {
		case stateFinished:
			d.Finished++
		case stateInFlight:
			d.InFlight = append(d.InFlight, m.ID)
			if p.retargeted(m) {
				d.Retarget = append(d.Retarget, m.ID)
			}

			if isCP {
				cpInFlight = m.ID
			} else {
				workersInFlight++
			}
		case stateFailed:
			d.Failed = append(d.Failed, m.ID)
		case stateLocked:
			d.WaitingOnLock = append(d.WaitingOnLock, m.ID)
			lockedCPNeedsTarget = lockedCPNeedsTarget || isCP
		case stateCandidate:
			candidates, candidateHops = append(candidates, m), append(candidateHops, p.hopIndex(m))
			hop = min(hop, candidateHops[len(candidateHops)-1])
		}
	}

	d.Hop = p.hops[hop]

	var cpCandidates, wkCandidates []string

	for i, m := range candidates {
		switch {
		case candidateHops[i] != hop: // it waits for the machines behind it
		case m.Role == cluster.RoleControlPlane:
			cpCandidates = append(cpCandidates, m.ID)
		default:
			wkCandidates = append(wkCandidates, m.ID)
		}
	}

	d.WorkerSlots = max(1, min(in.Parallelism.Of(workers), workers))
	d.Done = d.Finished == d.Total

	switch {
	case d.Done:
	case len(d.Failed) > 0:
		d.Reason = "machine " + strings.Join(d.Failed, ", ") + " failed; retry, skip or revert to go on"
	case in.Paused:
		d.Reason = "paused"
	case cpInFlight != "":
		d.Reason = "waiting for control plane " + cpInFlight
	case len(cpCandidates) > 0 && workersInFlight > 0:
		d.Reason = "control plane " + cpCandidates[0] + " waits for the workers in flight"
	case len(cpCandidates) > 0:
		d.Start = cpCandidates[:1]
	case lockedCPNeedsTarget && len(wkCandidates) > 0:
		d.Reason = "workers wait for locked control plane " + strings.Join(d.WaitingOnLock, ", ")
		d.OnlyLocks = len(d.InFlight) == 0
	case len(wkCandidates) > 0 && workersInFlight < d.WorkerSlots:
		d.Start = wkCandidates[:min(len(wkCandidates), d.WorkerSlots-workersInFlight)]
	case len(wkCandidates) > 0:
		d.Reason = fmt.Sprintf("all %d worker slots are in use", d.WorkerSlots)
	case len(d.InFlight) > 0:
		d.Reason = "waiting for " + strings.Join(d.InFlight, ", ")
	default:
		d.Reason = "waiting for locked machines to be unlocked: " + strings.Join(d.WaitingOnLock, ", ")
		d.OnlyLocks = true
	}

	d.Start = slices.Clone(d.Start)

	for i, m := range candidates {
		if !m.UnlockedAt.IsZero() && !(candidateHops[i] == hop && slices.Contains(d.Start, m.ID)) {
			d.Unlocked = append(d.Unlocked, m.ID)
		}
	}

	return d
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	default:
		return -1
	}
}

// naturalCompare orders strings with runs of digits compared by value, so "w-2" comes before "w-10".
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Or(cmp.Compare(len(na), len(nb)), strings.Compare(na, nb)); c != 0 {
				return c
			}

			a, b = a[da:], b[db:]

			continue
		}

		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}

		a, b = a[1:], b[1:]
	}

	return cmp.Compare(len(a), len(b))
}

func digitPrefix(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}

	return i
}
