package rollout

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Machine is one machine of a cluster as the scheduler sees it.
type Machine struct {
	// ID names the machine (also its Talos and Kubernetes node name in the emulator).
	ID string
	// Role decides the order: control planes first, strictly one at a time.
	Role Role
	// Locked machines are skipped: they neither start nor hold a slot, and are picked up once unlocked.
	Locked bool
	// Skipped machines were left out of this rollout by a user (`upgrade skip`); they count as finished.
	Skipped bool
	// EtcdLeader marks the control plane whose etcd member leads; it goes last among the control planes so
	// leadership moves once.
	EtcdLeader bool
	// Version is the Talos version the machine runs now.
	Version string
	// Phase is the phase of the machine's current or last upgrade; empty when it never had one.
	Phase Phase
	// PhaseTarget is the version that upgrade heads to; when it differs from the cluster's target, an in-flight
	// machine must follow Retarget and a failed one no longer halts the rollout.
	PhaseTarget string
}

// Input is everything the scheduler decides from.
type Input struct {
	// Machines are all the cluster's machines, in any order.
	Machines []Machine
	// Target is the version the cluster goes to now (the current hop of the plan).
	Target string
	// Final is the version the plan ends on when Target is an intermediate hop: machines already on it are
	// finished and never taken through the hop. Empty means Target.
	Final string
	// Parallelism limits the workers in flight; nil means one at a time.
	Parallelism Parallelism
	// Paused stops new starts; machines in flight finish their sequence.
	Paused bool
}

// Decision is what the scheduler concluded for one cluster.
type Decision struct {
	// Start lists the machines to start now, in order.
	Start []string
	// InFlight lists the machines holding a slot.
	InFlight []string
	// Retarget lists the in-flight machines whose upgrade heads to another version than the target; their
	// controller applies Retarget after the current step.
	Retarget []string
	// WaitingOnLock lists the locked machines that still need the target.
	WaitingOnLock []string
	// Failed lists the machines whose upgrade to the target failed; while any is listed nothing new starts.
	Failed []string
	// Finished counts the machines on the target or the final version (or skipped) with nothing in flight;
	// Total counts all.
	Finished, Total int
	// WorkerSlots is the number of workers allowed in flight, from Parallelism (1 to the number of workers).
	WorkerSlots int
	// Done is true when every machine has finished.
	Done bool
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

func classify(m Machine, target, final string) machineState {
	retargeted := !sameVersion(m.PhaseTarget, target)

	switch {
	case m.Phase.InFlight():
		return stateInFlight
	case m.Phase == PhaseFailed && !retargeted && !m.Skipped:
		return stateFailed
	case m.Skipped || sameVersion(m.Version, target) || sameVersion(m.Version, final):
		return stateFinished
	case m.Locked:
		return stateLocked
	default:
		return stateCandidate
	}
}

// Schedule decides which machines of one cluster start next, by the rules of design section 4:
//   - control planes go first and strictly one at a time, and only when no worker is in flight; the etcd
//     leader goes last among them;
//   - no worker starts while a control plane is in flight or still needs the target (a locked one included);
//   - at most WorkerSlots workers are in flight at once, counted over the whole cluster;
//   - locked machines neither start nor hold a slot, and are started once unlocked;
//   - a failed machine, or a pause, stops every new start; machines already in flight carry on;
//   - machines are otherwise taken in natural ID order (c1-w-2 before c1-w-10), so decisions are repeatable.
func Schedule(in Input) Decision {
	machines := slices.Clone(in.Machines)
	slices.SortFunc(machines, func(a, b Machine) int {
		return cmp.Or(
			-cmp.Compare(a.Role, b.Role),
			boolCompare(a.EtcdLeader, b.EtcdLeader),
			naturalCompare(a.ID, b.ID),
		)
	})

	parallelism := in.Parallelism
	if parallelism == nil {
		parallelism = Count(1)
	}

	var (
		d                          = Decision{Total: len(machines)}
		workers, workersInFlight   int
		cpInFlight                 string
		cpNeedsTarget              bool
		cpCandidates, wkCandidates []string
	)

	for _, m := range machines {
		isCP := m.Role == ControlPlane
		if !isCP {
			workers++
		}

		switch classify(m, in.Target, cmp.Or(in.Final, in.Target)) {
		case stateFinished:
			d.Finished++
		case stateInFlight:
			d.InFlight = append(d.InFlight, m.ID)
			if !sameVersion(m.PhaseTarget, in.Target) {
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
			cpNeedsTarget = cpNeedsTarget || isCP
		case stateCandidate:
			if isCP {
				cpCandidates = append(cpCandidates, m.ID)
				cpNeedsTarget = true
			} else {
				wkCandidates = append(wkCandidates, m.ID)
			}
		}
	}

	d.WorkerSlots = max(1, min(parallelism.Of(workers), workers))
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
	case cpNeedsTarget:
		d.Reason = "workers wait for locked control plane " + strings.Join(d.WaitingOnLock, ", ")
	case len(wkCandidates) > 0 && workersInFlight < d.WorkerSlots:
		d.Start = wkCandidates[:min(len(wkCandidates), d.WorkerSlots-workersInFlight)]
	case len(wkCandidates) > 0:
		d.Reason = fmt.Sprintf("all %d worker slots are in use", d.WorkerSlots)
	case len(d.InFlight) > 0:
		d.Reason = "waiting for " + strings.Join(d.InFlight, ", ")
	default:
		d.Reason = "waiting for locked machines to be unlocked: " + strings.Join(d.WaitingOnLock, ", ")
	}

	d.Start = slices.Clone(d.Start)

	return d
}

// sameVersion compares versions as Talos writes them, with or without the leading "v".
func sameVersion(a, b string) bool {
	return strings.TrimPrefix(a, "v") == strings.TrimPrefix(b, "v")
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
