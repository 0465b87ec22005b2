package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/demoview"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// kubeBenchWorkers and kubeBenchTalos size the cluster of BenchmarkKubernetesUpgrade: 3 control planes and 7
// workers (the lite fleet's cluster in BenchmarkRollout), rolled from Talos 1.13.4 to kubeBenchTalos.
const (
	kubeBenchWorkers = 7
	kubeBenchTalos   = "1.14.1"
)

// idleWindow is how long BenchmarkKubernetesUpgrade measures the engine with nothing to do (a measurement span,
// not a wait for a condition): what its polls cost per second, to read the upgrades' CPU against.
const idleWindow = 10 * time.Second

// kubeStages are the parts of a Kubernetes upgrade BenchmarkKubernetesUpgrade reports, in order: planning (from
// the request to the first step, including the hand-over from the Talos rollout), then the steps by kind, the three
// control-plane static pods as one, then finishing (from the last step to the status Done).
var kubeStages = []string{"planning", "pre-checks", "pre-pull", "static-pods", "kube-proxy", "kubelets", "finishing"}

// kubeStageOf is the stage a step of kind belongs to.
func kubeStageOf(kind upgrade.StepKind) string {
	switch kind {
	case upgrade.StepAPIServer, upgrade.StepControllerManager, upgrade.StepScheduler:
		return "static-pods"
	case upgrade.StepKubelet:
		return "kubelets"
	default:
		return string(kind)
	}
}

// kubeStage is what an upgrade toward to is doing, read from its status: planning until its first step starts,
// then the stage of its first unfinished step (the steps of one stage run before any of the next), finishing once
// every step is.
func kubeStage(s *upgrade.KubernetesUpgradeStatusSpec, to string) string {
	switch {
	case !sameVersion(s.ToVersion, to) || len(s.Steps) == 0 || s.Steps[0].State == upgrade.StepPending:
		return "planning"
	case s.CurrentStep >= len(s.Steps):
		return "finishing"
	default:
		return kubeStageOf(s.Steps[s.CurrentStep].Kind)
	}
}

// BenchmarkKubernetesUpgrade upgrades Kubernetes on one full cluster (3 control planes + 7 workers, real etcd and
// kube-apiserver, no reboot downtime, no static pod restart time) from 1.35 to 1.36, with the engine as a child
// process, and, as the baseline on the same bed in the same run, first rolls the cluster's Talos from 1.13.4 to
// 1.14.1. Both run at parallelism 100%. Reported: each one's wall time and engine CPU and their ratios; the
// Kubernetes upgrade's wall time per stage (from the steps' StartedAt and FinishedAt) and engine CPU per stage (the
// engine's CPU time read whenever a watch of the status sees the stage change); the idle engine's CPU per second; the
// engine's peak memory. Each iteration starts a bed of its own, stopped when the benchmark ends (-benchtime 1x).
func BenchmarkKubernetesUpgrade(b *testing.B) {
	var (
		talos, kube engineSpan
		idle        time.Duration
		stageWall   = map[string]time.Duration{}
		stageCPU    = map[string]time.Duration{}
		stepsN      int
	)

	for range b.N {
		b.StopTimer()

		bed := startKubeBed(b, kubeTalos, testbed.WithEngineProcess(testbed.SelfCommand()), testbed.WithFleetOptions(
			talosemu.WithWorkers(kubeBenchWorkers), talosemu.WithRebootDowntime(0), talosemu.WithStaticPodRestart(0)))
		st := bed.State()
		ids := []string{"c1"}

		setCluster(b, st, "c1", func(s *cluster.ClusterSpec) { s.Parallelism = "100%" })

		initial := waitFor(b, st, upgrade.NewTalosUpgradeStatus("c1").Metadata(), time.Minute, "the Talos status Done",
			func(r *upgrade.TalosUpgradeStatus) bool { return r.TypedSpec().Phase == upgrade.PhaseDone })
		waitManifestCheckAfter(b, bed, initial.Metadata().Updated())

		// The baseline: the Talos rollout of the same cluster.
		logTalosSteps := followTalosSteps(b, bed)

		talos.add(measureEngine(b, bed, func() {
			setCluster(b, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + kubeBenchTalos })
			require.NoError(b, waitPhase(b.Context(), st, ids, phaseIs(upgrade.PhaseDone, kubeBenchTalos)))
		}))

		logTalosSteps()

		// The manifest check that follows every upgrade once it is Done belongs to neither span.
		done := waitFor(b, st, upgrade.NewTalosUpgradeStatus("c1").Metadata(), time.Minute, "the Talos rollout Done",
			func(r *upgrade.TalosUpgradeStatus) bool { return r.TypedSpec().Phase == upgrade.PhaseDone })
		waitManifestCheckAfter(b, bed, done.Metadata().Updated())

		idle += measureIdle(b, bed)

		meter := startStageMeter(b, bed, kubeNext)

		var (
			requested, seenDone time.Time
			final               *upgrade.KubernetesUpgradeStatusSpec
		)

		kube.add(measureEngine(b, bed, func() {
			requested = time.Now()

			setCluster(b, st, "c1", func(s *cluster.ClusterSpec) { s.KubernetesVersion = "v" + kubeNext })
			final = waitKube(b, bed, 10*time.Minute, "the Kubernetes upgrade Done", kubePhaseIs(upgrade.PhaseDone, kubeNext))
			seenDone = time.Now()
		}))

		for stage, d := range meter.stop(b) {
			stageCPU[stage] += d
		}

		for stage, d := range kubeStageWalls(final, requested, seenDone) {
			stageWall[stage] += d
		}

		stepsN += len(final.Steps)
		logKubeSteps(b, final)

		requireKubernetesOn(b, bed, kubeNext)
	}

	n := time.Duration(b.N)
	ms := func(d time.Duration) float64 { return float64((d / n).Microseconds()) / 1000 }

	b.ReportMetric((talos.wall / n).Seconds(), "talos-wall-s")
	b.ReportMetric(ms(talos.cpu), "talos-engine-cpu-ms")
	b.ReportMetric((kube.wall / n).Seconds(), "k8s-wall-s")
	b.ReportMetric(ms(kube.cpu), "k8s-engine-cpu-ms")
	b.ReportMetric(kube.wall.Seconds()/talos.wall.Seconds(), "k8s/talos-wall-x")
	b.ReportMetric(kube.cpu.Seconds()/talos.cpu.Seconds(), "k8s/talos-cpu-x")
	b.ReportMetric(ms(idle)/idleWindow.Seconds(), "engine-idle-cpu-ms/s")
	b.ReportMetric(float64(stepsN)/float64(b.N), "k8s-steps")
	b.ReportMetric(float64(max(talos.peakRSS, kube.peakRSS))/(1<<20), "engine-peak-MiB")

	for _, stage := range kubeStages {
		b.ReportMetric(ms(stageWall[stage]), "k8s-"+stage+"-wall-ms")
		b.ReportMetric(ms(stageCPU[stage]), "k8s-"+stage+"-cpu-ms")
	}
}

// measureIdle reports the engine's CPU time over idleWindow with nothing requested of it.
func measureIdle(b *testing.B, bed *testbed.Bed) time.Duration {
	b.Helper()

	before, err := bed.EngineUsage()
	require.NoError(b, err)

	select {
	case <-b.Context().Done():
		b.Fatal("the benchmark ended while measuring the idle engine")
	case <-time.After(idleWindow):
	}

	after, err := bed.EngineUsage()
	require.NoError(b, err)

	return after.CPU - before.CPU
}

// waitManifestCheckAfter waits until the engine checked c1's bootstrap manifests after t (engine time), the check
// that follows every upgrade once it is Done, so that it is not counted in the next measured span.
func waitManifestCheckAfter(b *testing.B, bed *testbed.Bed, t time.Time) {
	b.Helper()

	waitSyncWithin(b, bed, 2*time.Minute, "the manifest check after "+t.Format(time.StampMicro), func(s *manifest.ManifestSyncSpec) bool {
		return s.CheckedAt.After(t)
	})
}

// kubeStageWalls is the wall time of each stage of a finished upgrade requested at requested and seen Done at
// done: planning up to the first step's start, each stage from the start of its first step to the end of its last,
// finishing from the end of the last step to done.
func kubeStageWalls(s *upgrade.KubernetesUpgradeStatusSpec, requested, done time.Time) map[string]time.Duration {
	first, last := map[string]time.Time{}, map[string]time.Time{}

	var start, end time.Time

	for _, step := range s.Steps {
		stage := kubeStageOf(step.Kind)

		if f, ok := first[stage]; !ok || step.StartedAt.Before(f) {
			first[stage] = step.StartedAt
		}

		if step.FinishedAt.After(last[stage]) {
			last[stage] = step.FinishedAt
		}

		if start.IsZero() || step.StartedAt.Before(start) {
			start = step.StartedAt
		}

		end = maxTime(end, step.FinishedAt)
	}

	out := map[string]time.Duration{"planning": start.Sub(requested), "finishing": done.Sub(end)}

	for stage, f := range first {
		out[stage] = last[stage].Sub(f)
	}

	return out
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}

	return a
}

// logKubeSteps logs each step kind's count, mean and longest step time, on one line.
func logKubeSteps(b *testing.B, s *upgrade.KubernetesUpgradeStatusSpec) {
	b.Helper()

	var kinds []upgrade.StepKind

	took := map[upgrade.StepKind][]time.Duration{}

	for _, step := range s.Steps {
		if _, ok := took[step.Kind]; !ok {
			kinds = append(kinds, step.Kind)
		}

		took[step.Kind] = append(took[step.Kind], step.FinishedAt.Sub(step.StartedAt))
	}

	var parts []string

	for _, kind := range kinds {
		var sum time.Duration

		for _, d := range took[kind] {
			sum += d
		}

		parts = append(parts, stepTimes(string(kind), len(took[kind]), sum/time.Duration(len(took[kind])), slices.Max(took[kind])))
	}

	b.Logf("Kubernetes upgrade, step kind (count mean/longest): %s", strings.Join(parts, ", "))
}

// stepTimes renders one kind of step for the benchmark's log, which go test cuts after 10 lines: one line per table.
func stepTimes(name string, count int, mean, longest time.Duration) string {
	return fmt.Sprintf("%s %d %s/%s", name, count, mean.Round(time.Millisecond), longest.Round(time.Millisecond))
}

// stageMeter splits the engine's CPU time over the stages of a Kubernetes upgrade: a watch of the status reads the
// engine's CPU time whenever the stage changes and charges what was used since to the stage that ended.
type stageMeter struct {
	bed      *testbed.Bed
	to       string
	unfollow func() error

	mu    sync.Mutex
	stage string
	mark  time.Duration
	cpu   map[string]time.Duration
	err   error
}

// startStageMeter starts charging the engine's CPU to "planning" now, and to the stages of the upgrade toward to as
// a watch of c1's KubernetesUpgradeStatus sees them.
func startStageMeter(b *testing.B, bed *testbed.Bed, to string) *stageMeter {
	b.Helper()

	u, err := bed.EngineUsage()
	require.NoError(b, err)

	m := &stageMeter{bed: bed, to: to, stage: "planning", mark: u.CPU, cpu: map[string]time.Duration{}}
	m.unfollow = follow(b, bed, upgrade.KubernetesUpgradeStatusType, func(r resource.Resource) {
		if s, ok := r.(*upgrade.KubernetesUpgradeStatus); ok && s.Metadata().ID() == "c1" {
			m.enter(kubeStage(s.TypedSpec(), m.to))
		}
	})

	return m
}

// enter charges the CPU used since the last change to the current stage, if stage is another one.
func (m *stageMeter) enter(stage string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if stage == m.stage || m.err != nil {
		return
	}

	u, err := m.bed.EngineUsage()
	if err != nil {
		m.err = err

		return
	}

	m.cpu[m.stage] += u.CPU - m.mark
	m.stage, m.mark = stage, u.CPU
}

// stop ends the last stage now and returns the CPU time charged to each stage.
func (m *stageMeter) stop(b *testing.B) map[string]time.Duration {
	b.Helper()

	m.enter("")
	require.NoError(b, m.unfollow(), "watching the Kubernetes upgrade status")
	require.NoError(b, m.err, "measuring the engine's CPU by stage")

	return m.cpu
}

// follow calls fn, on a goroutine of its own, with each resource of type t (engine namespace) as a watch sees it
// from now on, until the returned function ends the watch and says whether it failed.
func follow(b *testing.B, bed *testbed.Bed, t resource.Type, fn func(resource.Resource)) func() error {
	b.Helper()

	ctx, cancel := context.WithCancel(b.Context())
	events := make(chan state.Event)

	if err := bed.State().WatchKind(ctx, resource.NewMetadata(resources.Namespace, t, "", resource.VersionUndefined), events,
		state.WithBootstrapContents(true)); err != nil {
		cancel()
		require.NoError(b, err, "watching %s", t)
	}

	done := make(chan error, 1)

	go func() {
		for {
			select {
			case <-ctx.Done():
				done <- nil

				return
			case ev := <-events:
				switch ev.Type {
				case state.Errored:
					done <- fmt.Errorf("watching %s: %w", t, ev.Error)

					return
				case state.Created, state.Updated:
					fn(ev.Resource)
				case state.Destroyed, state.Bootstrapped, state.Noop:
				}
			}
		}
	}()

	return func() error {
		cancel()

		return <-done
	}
}

// followTalosSteps feeds every MachineUpgradeStatus a watch sees into a demo view; the returned function ends the
// watch and logs the view's time per machine step, on one line.
func followTalosSteps(b *testing.B, bed *testbed.Bed) func() {
	b.Helper()

	var mu sync.Mutex

	view := demoview.New(time.Now())
	unfollow := follow(b, bed, upgrade.MachineUpgradeStatusType, func(r resource.Resource) {
		mu.Lock()
		defer mu.Unlock()

		view.Update(r)
	})

	return func() {
		require.NoError(b, unfollow(), "watching the machine upgrades")

		mu.Lock()
		defer mu.Unlock()

		var parts []string

		for _, t := range view.PhaseTimes() {
			parts = append(parts, stepTimes(string(t.Phase), t.Count, t.Average(), t.Longest))
		}

		b.Logf("Talos rollout, machine step (count mean/longest): %s", strings.Join(parts, ", "))
	}
}
