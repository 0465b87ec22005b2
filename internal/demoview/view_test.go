package demoview_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/demoview"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

var t0 = time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC)

// fleet is a view of cluster c1 with 3 control planes and 3 workers on Talos v1.11.6, its etcd healthy.
func fleet(t *testing.T) *demoview.View {
	t.Helper()

	v := demoview.New(t0)

	for _, r := range fleetResources("v1.11.6") {
		v.Update(r)
	}

	return v
}

// fleetResources are the resources of cluster c1 with 3 control planes and 3 workers observed on version at t0,
// its etcd healthy.
func fleetResources(version string) []resource.Resource {
	var out []resource.Resource

	for _, id := range []string{"c1-w-1", "c1-w-2", "c1-w-3", "c1-cp-1", "c1-cp-2", "c1-cp-3"} {
		m := cluster.NewMachine(id)
		m.TypedSpec().Cluster = "c1"
		m.TypedSpec().Role = cluster.RoleWorker

		if strings.Contains(id, "-cp-") {
			m.TypedSpec().Role = cluster.RoleControlPlane
		}

		s := observe.NewMachineStatus(id)
		s.TypedSpec().Cluster, s.TypedSpec().TalosVersion, s.TypedSpec().Reachable, s.TypedSpec().ObservedAt = "c1", version, true, t0
		out = append(out, m, s)
	}

	etcd := observe.NewEtcdStatus("c1")
	etcd.TypedSpec().Leader, etcd.TypedSpec().Healthy, etcd.TypedSpec().CanLoseMember = "a2", true, true

	for i, id := range []string{"a1", "a2", "a3"} {
		etcd.TypedSpec().Members = append(etcd.TypedSpec().Members,
			observe.EtcdMember{ID: id, Machine: fmt.Sprintf("c1-cp-%d", i+1), Started: true, Healthy: true})
	}

	return append(out, etcd)
}

// observed folds in an observation of machine id, reachable on version, made at at.
func observed(v *demoview.View, id, version string, at time.Time) {
	s := observe.NewMachineStatus(id)
	s.TypedSpec().Cluster, s.TypedSpec().TalosVersion, s.TypedSpec().Reachable, s.TypedSpec().ObservedAt = "c1", version, true, at
	v.Update(s)
}

func talos(v *demoview.View, at time.Time, set func(*upgrade.TalosUpgradeStatusSpec)) []string {
	s := upgrade.NewTalosUpgradeStatus("c1")
	*s.TypedSpec() = upgrade.TalosUpgradeStatusSpec{
		Phase: upgrade.PhaseUpgrading, FromVersion: "v1.11.6", ToVersion: "v1.14.1",
		Plan: []string{"v1.12.6", "v1.13.4", "v1.14.1"}, Target: "v1.12.6", Total: 6, Direction: "upgrade",
	}
	set(s.TypedSpec())
	s.Metadata().SetUpdated(at)

	return v.Update(s)
}

func machine(v *demoview.View, id string, phase upgrade.MachinePhase, at time.Time, set ...func(*upgrade.MachineUpgradeStatusSpec)) []string {
	s := upgrade.NewMachineUpgradeStatus(id)
	*s.TypedSpec() = upgrade.MachineUpgradeStatusSpec{
		Cluster: "c1", Phase: phase, FromVersion: "v1.11.6", ToVersion: "v1.12.6", Attempt: 1,
		StartedAt: t0, PhaseChangedAt: at,
	}

	for _, f := range set {
		f(s.TypedSpec())
	}

	return v.Update(s)
}

func TestScreenHasOneRowPerMachineAndFitsEightyColumns(t *testing.T) {
	v := fleet(t)
	talos(v, t0, func(s *upgrade.TalosUpgradeStatusSpec) {
		s.Target, s.Done, s.Current = "v1.14.1", 2, []string{"c1-cp-3"}
	})
	machine(v, "c1-cp-1", upgrade.MachineDone, t0, func(s *upgrade.MachineUpgradeStatusSpec) { s.FromVersion, s.ToVersion = "v1.13.4", "v1.14.1" })
	machine(v, "c1-cp-2", upgrade.MachineInstalling, t0, func(s *upgrade.MachineUpgradeStatusSpec) { s.FromVersion, s.ToVersion = "v1.12.6", "v1.13.4" })
	machine(v, "c1-cp-3", upgrade.MachineRebooting, t0, func(s *upgrade.MachineUpgradeStatusSpec) { s.FromVersion, s.ToVersion = "v1.13.4", "v1.14.1" })
	machine(v, "c1-w-1", upgrade.MachineDraining, t0, func(s *upgrade.MachineUpgradeStatusSpec) {
		s.Waiting = "pod default/web-0 is protected by a PodDisruptionBudget that allows no disruption right now"
	})

	lines := v.Screen(80, 0)

	for _, l := range lines {
		assert.LessOrEqual(t, utf8.RuneCountInString(l), 80, "line %q", l)
	}

	assert.Equal(t, "cluster c1  Talos Upgrading  hop 3/3 → v1.14.1  2/6 machines", lines[0])
	assert.Equal(t, "  plan  v1.11.6 ⇒ v1.12.6 → v1.13.4 → v1.14.1", lines[1])
	assert.Equal(t, "  etcd 3/3 healthy, leader c1-cp-2, one member may leave", lines[2])
	assert.Contains(t, lines[3], "MACHINE")

	rows := lines[4:]
	require.Len(t, rows, 6, "one row per machine: %q", lines)

	// Control planes first, then workers; each with its version, phase and steps of its own flow.
	for i, id := range []string{"c1-cp-1", "c1-cp-2", "c1-cp-3", "c1-w-1", "c1-w-2", "c1-w-3"} {
		assert.True(t, strings.HasPrefix(rows[i], "  "+id+" "), "row %d is %q", i, rows[i])
		assert.Contains(t, rows[i], "v1.11.6")
	}

	// Lifecycle flow of a control plane: 10 steps, Rebooting is the 8th, so 7 are done.
	assert.Contains(t, rows[2], "Rebooting")
	assert.Contains(t, rows[2], "███████░░░  7/10  → v1.14.1")
	assert.Contains(t, rows[0], "██████████ 10/10")
	// Legacy flow of a control plane (v1.12.6 serves no LifecycleService): 8 steps, Installing is the 6th.
	assert.Contains(t, rows[1], "Installing           ██████░░░░   5/8  → v1.13.4")
	// Legacy flow of a worker (Talos < 1.13 on either side): 6 steps, Draining is the 3rd.
	assert.Contains(t, rows[3], "Draining")
	assert.Contains(t, rows[3], "2/6  pod default/web-0")
	assert.True(t, strings.HasSuffix(rows[3], "…"), "a long reason is cut at 80 columns: %q", rows[3])
	assert.Contains(t, rows[4], "-                    ··········")

	// A machine done with the previous hop waits for its turn in this one.
	machine(v, "c1-w-2", upgrade.MachineDone, t0, func(s *upgrade.MachineUpgradeStatusSpec) { s.FromVersion, s.ToVersion = "v1.12.6", "v1.13.4" })
	assert.Contains(t, v.Screen(80, 0)[8], "c1-w-2  v1.11.6  -                    ··········")
}

func TestScreenKeepsToTheTerminalHeight(t *testing.T) {
	v := fleet(t)

	lines := v.Screen(80, 5)
	require.Len(t, lines, 5)
	assert.Contains(t, lines[4], "… 5 more lines")
}

func TestPlainLinesOnePerTransition(t *testing.T) {
	v := fleet(t)

	lines := machine(v, "c1-w-1", upgrade.MachineCordoning, t0.Add(1500*time.Millisecond))
	assert.Equal(t, []string{"    1.5s  c1-w-1 Cordoning            v1.11.6 → v1.12.6  step 1/6"}, lines)
	assert.Empty(t, machine(v, "c1-w-1", upgrade.MachineCordoning, t0.Add(1500*time.Millisecond)), "no transition, no line")

	lines = talos(v, t0.Add(2*time.Second), func(*upgrade.TalosUpgradeStatusSpec) {})
	assert.Equal(t, []string{"    2.0s  c1 Talos Upgrading  hop 1/3 → v1.12.6  0/6 machines"}, lines)
	assert.Empty(t, talos(v, t0.Add(3*time.Second), func(*upgrade.TalosUpgradeStatusSpec) {}))

	etcd := observe.NewEtcdStatus("c1")
	etcd.TypedSpec().Reason = "c1-cp-2 is down"
	etcd.Metadata().SetUpdated(t0.Add(4 * time.Second))
	assert.Equal(t, []string{"    4.0s  c1 etcd 0/0 healthy, leader none, no member may leave: c1-cp-2 is down"}, v.Update(etcd))
	assert.Empty(t, v.Update(etcd))
}

func TestFailureShowsStepReasonAndSummary(t *testing.T) {
	v := fleet(t)
	talos(v, t0, func(*upgrade.TalosUpgradeStatusSpec) {})
	machine(v, "c1-w-1", upgrade.MachineInstalling, t0.Add(time.Second))
	machine(v, "c1-w-1", upgrade.MachineWaitingReady, t0.Add(3*time.Second))
	// The rollback is found in WaitingReady; the machine is uncordoned on the way to Failed.
	machine(v, "c1-w-1", upgrade.MachineUncordoning, t0.Add(4*time.Second), func(s *upgrade.MachineUpgradeStatusSpec) {
		s.Error = "rolled back: the machine came back on v1.11.6"
	})

	lines := machine(v, "c1-w-1", upgrade.MachineFailed, t0.Add(5*time.Second), func(s *upgrade.MachineUpgradeStatusSpec) {
		s.Error = "rolled back: the machine came back on v1.11.6"
	})
	assert.Equal(t, []string{"    5.0s  c1-w-1 Failed               v1.11.6 → v1.12.6  step 4/6  rolled back: the machine came back on v1.11.6"}, lines)

	talos(v, t0.Add(5*time.Second), func(s *upgrade.TalosUpgradeStatusSpec) {
		s.Phase, s.FailedMachine, s.Error = upgrade.PhaseFailed, "c1-w-1", "c1-w-1: rolled back: the machine came back on v1.11.6"
	})

	screen := strings.Join(v.Screen(80, 0), "\n")
	assert.Contains(t, screen, "cluster c1  Talos Failed  hop 1/3 → v1.12.6")
	assert.Contains(t, screen, "  ✗ c1-w-1: rolled back: the machine came back on v1.11.6")
	assert.Contains(t, screen, "Failed               ██████░░░░   4/6  at WaitingReady: roll…")

	summary := strings.Join(v.Summary(80), "\n")
	assert.Contains(t, summary, "  c1-w-1 failed at WaitingReady (attempt 1, v1.11.6 → v1.12.6):\n    rolled back: the machine came back on v1.11.6\n")
	assert.Equal(t, []string{"c1-w-1"}, v.Failed("c1"))
	assert.Contains(t, summary, "  Installing               1        2s        2s")
	assert.Contains(t, summary, "  WaitingReady             1        1s        1s")

	spec, ok := v.TalosUpgrade("c1")
	require.True(t, ok)
	assert.Equal(t, "c1-w-1", spec.FailedMachine)
}

func TestSummaryListsVersionsHopsAndPhaseTimes(t *testing.T) {
	v := fleet(t)
	talos(v, t0, func(*upgrade.TalosUpgradeStatusSpec) {})
	talos(v, t0.Add(40*time.Second), func(s *upgrade.TalosUpgradeStatusSpec) { s.Target = "v1.13.4" })
	talos(v, t0.Add(75*time.Second), func(s *upgrade.TalosUpgradeStatusSpec) { s.Target = "v1.14.1" })

	for i, id := range []string{"c1-cp-1", "c1-cp-2"} {
		at := t0.Add(time.Duration(i) * 10 * time.Second)
		machine(v, id, upgrade.MachineRebooting, at)
		machine(v, id, upgrade.MachineWaitingReady, at.Add(time.Duration(i+2)*time.Second))
		machine(v, id, upgrade.MachineDone, at.Add(5*time.Second))
	}

	assert.False(t, v.OnVersion("c1", "v1.14.1"))

	for _, id := range []string{"c1-cp-1", "c1-cp-2", "c1-cp-3", "c1-w-1", "c1-w-2", "c1-w-3"} {
		observed(v, id, "v1.14.1", t0.Add(110*time.Second))
	}

	talos(v, t0.Add(112*time.Second), func(s *upgrade.TalosUpgradeStatusSpec) {
		s.Phase, s.Target, s.Done, s.Plan = upgrade.PhaseDone, "v1.14.1", 6, nil // a done upgrade has no plan left
	})

	assert.True(t, v.OnVersion("c1", "1.14.1"))
	assert.False(t, v.OnVersion("c2", "v1.14.1"), "a cluster without machines is on no version")

	summary := v.Summary(80)
	assert.Equal(t, []string{
		"cluster c1",
		"  Talos upgrade: Done in 1m52s",
		"  plan  v1.11.6 ⇒ v1.12.6 → v1.13.4 → v1.14.1",
		"  hops  v1.12.6 40s, v1.13.4 35s, v1.14.1 37s",
		"  MACHINE    ROLE          FROM      NOW       FAILURES",
		"  c1-cp-1    controlplane  v1.11.6   v1.14.1   0",
		"  c1-cp-2    controlplane  v1.11.6   v1.14.1   0",
		"  c1-cp-3    controlplane  v1.11.6   v1.14.1   0",
		"  c1-w-1     worker        v1.11.6   v1.14.1   0",
		"  c1-w-2     worker        v1.11.6   v1.14.1   0",
		"  c1-w-3     worker        v1.11.6   v1.14.1   0",
		"Time per machine step (every machine, every hop):",
		"  STEP                 TIMES   AVERAGE   LONGEST",
		"  Rebooting                2      2.5s        3s",
		"  WaitingReady             2      2.5s        3s",
	}, summary)

	for _, l := range summary {
		assert.LessOrEqual(t, utf8.RuneCountInString(l), 80, "line %q", l)
	}
}

// The poll made while a worker rebooted says it is unreachable on the old version; its upgrade confirmed the new
// version since and is Done. The row shows what the upgrade confirmed, not the older observation.
func TestScreenPairsAFinishedUpgradeWithAnOlderObservation(t *testing.T) {
	v := fleet(t)
	talos(v, t0, func(s *upgrade.TalosUpgradeStatusSpec) { s.Target = "v1.12.6" })

	duringReboot := observe.NewMachineStatus("c1-w-2")
	*duringReboot.TypedSpec() = observe.MachineStatusSpec{
		Cluster: "c1", TalosVersion: "v1.11.6", Reachable: false, Error: "unreachable: connection refused", ObservedAt: t0.Add(10 * time.Second),
	}
	v.Update(duringReboot)

	machine(v, "c1-w-2", upgrade.MachineWaitingReady, t0.Add(5*time.Second))

	row := func() string {
		for _, l := range v.Screen(80, 0) {
			if strings.HasPrefix(l, "  c1-w-2 ") {
				return l
			}
		}

		t.Fatalf("no row of c1-w-2 in %q", v.Screen(80, 0))

		return ""
	}

	assert.Contains(t, row(), "v1.11.6", "while the upgrade waits, the observation is the latest word")
	assert.Contains(t, row(), "→ v1.12.6")

	machine(v, "c1-w-2", upgrade.MachineDone, t0.Add(20*time.Second))

	assert.Regexp(t, `^  c1-w-2  v1\.12\.6  Done +█+ +6/6$`, row())
	assert.Equal(t, "v1.12.6", v.Versions("c1")["c1-w-2"])
}
