package rollout_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/upshift-io/upshift/internal/rollout"
)

const (
	oldV = "1.13.0"
	newV = "1.14.1"
)

func cp(id string) rollout.Machine {
	return rollout.Machine{ID: id, Role: rollout.ControlPlane, Version: oldV}
}

func wk(id string) rollout.Machine {
	return rollout.Machine{ID: id, Role: rollout.Worker, Version: oldV}
}

func with(m rollout.Machine, f func(*rollout.Machine)) rollout.Machine {
	f(&m)

	return m
}

func inFlight(phase rollout.Phase, target string) func(*rollout.Machine) {
	return func(m *rollout.Machine) { m.Phase, m.PhaseTarget = phase, target }
}

func upgraded(m *rollout.Machine) { m.Version, m.Phase, m.PhaseTarget = newV, rollout.PhaseDone, newV }

func locked(m *rollout.Machine) { m.Locked = true }

func TestSchedule(t *testing.T) {
	for _, tc := range []struct {
		name      string
		in        rollout.Input
		start     []string
		slots     int
		done      bool
		reason    string
		waiting   []string
		retarget  []string
		finished  int
		inFlights []string
	}{
		{
			name:  "first control plane first, etcd leader last",
			in:    rollout.Input{Target: newV, Machines: []rollout.Machine{wk("w-1"), with(cp("cp-1"), func(m *rollout.Machine) { m.EtcdLeader = true }), cp("cp-2"), cp("cp-3")}},
			start: []string{"cp-2"}, slots: 1,
		},
		{
			name:   "control planes strictly one at a time",
			in:     rollout.Input{Target: newV, Machines: []rollout.Machine{with(cp("cp-1"), inFlight(rollout.PhaseDraining, newV)), cp("cp-2"), wk("w-1")}},
			reason: "waiting for control plane cp-1", inFlights: []string{"cp-1"}, slots: 1,
		},
		{
			name:  "workers after control planes, up to the parallelism, natural order",
			in:    rollout.Input{Target: newV, Parallelism: rollout.Count(2), Machines: []rollout.Machine{with(cp("cp-1"), upgraded), wk("w-10"), wk("w-2"), wk("w-1")}},
			start: []string{"w-1", "w-2"}, slots: 2, finished: 1,
		},
		{
			name: "slots counted over the cluster",
			in: rollout.Input{Target: newV, Parallelism: rollout.Count(2), Machines: []rollout.Machine{
				with(cp("cp-1"), upgraded), with(wk("w-1"), inFlight(rollout.PhaseRebooting, newV)), wk("w-2"), wk("w-3"),
			}},
			start: []string{"w-2"}, slots: 2, finished: 1, inFlights: []string{"w-1"},
		},
		{
			name: "full slots",
			in: rollout.Input{Target: newV, Parallelism: rollout.Count(1), Machines: []rollout.Machine{
				with(wk("w-1"), inFlight(rollout.PhasePullingImage, newV)), wk("w-2"),
			}},
			reason: "all 1 worker slots are in use", slots: 1, inFlights: []string{"w-1"},
		},
		{
			name: "percentage of workers, rounded down, at least one",
			in: rollout.Input{Target: newV, Parallelism: rollout.Percent(50), Machines: []rollout.Machine{
				wk("w-1"), wk("w-2"), wk("w-3"), wk("w-4"), wk("w-5"),
			}},
			start: []string{"w-1", "w-2"}, slots: 2,
		},
		{
			name:  "small percentage still makes progress",
			in:    rollout.Input{Target: newV, Parallelism: rollout.Percent(10), Machines: []rollout.Machine{wk("w-1"), wk("w-2"), wk("w-3")}},
			start: []string{"w-1"}, slots: 1,
		},
		{
			name: "locked workers skipped without holding a slot",
			in: rollout.Input{Target: newV, Parallelism: rollout.Count(2), Machines: []rollout.Machine{
				with(wk("w-1"), locked), with(wk("w-2"), locked), wk("w-3"), wk("w-4"), wk("w-5"),
			}},
			start: []string{"w-3", "w-4"}, slots: 2, waiting: []string{"w-1", "w-2"},
		},
		{
			name:   "only locked machines left",
			in:     rollout.Input{Target: newV, Machines: []rollout.Machine{with(cp("cp-1"), upgraded), with(wk("w-1"), locked), with(wk("w-2"), upgraded)}},
			reason: "waiting for locked machines to be unlocked: w-1", slots: 1, waiting: []string{"w-1"}, finished: 2,
		},
		{
			name:   "a locked control plane holds the workers back",
			in:     rollout.Input{Target: newV, Machines: []rollout.Machine{with(cp("cp-1"), locked), wk("w-1")}},
			reason: "workers wait for locked control plane cp-1", slots: 1, waiting: []string{"cp-1"},
		},
		{
			name: "a failed machine halts new starts",
			in: rollout.Input{Target: newV, Parallelism: rollout.Count(3), Machines: []rollout.Machine{
				with(wk("w-1"), inFlight(rollout.PhaseFailed, newV)), with(wk("w-2"), inFlight(rollout.PhaseDraining, newV)), wk("w-3"),
			}},
			reason: "machine w-1 failed; retry, skip or revert to go on", slots: 3, inFlights: []string{"w-2"},
		},
		{
			name: "a skipped failed machine no longer halts",
			in: rollout.Input{Target: newV, Machines: []rollout.Machine{
				with(wk("w-1"), func(m *rollout.Machine) { inFlight(rollout.PhaseFailed, newV)(m); m.Skipped = true }), wk("w-2"),
			}},
			start: []string{"w-2"}, slots: 1, finished: 1,
		},
		{
			name:   "paused",
			in:     rollout.Input{Target: newV, Paused: true, Machines: []rollout.Machine{cp("cp-1"), wk("w-1")}},
			reason: "paused", slots: 1,
		},
		{
			name:   "control plane waits for workers still in flight",
			in:     rollout.Input{Target: oldV, Machines: []rollout.Machine{with(cp("cp-1"), upgraded), with(wk("w-1"), inFlight(rollout.PhaseCordoning, newV))}},
			reason: "control plane cp-1 waits for the workers in flight", slots: 1, inFlights: []string{"w-1"}, retarget: []string{"w-1"},
		},
		{
			name: "revert takes upgraded machines back; a failure on the old target no longer halts",
			in: rollout.Input{Target: oldV, Machines: []rollout.Machine{
				cp("cp-1"), with(cp("cp-2"), upgraded), with(wk("w-1"), inFlight(rollout.PhaseFailed, newV)),
			}},
			start: []string{"cp-2"}, slots: 1, finished: 2,
		},
		{
			name: "machines already on the final version skip an intermediate hop",
			in: rollout.Input{Target: "1.13.4", Final: newV, Machines: []rollout.Machine{
				with(cp("cp-1"), upgraded), with(cp("cp-2"), func(m *rollout.Machine) { m.Version = "1.11.6" }),
			}},
			start: []string{"cp-2"}, slots: 1, finished: 1,
		},
		{
			name:  "done",
			in:    rollout.Input{Target: "v" + newV, Machines: []rollout.Machine{with(cp("cp-1"), upgraded), with(wk("w-1"), upgraded)}},
			done:  true,
			slots: 1, finished: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := rollout.Schedule(tc.in)

			check := func(what string, got, want any) {
				t.Helper()

				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}

			check("Start", d.Start, orEmpty(tc.start))
			check("WorkerSlots", d.WorkerSlots, tc.slots)
			check("Done", d.Done, tc.done)
			check("Reason", d.Reason, tc.reason)
			check("WaitingOnLock", d.WaitingOnLock, orEmpty(tc.waiting))
			check("Retarget", d.Retarget, orEmpty(tc.retarget))
			check("Finished", d.Finished, tc.finished)
			check("InFlight", d.InFlight, orEmpty(tc.inFlights))
			check("Total", d.Total, len(tc.in.Machines))
		})
	}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}

	return s
}

func TestParallelism(t *testing.T) {
	for _, tc := range []struct {
		p       rollout.Parallelism
		workers int
		want    int
	}{
		{rollout.Count(0), 5, 1},
		{rollout.Count(4), 2, 2},
		{rollout.Count(3), 5, 3},
		{rollout.Percent(25), 4, 1},
		{rollout.Percent(25), 9, 2},
		{rollout.Percent(100), 7, 7},
		{rollout.Percent(1), 3, 1},
		{rollout.Percent(50), 0, 1},
	} {
		if got := tc.p.Of(tc.workers); got != tc.want {
			t.Errorf("%T(%v).Of(%d) = %d, want %d", tc.p, tc.p, tc.workers, got, tc.want)
		}
	}
}

// TestScheduleProperties runs random fleets through whole rollouts (with locks toggling, failures, retries,
// pauses and reverts) and checks the invariants after every decision.
func TestScheduleProperties(t *testing.T) {
	for seed := range uint64(300) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { simulate(t, seed) })
	}
}

func simulate(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))

	var machines []rollout.Machine
	for i := range 1 + rng.IntN(5) {
		machines = append(machines, cp(fmt.Sprintf("cp-%d", i+1)))
	}

	for i := range rng.IntN(12) {
		machines = append(machines, wk(fmt.Sprintf("w-%d", i+1)))
	}

	machines[rng.IntN(len(machines))].EtcdLeader = true

	var parallelism rollout.Parallelism = rollout.Count(1 + rng.IntN(4))
	if rng.IntN(2) == 0 {
		parallelism = rollout.Percent(1 + rng.IntN(100))
	}

	target, paused, reverted := newV, false, false

	for step := 0; ; step++ {
		if step > 10000 {
			t.Fatalf("rollout did not finish: %+v", machines)
		}

		// The world moves: locks toggle on workers, pauses come and go, a revert may happen once.
		if rng.IntN(5) == 0 {
			m := &machines[rng.IntN(len(machines))]
			m.Locked = m.Role == rollout.Worker && !m.Locked
		}

		paused = rng.IntN(10) == 0

		if !reverted && rng.IntN(40) == 0 {
			target, reverted = oldV, true
		}

		d := rollout.Schedule(rollout.Input{Machines: machines, Target: target, Parallelism: parallelism, Paused: paused})
		checkInvariants(t, machines, target, paused, d)

		if d.Done {
			for _, m := range machines {
				if m.Version != target && !m.Skipped {
					t.Fatalf("done with %s on %s, target %s", m.ID, m.Version, target)
				}
			}

			return
		}

		for _, id := range d.Start {
			m := find(machines, id)
			m.Phase, m.PhaseTarget = rollout.PhasePullingImage, target
		}

		// In-flight machines finish (on their own target), fail, or stay; failed ones get retried or skipped.
		for i := range machines {
			m := &machines[i]

			switch {
			case m.Phase.InFlight() && rng.IntN(3) == 0:
				m.Version, m.Phase = m.PhaseTarget, rollout.PhaseDone
			case m.Phase.InFlight() && rng.IntN(50) == 0:
				m.Phase = rollout.PhaseFailed
			case m.Phase == rollout.PhaseFailed && rng.IntN(4) == 0:
				m.Phase, m.Skipped = rollout.PhaseQueued, rng.IntN(2) == 0
			}
		}

		// Machines that stay locked forever would block the end: unlock everything after a while.
		if step > 500 {
			for i := range machines {
				machines[i].Locked = false
			}
		}
	}
}

func find(machines []rollout.Machine, id string) *rollout.Machine {
	i := slices.IndexFunc(machines, func(m rollout.Machine) bool { return m.ID == id })

	return &machines[i]
}

func checkInvariants(t *testing.T, machines []rollout.Machine, target string, paused bool, d rollout.Decision) {
	t.Helper()

	var cpsInFlight, workersInFlight, workers int

	cpPending, failed := false, false

	for _, m := range machines {
		switch {
		case m.Role == rollout.Worker:
			workers++

			if m.Phase.InFlight() {
				workersInFlight++
			}
		case m.Phase.InFlight():
			cpsInFlight++
		case m.Version != target && !m.Skipped:
			cpPending = true
		}

		failed = failed || (m.Phase == rollout.PhaseFailed && m.PhaseTarget == target && !m.Skipped)
	}

	var startCPs, startWorkers int

	for _, id := range d.Start {
		m := find(machines, id)
		if m.Locked || m.Phase.InFlight() || m.Version == target {
			t.Fatalf("started %+v", *m)
		}

		if m.Role == rollout.ControlPlane {
			startCPs++
		} else {
			startWorkers++
		}
	}

	switch {
	case len(d.Start) > 0 && (paused || failed):
		t.Fatalf("started %v while paused=%v failed=%v", d.Start, paused, failed)
	case cpsInFlight+startCPs > 1:
		t.Fatalf("two control planes in flight: %d + start %v", cpsInFlight, d.Start)
	case startCPs > 0 && workersInFlight > 0:
		t.Fatalf("control plane started with %d workers in flight", workersInFlight)
	case startWorkers > 0 && (cpPending || cpsInFlight > 0 || startCPs > 0):
		t.Fatalf("worker started while a control plane is pending: %v", d.Start)
	case startWorkers > 0 && workersInFlight+startWorkers > d.WorkerSlots:
		t.Fatalf("%d workers in flight + %v started, slots %d", workersInFlight, d.Start, d.WorkerSlots)
	case d.WorkerSlots < 1 || d.WorkerSlots > max(1, workers):
		t.Fatalf("worker slots %d for %d workers", d.WorkerSlots, workers)
	case len(d.Start) == 0 && !d.Done && d.Reason == "":
		t.Fatalf("nothing starts and no reason given: %+v", d)
	case d.Finished > d.Total:
		t.Fatalf("inconsistent decision %+v", d)
	}
}
