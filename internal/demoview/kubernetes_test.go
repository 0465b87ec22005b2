package demoview_test

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/demoview"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// kubeSteps are the steps of an upgrade of c1 to 1.35.2 as the engine plans them, every one Pending.
func kubeSteps() []upgrade.KubernetesUpgradeStep {
	step := func(kind upgrade.StepKind, machine string) upgrade.KubernetesUpgradeStep {
		return upgrade.KubernetesUpgradeStep{Kind: kind, Machine: machine, Version: "1.35.2", State: upgrade.StepPending}
	}

	cps, all := []string{"c1-cp-1", "c1-cp-2", "c1-cp-3"}, []string{"c1-cp-1", "c1-cp-2", "c1-cp-3", "c1-w-1", "c1-w-2", "c1-w-3"}
	steps := []upgrade.KubernetesUpgradeStep{step(upgrade.StepPreChecks, "")}

	for _, m := range all {
		steps = append(steps, step(upgrade.StepPrePull, m))
	}

	for _, m := range cps {
		steps = append(steps, step(upgrade.StepAPIServer, m), step(upgrade.StepControllerManager, m), step(upgrade.StepScheduler, m))
	}

	steps = append(steps, step(upgrade.StepKubeProxy, ""))

	for _, m := range all {
		steps = append(steps, step(upgrade.StepKubelet, m))
	}

	return steps
}

// kube folds in c1's KubernetesUpgradeStatus with steps, the first done of them finished one second each, one
// after the other from a minute after t0, and the next running, written at at.
func kube(v *demoview.View, at time.Time, steps []upgrade.KubernetesUpgradeStep, done int, set ...func(*upgrade.KubernetesUpgradeStatusSpec)) []string {
	start := t0.Add(time.Minute)

	for i := range steps {
		switch {
		case i < done:
			steps[i].State = upgrade.StepDone
			steps[i].StartedAt, steps[i].FinishedAt = start.Add(time.Duration(i)*time.Second), start.Add(time.Duration(i+1)*time.Second)
		case i == done:
			steps[i].State, steps[i].StartedAt = upgrade.StepRunning, start.Add(time.Duration(i)*time.Second)
		}
	}

	s := upgrade.NewKubernetesUpgradeStatus("c1")
	*s.TypedSpec() = upgrade.KubernetesUpgradeStatusSpec{
		Phase: upgrade.PhaseUpgrading, FromVersion: "1.34.3", ToVersion: "1.35.2", Plan: []string{"1.35.2"},
		Steps: steps, CurrentStep: done, Done: done, Total: len(steps),
	}

	if done == len(steps) {
		s.TypedSpec().Phase = upgrade.PhaseDone
	}

	for _, f := range set {
		f(s.TypedSpec())
	}

	s.Metadata().SetUpdated(at)

	return v.Update(s)
}

// The Kubernetes track shows under the Talos one once the upgrade has steps: phase, versions, steps done, and the
// stage it is at with its own count and what runs; the row of the machine a step runs on names it.
func TestScreenShowsTheKubernetesUpgrade(t *testing.T) {
	v := fleet(t)
	talos(v, t0, func(s *upgrade.TalosUpgradeStatusSpec) { s.Phase, s.Done, s.Plan = upgrade.PhaseDone, 6, nil })

	before := upgrade.NewKubernetesUpgradeStatus("c1")
	before.TypedSpec().Phase, before.TypedSpec().ToVersion = upgrade.PhaseDone, "1.34.3"
	assert.Empty(t, v.Update(before), "a status with nothing to do is no news")
	assert.NotContains(t, strings.Join(v.Screen(80, 0), "\n"), "Kubernetes")

	// Step 12 is kube-apiserver on c1-cp-2: the fifth static pod.
	lines := kube(v, t0.Add(90*time.Second), kubeSteps(), 11)
	assert.Equal(t, []string{"   90.0s  c1 Kubernetes Upgrading  1.34.3 → 1.35.2  11/23 steps  static pods 4/9: kube-controller-manager on c1-cp-2"}, lines)

	screen := v.Screen(80, 0)
	assert.Equal(t, "  Kubernetes Upgrading  1.34.3 → 1.35.2  11/23 steps", screen[1])
	assert.Equal(t, "  now   static pods 4/9: kube-controller-manager on c1-cp-2", screen[2])
	assert.Contains(t, strings.Join(screen, "\n"), "  c1-cp-2 v1.11.6  -                    ··········        controller-manager\n")

	for _, l := range screen {
		assert.LessOrEqual(t, utf8.RuneCountInString(l), 80, "line %q", l)
	}

	// kube-proxy shows its rollout.
	steps := kubeSteps()
	steps[16].Progress = "3/6 pods updated, 2 available"
	kube(v, t0.Add(100*time.Second), steps, 16)
	assert.Equal(t, "  now   kube-proxy 0/1: 3/6 pods updated, 2 available", v.Screen(80, 0)[2])

	kube(v, t0.Add(110*time.Second), kubeSteps(), 19)
	assert.Equal(t, "  now   kubelets 2/6: c1-cp-3", v.Screen(80, 0)[2])
}

// The summary gives the Kubernetes upgrade's time and the time per step kind, from the steps' own records; the
// closing lines name the bootstrap objects the engine found out of sync after the upgrades, in its words.
func TestSummaryAndClosingOfTheKubernetesUpgrade(t *testing.T) {
	var out bytes.Buffer

	c := demoview.NewConsole(&out, true, t0)
	fillFleet(c, "v1.14.1")

	tus := upgrade.NewTalosUpgradeStatus("c1")
	*tus.TypedSpec() = upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseUpgrading, ToVersion: "v1.14.1", Target: "v1.14.1", Plan: []string{"v1.14.1"}, Total: 6}
	tus.Metadata().SetUpdated(t0)
	c.Update(tus)

	tus.TypedSpec().Phase, tus.TypedSpec().Done = upgrade.PhaseDone, 6
	tus.Metadata().SetUpdated(t0.Add(time.Minute))
	c.Update(tus)

	steps := kubeSteps()
	kube(c.View(), t0.Add(2*time.Minute), steps, len(steps))

	summary := strings.Join(c.View().Summary(80), "\n")
	assert.Contains(t, summary, `  Kubernetes upgrade: Done in 23s
  plan  1.34.3 ⇒ 1.35.2
  STEP                    TIMES   AVERAGE   LONGEST      WALL
  pre-checks                  1        1s        1s        1s
  pre-pull                    6        1s        1s        6s
  kube-apiserver              3        1s        1s        7s
`)
	assert.Contains(t, summary, "\n  kubelet                     6        1s        1s        6s\n")

	closing := demoview.Closing{
		Clusters: []string{"c1"}, Target: "v1.14.1", Kubernetes: "v1.35.2", Endpoint: "127.0.0.1:50651",
		Config: "/tmp/d/engine/admin.upshiftconfig", EngineDir: "/tmp/d/engine", StateFile: "/tmp/d/engine/state.db",
	}

	// A diff computed before the Kubernetes upgrade finished is not the one to show.
	stale := manifest.NewManifestSync("c1")
	stale.TypedSpec().Phase, stale.TypedSpec().OutOfSync, stale.TypedSpec().CheckedAt = manifest.PhaseUpToDate, 0, t0.Add(30*time.Second)
	c.Update(stale)

	_, ok := c.View().ManifestsAfterUpgrades("c1")
	assert.False(t, ok)

	ms := manifest.NewManifestSync("c1")
	*ms.TypedSpec() = manifest.ManifestSyncSpec{
		Phase: manifest.PhaseOutOfSync, OutOfSync: 2, CheckedAt: t0.Add(125 * time.Second),
		Diffs: []manifest.ObjectDiff{
			{Object: "Deployment kube-system/coredns", Action: "update"},
			{Object: "DaemonSet kube-system/kube-proxy", Action: "update", Conflicts: []string{"spec.x set by kubectl-edit"}},
		},
	}
	c.Update(ms)

	got, ok := c.View().ManifestsAfterUpgrades("c1")
	require.True(t, ok)
	assert.Equal(t, 2, got.OutOfSync)

	require.NoError(t, c.Finish(closing, nil))
	assert.True(t, strings.HasSuffix(out.String(), `
Every machine runs Talos v1.14.1 and Kubernetes v1.35.2.
c1 bootstrap manifests: OutOfSync, 2 objects changed; see `+"`upshift manifests"+`
  diff c1`+"`, apply with `upshift manifests sync c1`"+`
  Deployment kube-system/coredns (update)
  DaemonSet kube-system/kube-proxy (update, conflicts)
`), out.String())

	for _, l := range strings.Split(out.String(), "\n") {
		assert.LessOrEqual(t, utf8.RuneCountInString(l), 80, "line %q", l)
	}

	// A Kubernetes upgrade that did not end Done on the version asked for is the run's error.
	closing.Kubernetes = "v1.36.2"
	require.EqualError(t, c.Finish(closing, nil), "the Kubernetes upgrade of c1 is Done toward 1.35.2, not Done on v1.36.2")
}
