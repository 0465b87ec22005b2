package rollout_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

const (
	oldV = "1.13.0"
	midV = "1.13.4"
	newV = "1.14.1"
)

func par(s string) cluster.Parallelism {
	p, err := cluster.ParseParallelism(s)
	if err != nil {
		panic(err)
	}

	return p
}

func cp(id string) rollout.Machine {
	return rollout.Machine{ID: id, Role: cluster.RoleControlPlane, Version: oldV}
}

func wk(id string) rollout.Machine {
	return rollout.Machine{ID: id, Role: cluster.RoleWorker, Version: oldV}
}

func with(m rollout.Machine, f func(*rollout.Machine)) rollout.Machine {
	f(&m)

	return m
}

func inFlight(phase upgrade.MachinePhase, target string) func(*rollout.Machine) {
	return func(m *rollout.Machine) { m.Phase, m.From, m.PhaseTarget = phase, m.Version, target }
}

func upgraded(m *rollout.Machine) {
	m.From, m.Version, m.Phase, m.PhaseTarget = m.Version, newV, upgrade.MachineDone, newV
}

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
		skipped   []string
		hop       string
		onlyLocks bool
	}{
		{
			name:  "first control plane first, etcd leader last",
			in:    rollout.Input{Target: newV, Machines: []rollout.Machine{wk("w-1"), with(cp("cp-1"), func(m *rollout.Machine) { m.Last = true }), cp("cp-2"), cp("cp-3")}},
			start: []string{"cp-2"}, slots: 1,
		},
		{
			name:   "control planes strictly one at a time",
			in:     rollout.Input{Target: newV, Machines: []rollout.Machine{with(cp("cp-1"), inFlight(upgrade.MachineDraining, newV)), cp("cp-2"), wk("w-1")}},
			reason: "waiting for control plane cp-1", inFlights: []string{"cp-1"}, slots: 1,
		},
		{
			name:  "workers after control planes, up to the parallelism, natural order",
			in:    rollout.Input{Target: newV, Parallelism: par("2"), Machines: []rollout.Machine{with(cp("cp-1"), upgraded), wk("w-10"), wk("w-2"), wk("w-1")}},
			start: []string{"w-1", "w-2"}, slots: 2, finished: 1,
		},
		{
			name: "slots counted over the cluster",
			in: rollout.Input{Target: newV, Parallelism: par("2"), Machines: []rollout.Machine{
				with(cp("cp-1"), upgraded), with(wk("w-1"), inFlight(upgrade.MachineRebooting, newV)), wk("w-2"), wk("w-3"),
			}},
			start: []string{"w-2"}, slots: 2, finished: 1, inFlights: []string{"w-1"},
		},
		{
			name: "full slots",
			in: rollout.Input{Target: newV, Parallelism: par("1"), Machines: []rollout.Machine{
				with(wk("w-1"), inFlight(upgrade.MachinePullingImage, newV)), wk("w-2"),
			}},
			reason: "all 1 worker slots are in use", slots: 1, inFlights: []string{"w-1"},
		},
		{
			name: "percentage of workers, rounded down, at least one",
			in: rollout.Input{Target: newV, Parallelism: par("50%"), Machines: []rollout.Machine{
				wk("w-1"), wk("w-2"), wk("w-3"), wk("w-4"), wk("w-5"),
			}},
			start: []string{"w-1", "w-2"}, slots: 2,
		},
		{
			name:  "small percentage still makes progress",
			in:    rollout.Input{Target: newV, Parallelism: par("10%"), Machines: []rollout.Machine{wk("w-1"), wk("w-2"), wk("w-3")}},
			start: []string{"w-1"}, slots: 1,
		},
		{
			name: "locked workers skipped without holding a slot",
			in: rollout.Input{Target: newV, Parallelism: par("2"), Machines: []rollout.Machine{
				with(wk("w-1"), locked), with(wk("w-2"), locked), wk("w-3"), wk("w-4"), wk("w-5"),
			}},
			start: []string{"w-3", "w-4"}, slots: 2, waiting: []string{"w-1", "w-2"},
		},
		{
			name:   "only locked machines left",
			in:     rollout.Input{Target: newV, Machines: []rollout.Machine{with(cp("cp-1"), upgraded), with(wk("w-1"), locked), with(wk("w-2"), upgraded)}},
			reason: "waiting for locked machines to be unlocked: w-1", slots: 1, waiting: []string{"w-1"}, finished: 2,
			onlyLocks: true,
		},
		{
			name:   "a locked control plane holds the workers back",
			in:     rollout.Input{Target: newV, Machines: []rollout.Machine{with(cp("cp-1"), locked), wk("w-1")}},
			reason: "workers wait for locked control plane cp-1", slots: 1, waiting: []string{"cp-1"}, onlyLocks: true,
		},
		{
			name: "a failed machine halts new starts",
			in: rollout.Input{Target: newV, Parallelism: par("3"), Machines: []rollout.Machine{
				with(wk("w-1"), inFlight(upgrade.MachineFailed, newV)), with(wk("w-2"), inFlight(upgrade.MachineDraining, newV)), wk("w-3"),
			}},
			reason: "machine w-1 failed; retry, skip or revert to go on", slots: 3, inFlights: []string{"w-2"},
		},
		{
			name: "a skipped failed machine no longer halts",
			in: rollout.Input{Target: newV, Machines: []rollout.Machine{
				with(wk("w-1"), func(m *rollout.Machine) { inFlight(upgrade.MachineFailed, newV)(m); m.Skipped = true }), wk("w-2"),
			}},
			start: []string{"w-2"}, slots: 1, finished: 1, skipped: []string{"w-1"},
		},
		{
			name:   "paused",
			in:     rollout.Input{Target: newV, Paused: true, Machines: []rollout.Machine{cp("cp-1"), wk("w-1")}},
			reason: "paused", slots: 1,
		},
		{
			name:   "control plane waits for workers still in flight",
			in:     rollout.Input{Target: oldV, Machines: []rollout.Machine{with(cp("cp-1"), upgraded), with(wk("w-1"), inFlight(upgrade.MachineCordoning, newV))}},
			reason: "control plane cp-1 waits for the workers in flight", slots: 1, inFlights: []string{"w-1"}, retarget: []string{"w-1"},
		},
		{
			name: "revert takes upgraded machines back; a failure on the old target no longer halts",
			in: rollout.Input{Target: oldV, Machines: []rollout.Machine{
				cp("cp-1"), with(cp("cp-2"), upgraded), with(wk("w-1"), inFlight(upgrade.MachineFailed, newV)),
			}},
			start: []string{"cp-2"}, slots: 1, finished: 2,
		},
		{
			name: "machines already on the target skip an intermediate hop",
			in: rollout.Input{Plan: []string{midV, newV}, Target: newV, Machines: []rollout.Machine{
				with(cp("cp-1"), upgraded), with(cp("cp-2"), func(m *rollout.Machine) { m.Version = "1.11.6" }),
			}},
			start: []string{"cp-2"}, slots: 1, finished: 1, hop: midV,
		},
		{
			name: "locked workers hold back only themselves: the others go on to the next hop",
			in: rollout.Input{Plan: []string{midV, newV}, Target: newV, Parallelism: par("2"), Machines: []rollout.Machine{
				with(cp("cp-1"), func(m *rollout.Machine) { m.Version = midV }),
				with(wk("w-1"), func(m *rollout.Machine) { m.Version, m.Locked = "1.11.6", true }),
				with(wk("w-2"), func(m *rollout.Machine) { m.Version = midV }),
			}},
			start: []string{"cp-1"}, slots: 2, waiting: []string{"w-1"}, hop: newV,
		},
		{
			name: "an unlocked machine behind the others takes the earlier hop; nobody goes back",
			in: rollout.Input{Plan: []string{midV, newV}, Target: newV, Machines: []rollout.Machine{
				with(cp("cp-1"), upgraded),
				with(wk("w-1"), func(m *rollout.Machine) { m.Version = "1.11.6" }),
				with(wk("w-2"), upgraded),
			}},
			start: []string{"w-1"}, slots: 1, finished: 2, hop: midV,
		},
		{
			name: "workers of the earlier hop go before the control planes of the later one",
			in: rollout.Input{Plan: []string{midV, newV}, Target: newV, Machines: []rollout.Machine{
				with(cp("cp-1"), func(m *rollout.Machine) { m.Version = midV }),
				with(wk("w-1"), func(m *rollout.Machine) { m.Version = "1.11.6" }),
			}},
			start: []string{"w-1"}, slots: 1, hop: midV,
		},
		{
			name: "a machine in flight on its own way is not retargeted by another's hop",
			in: rollout.Input{Plan: []string{midV, newV}, Target: newV, Machines: []rollout.Machine{
				with(cp("cp-1"), func(m *rollout.Machine) { m.Version = midV; inFlight(upgrade.MachineDraining, newV)(m) }),
				with(wk("w-1"), func(m *rollout.Machine) { m.Version = "1.11.6" }),
			}},
			reason: "waiting for control plane cp-1", slots: 1, inFlights: []string{"cp-1"}, hop: midV,
		},
		{
			name: "only locked machines left is said so",
			in: rollout.Input{Plan: []string{midV, newV}, Target: newV, Machines: []rollout.Machine{
				with(cp("cp-1"), upgraded), with(wk("w-1"), func(m *rollout.Machine) { m.Version, m.Locked = "1.11.6", true }),
			}},
			reason: "waiting for locked machines to be unlocked: w-1", slots: 1, waiting: []string{"w-1"}, finished: 1,
			onlyLocks: true, hop: newV,
		},
		{
			name: "skipped machines are listed and finished",
			in: rollout.Input{Plan: []string{midV, newV}, Target: newV, Machines: []rollout.Machine{
				with(cp("cp-1"), upgraded), with(wk("w-1"), func(m *rollout.Machine) { m.Version = midV; m.Skipped = true }),
			}},
			done: true, slots: 1, finished: 2, skipped: []string{"w-1"}, hop: newV,
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
			check("Skipped", d.Skipped, orEmpty(tc.skipped))
			check("OnlyLocks", d.OnlyLocks, tc.onlyLocks)

			if tc.hop != "" {
				check("Hop", d.Hop, tc.hop)
			}
		})
	}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}

	return s
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

	machines[rng.IntN(len(machines))].Last = true

	for i := range machines { // a mixed cluster: some machines are part of the way or already there
		machines[i].Version = []string{oldV, oldV, midV, newV}[rng.IntN(4)]
	}

	parallelism := par(fmt.Sprint(1 + rng.IntN(4)))
	if rng.IntN(2) == 0 {
		parallelism = par(fmt.Sprintf("%d%%", 1+rng.IntN(100)))
	}

	target, plan, paused, reverted := newV, []string{midV, newV}, false, false

	for step := 0; ; step++ {
		if step > 10000 {
			t.Fatalf("rollout did not finish: %+v", machines)
		}

		// The world moves: locks toggle on workers, pauses come and go, a revert may happen once.
		if rng.IntN(5) == 0 {
			m := &machines[rng.IntN(len(machines))]
			m.Locked = m.Role == cluster.RoleWorker && !m.Locked
		}

		paused = rng.IntN(10) == 0

		if !reverted && rng.IntN(40) == 0 {
			target, plan, reverted = oldV, []string{oldV}, true
		}

		in := rollout.Input{Machines: machines, Plan: plan, Target: target, Parallelism: parallelism, Paused: paused}
		d := rollout.Schedule(in)
		checkInvariants(t, in, d)

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
			m.Phase, m.From, m.PhaseTarget = upgrade.MachinePullingImage, m.Version, rollout.NextHop(plan, m.Version)
		}

		// In-flight machines finish (on their own target), fail, or stay; failed ones get retried or skipped.
		for i := range machines {
			m := &machines[i]

			switch {
			case m.Phase.InFlight() && rng.IntN(3) == 0:
				m.Version, m.Phase = m.PhaseTarget, upgrade.MachineDone
			case m.Phase.InFlight() && rng.IntN(50) == 0:
				m.Phase = upgrade.MachineFailed
			case m.Phase == upgrade.MachineFailed && rng.IntN(4) == 0:
				m.Phase, m.Skipped = upgrade.MachineQueued, rng.IntN(2) == 0
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

func checkInvariants(t *testing.T, in rollout.Input, d rollout.Decision) {
	t.Helper()

	var cpsInFlight, workersInFlight, workers int

	cpPending, failed := false, false
	hopIndex := func(v string) int { return slices.Index(in.Plan, v) }

	for _, m := range in.Machines {
		switch {
		case m.Role == cluster.RoleWorker:
			workers++

			if m.Phase.InFlight() {
				workersInFlight++
			}
		case m.Phase.InFlight():
			cpsInFlight++
		case m.Version != in.Target && !m.Skipped:
			// A control plane holds the workers of its own hop and of later ones back; a locked one all of them.
			cpPending = cpPending || m.Locked || hopIndex(rollout.NextHop(in.Plan, m.Version)) <= hopIndex(d.Hop)
		}

		failed = failed || (m.Phase == upgrade.MachineFailed && m.PhaseTarget == rollout.MachineTarget(in.Plan, in.Target, m.From) && !m.Skipped)
	}

	var startCPs, startWorkers int

	for _, id := range d.Start {
		m := find(in.Machines, id)
		if m.Locked || m.Phase.InFlight() || m.Version == in.Target || rollout.NextHop(in.Plan, m.Version) != d.Hop {
			t.Fatalf("started %+v toward %s", *m, d.Hop)
		}

		if on := hopIndex(m.Version); on >= 0 && hopIndex(d.Hop) <= on {
			t.Fatalf("started %+v back to %s", *m, d.Hop)
		}

		if m.Role == cluster.RoleControlPlane {
			startCPs++
		} else {
			startWorkers++
		}
	}

	switch {
	case len(d.Start) > 0 && (in.Paused || failed):
		t.Fatalf("started %v while paused=%v failed=%v", d.Start, in.Paused, failed)
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
