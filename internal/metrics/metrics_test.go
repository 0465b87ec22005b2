package metrics_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/upshift-io/upshift/internal/metrics"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func newState() state.State {
	return state.WrapCore(namespaced.NewState(inmem.Build))
}

// put creates r, or updates it when it exists.
func put(t *testing.T, st state.State, r resource.Resource) {
	t.Helper()

	ctx := t.Context()

	cur, err := st.Get(ctx, r.Metadata())
	if state.IsNotFoundError(err) {
		require.NoError(t, st.Create(ctx, r))

		return
	}

	require.NoError(t, err)
	r.Metadata().SetVersion(cur.Metadata().Version())
	require.NoError(t, st.Update(ctx, r))
}

// watching returns metrics over a fresh state, logging to logs, watching for transitions until the test ends;
// before, if set, writes what the watches find at start.
func watching(t *testing.T, before func(state.State)) (state.State, *metrics.Metrics, *observer.ObservedLogs) {
	t.Helper()

	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)

	st := newState()
	core, logs := observer.New(zapcore.InfoLevel)
	m := metrics.New(zap.New(core))
	m.Bind(st)

	if before != nil {
		before(st)
	}

	m.RunWatching(ctx)

	return st, m, logs
}

func machineUpgrade(id string, phase upgrade.MachinePhase, changedAt time.Time, edit func(*upgrade.MachineUpgradeStatusSpec)) *upgrade.MachineUpgradeStatus {
	r := upgrade.NewMachineUpgradeStatus(id)
	*r.TypedSpec() = upgrade.MachineUpgradeStatusSpec{Cluster: "c1", Phase: phase, PhaseChangedAt: changedAt, ToVersion: "1.13.4", Attempt: 1}

	if edit != nil {
		edit(r.TypedSpec())
	}

	return r
}

// Every change of step is counted and logged once: a write that keeps the step (a new Waiting reason) and the
// contents found when the watch starts are not transitions.
func TestTransitionsAreCountedAndLoggedOnce(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

	st, m, logs := watching(t, func(st state.State) {
		// Found at start: neither counted nor logged.
		put(t, st, machineUpgrade("c1-w-0", upgrade.MachineFailed, t0, func(s *upgrade.MachineUpgradeStatusSpec) { s.Error = "timeout: old" }))
	})

	started := func(s *upgrade.MachineUpgradeStatusSpec) { s.StartedAt = t0 }
	rolledBack := func(s *upgrade.MachineUpgradeStatusSpec) {
		started(s)
		s.Error = "rolled back: the machine came back on 1.12.6 instead of 1.13.4"
	}

	writes := []*upgrade.MachineUpgradeStatus{
		machineUpgrade("c1-w-1", upgrade.MachinePullingImage, at(0), started),
		machineUpgrade("c1-w-1", upgrade.MachineInstalling, at(2), started),
		machineUpgrade("c1-w-1", upgrade.MachineInstalling, at(2), func(s *upgrade.MachineUpgradeStatusSpec) { started(s); s.Waiting = "unreachable" }),
		machineUpgrade("c1-w-1", upgrade.MachineWaitingReady, at(10), started),
		machineUpgrade("c1-w-1", upgrade.MachineUncordoning, at(40), rolledBack),
		machineUpgrade("c1-w-1", upgrade.MachineFailed, at(41), func(s *upgrade.MachineUpgradeStatusSpec) { rolledBack(s); s.FinishedAt = at(41) }),
		machineUpgrade("c1-w-2", upgrade.MachinePullingImage, at(0), started),
		machineUpgrade("c1-w-2", upgrade.MachineInstalling, at(1), started),
		machineUpgrade("c1-w-2", upgrade.MachineDone, at(30), func(s *upgrade.MachineUpgradeStatusSpec) { started(s); s.FinishedAt = at(30) }),
	}

	for _, w := range writes {
		put(t, st, w)
	}

	talos := upgrade.NewTalosUpgradeStatus("c1")
	talos.TypedSpec().Phase = upgrade.PhaseUpgrading
	put(t, st, talos)

	talos = upgrade.NewTalosUpgradeStatus("c1")
	talos.TypedSpec().Phase, talos.TypedSpec().FailedMachine, talos.TypedSpec().Error = upgrade.PhaseFailed, "c1-w-1", "c1-w-1: rolled back"
	put(t, st, talos)

	const machineTransitions, clusterTransitions = 8, 2

	require.Eventually(t, func() bool {
		return logs.FilterMessage(metrics.MsgMachineStep).Len() == machineTransitions && logs.FilterMessage(metrics.MsgClusterPhase).Len() == clusterTransitions
	}, 10*time.Second, 10*time.Millisecond, "one line per transition")

	assert.Equal(t, machineTransitions+clusterTransitions, logs.Len(), "nothing but one line per transition")

	for _, e := range logs.All() {
		fields := e.ContextMap()
		for _, f := range []string{"cluster", "machine", "step", "reason"} {
			assert.Contains(t, fields, f, "%s: %v", e.Message, fields)
		}
	}

	failed := logs.FilterMessage(metrics.MsgMachineStep).FilterField(zap.String("step", string(upgrade.MachineFailed))).All()
	require.Len(t, failed, 1)
	assert.Equal(t, "rolled back", failed[0].ContextMap()["reason"])
	assert.Equal(t, "c1-w-1", failed[0].ContextMap()["machine"])
	assert.Equal(t, zapcore.WarnLevel, failed[0].Level)

	clusterFailed := logs.FilterMessage(metrics.MsgClusterPhase).FilterField(zap.String("step", string(upgrade.PhaseFailed))).All()
	require.Len(t, clusterFailed, 1)
	assert.Equal(t, "c1-w-1", clusterFailed[0].ContextMap()["machine"])

	expected := `
# HELP upshift_machine_upgrades_done_total Machine Talos upgrades that reached Done, since the engine started.
# TYPE upshift_machine_upgrades_done_total counter
upshift_machine_upgrades_done_total{cluster="c1"} 1
# HELP upshift_machine_upgrades_failed_total Machine Talos upgrades that Failed, by the reason their error starts with, since the engine started.
# TYPE upshift_machine_upgrades_failed_total counter
upshift_machine_upgrades_failed_total{cluster="c1",reason="rolled back"} 1
`
	require.NoError(t, testutil.CollectAndCompare(m, strings.NewReader(expected),
		"upshift_machine_upgrades_done_total", "upshift_machine_upgrades_failed_total"))

	// Steps that ended: w-1 PullingImage 2 s, Installing 8 s, WaitingReady 30 s, Uncordoning 1 s; w-2 PullingImage
	// 1 s, Installing 29 s.
	histogram := gatherHistogram(t, m, "upshift_machine_upgrade_step_duration_seconds")
	assert.Equal(t, map[string]uint64{"PullingImage": 2, "Installing": 2, "WaitingReady": 1, "Uncordoning": 1}, histogram.counts)
	assert.InDelta(t, 3.0, histogram.sums["PullingImage"], 1e-9)
	assert.InDelta(t, 37.0, histogram.sums["Installing"], 1e-9)

	whole := gatherHistogram(t, m, "upshift_machine_upgrade_duration_seconds")
	assert.Equal(t, map[string]uint64{"": 1}, whole.counts)
	assert.InDelta(t, 30.0, whole.sums[""], 1e-9)
}

type histogramValues struct {
	counts map[string]uint64
	sums   map[string]float64
}

// gatherHistogram reads the count and sum of each series of the histogram name, by its "step" label.
func gatherHistogram(t *testing.T, m *metrics.Metrics, name string) histogramValues {
	t.Helper()

	families, err := testutil.CollectAndFormat(m, expfmt.TypeTextPlain, name)
	require.NoError(t, err)

	out := histogramValues{counts: map[string]uint64{}, sums: map[string]float64{}}

	for _, line := range strings.Split(string(families), "\n") {
		series, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}

		step := ""
		if _, rest, found := strings.Cut(series, `step="`); found {
			step, _, _ = strings.Cut(rest, `"`)
		}

		switch {
		case strings.HasPrefix(series, name+"_count"):
			var n uint64
			_, err = fmt.Sscan(value, &n)
			require.NoError(t, err)
			out.counts[step] = n
		case strings.HasPrefix(series, name+"_sum"):
			var f float64
			_, err = fmt.Sscan(value, &f)
			require.NoError(t, err)
			out.sums[step] = f
		}
	}

	return out
}

// The gauges say where each upgrade stands, from the state as it is when scraped.
func TestGaugesFollowTheState(t *testing.T) {
	st := newState()
	m := metrics.New(zap.NewNop())
	m.Bind(st)

	changed := time.Unix(1_800_000_000, 0)

	talos := upgrade.NewTalosUpgradeStatus("c1")
	talos.TypedSpec().Phase = upgrade.PhaseUpgrading
	put(t, st, talos)

	kube := upgrade.NewKubernetesUpgradeStatus("c1")
	kube.TypedSpec().Phase = upgrade.PhaseBlocked
	kube.TypedSpec().Steps = []upgrade.KubernetesUpgradeStep{{Kind: upgrade.StepPreChecks, State: upgrade.StepFailed, StartedAt: changed.Add(-time.Minute), FinishedAt: changed}}
	put(t, st, kube)

	put(t, st, machineUpgrade("c1-cp-1", upgrade.MachineDone, changed.Add(-time.Hour), nil))
	put(t, st, machineUpgrade("c1-w-1", upgrade.MachineRebooting, changed, nil))
	put(t, st, machineUpgrade("c1-w-2", upgrade.MachineQueued, time.Time{}, nil))

	config := upgrade.NewConfigRolloutStatus("c1")
	config.TypedSpec().Phase = upgrade.PhaseDone
	put(t, st, config)

	summary := observe.NewClusterSummary("c1")
	summary.TypedSpec().Locked = []string{"c1-w-3"}
	put(t, st, summary)

	etcd := observe.NewEtcdStatus("c1")
	etcd.TypedSpec().Members = []observe.EtcdMember{
		{ID: "1", Started: true, Healthy: true}, {ID: "2", Started: true, Healthy: false}, {ID: "3", Started: false},
		{ID: "4", Started: true, Healthy: true, Learner: true},
	}
	put(t, st, etcd)

	for id, reachable := range map[string]bool{"c1-w-1": false, "c1-cp-1": true} {
		ms := observe.NewMachineStatus(id)
		ms.TypedSpec().Cluster, ms.TypedSpec().Reachable = "c1", reachable
		put(t, st, ms)
	}

	expected := `
# HELP upshift_cluster_upgrade_last_progress_timestamp_seconds When a cluster's Talos or Kubernetes upgrade last moved: a machine's last step change, a Kubernetes step's last start or end.
# TYPE upshift_cluster_upgrade_last_progress_timestamp_seconds gauge
upshift_cluster_upgrade_last_progress_timestamp_seconds{cluster="c1",upgrade="kubernetes"} 1.8e+09
upshift_cluster_upgrade_last_progress_timestamp_seconds{cluster="c1",upgrade="talos"} 1.8e+09
# HELP upshift_etcd_members Voting etcd members of a cluster, as last observed.
# TYPE upshift_etcd_members gauge
upshift_etcd_members{cluster="c1"} 3
# HELP upshift_etcd_members_healthy Voting etcd members of a cluster that are started and healthy, as last observed.
# TYPE upshift_etcd_members_healthy gauge
upshift_etcd_members_healthy{cluster="c1"} 1
# HELP upshift_machine_reachable Whether the engine's last observation of a machine reached its Talos API (1) or not (0).
# TYPE upshift_machine_reachable gauge
upshift_machine_reachable{cluster="c1",machine="c1-cp-1"} 1
upshift_machine_reachable{cluster="c1",machine="c1-w-1"} 0
# HELP upshift_machine_upgrade_in_flight Whether a machine is in the middle of its Talos upgrade (1: past Queued, neither Done nor Failed).
# TYPE upshift_machine_upgrade_in_flight gauge
upshift_machine_upgrade_in_flight{cluster="c1",machine="c1-cp-1"} 0
upshift_machine_upgrade_in_flight{cluster="c1",machine="c1-w-1"} 1
upshift_machine_upgrade_in_flight{cluster="c1",machine="c1-w-2"} 0
# HELP upshift_machines_locked Machines of a cluster held by a MachineLock.
# TYPE upshift_machines_locked gauge
upshift_machines_locked{cluster="c1"} 1
`
	require.NoError(t, testutil.CollectAndCompare(m, strings.NewReader(expected),
		"upshift_cluster_upgrade_last_progress_timestamp_seconds", "upshift_etcd_members", "upshift_etcd_members_healthy",
		"upshift_machine_reachable", "upshift_machine_upgrade_in_flight", "upshift_machines_locked"))

	phases, err := testutil.CollectAndFormat(m, expfmt.TypeTextPlain, "upshift_cluster_upgrade_phase", "upshift_machines_upgrade_phase")
	require.NoError(t, err)

	text := string(phases)
	for _, line := range []string{
		`upshift_cluster_upgrade_phase{cluster="c1",phase="Upgrading",upgrade="talos"} 1`,
		`upshift_cluster_upgrade_phase{cluster="c1",phase="Pending",upgrade="talos"} 0`,
		`upshift_cluster_upgrade_phase{cluster="c1",phase="Blocked",upgrade="kubernetes"} 1`,
		`upshift_cluster_upgrade_phase{cluster="c1",phase="Done",upgrade="kubernetes"} 0`,
		`upshift_machines_upgrade_phase{cluster="c1",phase="Done"} 1`,
		`upshift_machines_upgrade_phase{cluster="c1",phase="Rebooting"} 1`,
		`upshift_machines_upgrade_phase{cluster="c1",phase="Queued"} 1`,
		`upshift_machines_upgrade_phase{cluster="c1",phase="Failed"} 0`,
	} {
		assert.Contains(t, text, line+"\n")
	}

	assert.Contains(t, text, `upshift_cluster_upgrade_phase{cluster="c1",phase="Done",upgrade="config"} 1`+"\n")
	assert.Equal(t, 7*3, strings.Count(text, "upshift_cluster_upgrade_phase{"), "every phase of the three rollouts")
	assert.Equal(t, 12, strings.Count(text, "upshift_machines_upgrade_phase{"), "every machine phase")

	// A phase the cluster leaves drops to 0 at the next scrape.
	talos = upgrade.NewTalosUpgradeStatus("c1")
	talos.TypedSpec().Phase = upgrade.PhaseDone
	put(t, st, talos)

	phases, err = testutil.CollectAndFormat(m, expfmt.TypeTextPlain, "upshift_cluster_upgrade_phase")
	require.NoError(t, err)
	assert.Contains(t, string(phases), `upshift_cluster_upgrade_phase{cluster="c1",phase="Upgrading",upgrade="talos"} 0`+"\n")
	assert.Contains(t, string(phases), `upshift_cluster_upgrade_phase{cluster="c1",phase="Done",upgrade="talos"} 1`+"\n")
}

// Each change of state of a Kubernetes upgrade's step is one line; a step that reaches Done is timed from its
// record.
func TestKubernetesStepTransitions(t *testing.T) {
	st, m, logs := watching(t, nil)

	t0 := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	write := func(phase upgrade.ClusterPhase, steps ...upgrade.KubernetesUpgradeStep) {
		r := upgrade.NewKubernetesUpgradeStatus("c1")
		r.TypedSpec().Phase, r.TypedSpec().Steps = phase, steps
		put(t, st, r)
	}

	checks := upgrade.KubernetesUpgradeStep{Kind: upgrade.StepPreChecks, Version: "1.36.1", State: upgrade.StepPending}
	pull := upgrade.KubernetesUpgradeStep{Kind: upgrade.StepPrePull, Machine: "c1-cp-1", Version: "1.36.1", State: upgrade.StepPending}

	write(upgrade.PhaseUpgrading, checks, pull)

	checks.State, checks.StartedAt = upgrade.StepRunning, t0
	write(upgrade.PhaseUpgrading, checks, pull)
	write(upgrade.PhaseUpgrading, checks, pull) // the same again: no transition

	checks.State, checks.FinishedAt = upgrade.StepDone, t0.Add(3*time.Second)
	pull.State, pull.StartedAt = upgrade.StepRunning, t0.Add(3*time.Second)
	write(upgrade.PhaseUpgrading, checks, pull)

	pull.State, pull.Error = upgrade.StepFailed, "pull: not found"
	write(upgrade.PhaseFailed, checks, pull)

	require.Eventually(t, func() bool { return logs.Len() == 6 }, 10*time.Second, 10*time.Millisecond, "4 step lines, 2 phase lines")

	var steps []string
	for _, e := range logs.FilterMessage(metrics.MsgKubernetesStep).All() {
		f := e.ContextMap()
		steps = append(steps, fmt.Sprintf("%s %s %s %s", f["step"], f["machine"], f["state"], f["reason"]))
	}

	assert.Equal(t, []string{
		"pre-checks  Running ", "pre-checks  Done ", "pre-pull c1-cp-1 Running ", "pre-pull c1-cp-1 Failed pull: not found",
	}, steps)
	assert.Equal(t, 2, logs.FilterMessage(metrics.MsgClusterPhase).Len())

	histogram := gatherHistogram(t, m, "upshift_kubernetes_upgrade_step_duration_seconds")
	assert.Equal(t, map[string]uint64{"pre-checks": 1}, histogram.counts)
	assert.InDelta(t, 3.0, histogram.sums["pre-checks"], 1e-9)
}

// A config change's steps and its rollout's phases are transitions too, logged as such.
func TestConfigTransitions(t *testing.T) {
	st, _, logs := watching(t, nil)

	for _, phase := range []upgrade.MachinePhase{upgrade.MachineApplyingConfig, upgrade.MachineApplyingConfig, upgrade.MachineFailed} {
		r := upgrade.NewMachineConfigStatus("c1-w-1")
		r.TypedSpec().Cluster, r.TypedSpec().Phase, r.TypedSpec().ChangeVersion = "c1", phase, "abc"

		if phase == upgrade.MachineFailed {
			r.TypedSpec().Error = "apply: refused"
		}

		put(t, st, r)
	}

	rollout := upgrade.NewConfigRolloutStatus("c1")
	rollout.TypedSpec().Phase, rollout.TypedSpec().FailedMachine = upgrade.PhaseFailed, "c1-w-1"
	put(t, st, rollout)

	require.Eventually(t, func() bool { return logs.Len() == 3 }, 10*time.Second, 10*time.Millisecond, "2 step lines, 1 phase line")

	var lines []string
	for _, e := range logs.All() {
		f := e.ContextMap()
		lines = append(lines, fmt.Sprintf("%s %s %s %s %s %s", e.Message, f["upgrade"], f["machine"], f["from"], f["step"], f["reason"]))
	}

	assert.ElementsMatch(t, []string{
		"machine upgrade step config c1-w-1  ApplyingConfig ",
		"machine upgrade step config c1-w-1 ApplyingConfig Failed apply: refused",
		"cluster upgrade phase config c1-w-1  Failed ",
	}, lines)
}
