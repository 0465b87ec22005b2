package controllers_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

const k8sTarget = "1.34.3"

// kubernetesFleet starts the engine over f and registers it on Talos talosVersion and Kubernetes fakeKubernetes;
// it returns once the Talos rollout is done there, so a Kubernetes upgrade asked for next starts on a quiet cluster.
func kubernetesFleet(t *testing.T, f *fakeFleet, talosVersion string) (context.Context, state.State) {
	t.Helper()

	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, talosVersion, func(c *cluster.ClusterSpec) { c.KubernetesVersion = "v" + fakeKubernetes })
	assertDone(ctx, t, st, talosVersion)

	return ctx, st
}

// setKubernetes asks for version, changing the Cluster with change.
func setKubernetes(ctx context.Context, t *testing.T, st state.State, version string, change func(*cluster.Cluster)) {
	t.Helper()

	updateCluster(ctx, t, st, func(c *cluster.Cluster) {
		c.TypedSpec().KubernetesVersion = version
		if change != nil {
			change(c)
		}
	})
}

func assertKubernetes(ctx context.Context, t *testing.T, st state.State, check func(*upgrade.KubernetesUpgradeStatusSpec, *assert.Assertions)) {
	t.Helper()

	assertClusterStatus[upgrade.KubernetesUpgradeStatusSpec, upgrade.KubernetesUpgradeStatusExtension](ctx, t, st, check)
}

func assertKubernetesDone(ctx context.Context, t *testing.T, st state.State) {
	t.Helper()

	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseDone, s.Phase, "%s %s %s", s.Phase, s.Error, s.Reason)
		a.Equal(k8sTarget, s.ToVersion)
		a.Equal(s.Total, s.Done)
	})
}

// A Kubernetes upgrade of 2 control planes and 2 workers: pre-checks, then every pull, then the static pods control
// plane by control plane, kube-proxy on every control plane and its DaemonSet, then the kubelets, control planes
// first; one ApplyConfiguration per step.
func TestKubernetesUpgradeSteps(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v14, 2, 2)
	ctx, st := kubernetesFleet(t, f, v14)
	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseDone, s.Phase)
		a.Contains(s.AvailableVersions, k8sTarget)
	})

	setKubernetes(ctx, t, st, "v"+k8sTarget, nil)
	assertKubernetesDone(ctx, t, st)

	apply := func(node, component string) string {
		image := "registry.k8s.io/" + component + ":v" + k8sTarget
		if component == talos.Kubelet {
			image = "ghcr.io/siderolabs/kubelet:v" + k8sTarget
		}

		return "ApplyConfiguration " + node + " " + component + "=" + image
	}

	calls := f.k8sCalls()
	want := []string{
		apply("cp-1", talos.KubeAPIServer), apply("cp-1", talos.KubeControllerManager), apply("cp-1", talos.KubeScheduler),
		apply("cp-2", talos.KubeAPIServer), apply("cp-2", talos.KubeControllerManager), apply("cp-2", talos.KubeScheduler),
		apply("cp-1", talos.KubeProxy), apply("cp-2", talos.KubeProxy), "ApplyDaemonSet registry.k8s.io/kube-proxy:v" + k8sTarget,
		apply("cp-1", talos.Kubelet), apply("cp-2", talos.Kubelet),
	}

	require.Equal(t, "KubernetesChecks "+fakeKubernetes+"->"+k8sTarget, calls[0])
	pulls := slices.DeleteFunc(slices.Clone(calls[1:]), func(c string) bool { return !strings.HasPrefix(c, "ImagePull") })
	require.Len(t, pulls, 4*2+2, "a control plane pulls 4 images, a worker the kubelet: %v", calls)
	require.Equal(t, pulls, calls[1:1+len(pulls)], "every pull comes before any change")

	changes := calls[1+len(pulls):]
	require.Equal(t, want, changes[:len(want)])
	require.ElementsMatch(t, []string{apply("w-1", talos.Kubelet), apply("w-2", talos.Kubelet)}, changes[len(want):])

	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) {
		a.Len(s.PreChecks, len(cluster.KubernetesChecks))

		for _, p := range s.PreChecks {
			a.True(p.Passed, p.Name)
		}
	})
}

// A pull that fails on one worker fails the upgrade at its pre-pull, naming node and image, before anything
// changed; a retry after the fault is cleared finishes it.
func TestKubernetesUpgradePullFailsThenRetry(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v14, 1, 2)
	image := "ghcr.io/siderolabs/kubelet:v" + k8sTarget
	f.set("w-2", func(n *fakeNode) { n.k8sOf().pullFails[image] = true })

	ctx, st := kubernetesFleet(t, f, v14)
	setKubernetes(ctx, t, st, "v"+k8sTarget, nil)

	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseFailed, s.Phase)
		a.Contains(s.Error, "pre-pull on w-2")
		a.Contains(s.Error, image)
	})

	for _, c := range f.k8sCalls() {
		require.NotContains(t, c, "Apply", "a failed pre-pull changed something")
	}

	f.set("w-2", func(n *fakeNode) { n.k8sOf().pullFails[image] = false })
	setKubernetes(ctx, t, st, "v"+k8sTarget, func(c *cluster.Cluster) {
		c.Metadata().Annotations().Set(upgrade.KubernetesRetryAnnotation, k8sTarget+"/1")
	})
	assertKubernetesDone(ctx, t, st)
	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) { a.Equal(2, s.Attempt) })
}

// A pre-check finding blocks the upgrade naming it; skipping that check in the Cluster lets it go on, and the
// status records the override.
func TestKubernetesUpgradePreCheckSkipped(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v14, 1, 1)
	f.findings = []talos.Finding{{Check: "removed-feature-gates", Node: "cp-1", Component: "kube-apiserver", Value: "SomeGate"}}

	ctx, st := kubernetesFleet(t, f, v14)
	setKubernetes(ctx, t, st, "v"+k8sTarget, nil)

	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseBlocked, s.Phase)
		a.Contains(s.Error, "removed-feature-gates: cp-1 kube-apiserver SomeGate")
	})

	setKubernetes(ctx, t, st, "v"+k8sTarget, func(c *cluster.Cluster) {
		c.TypedSpec().SkipKubernetesChecks = []string{"removed-feature-gates"}
	})
	assertKubernetesDone(ctx, t, st)
	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) {
		i := slices.IndexFunc(s.PreChecks, func(p upgrade.PreCheck) bool { return p.Name == "removed-feature-gates" })
		if a.GreaterOrEqual(i, 0) {
			a.True(s.PreChecks[i].Skipped)
			a.False(s.PreChecks[i].Passed)
		}
	})
}

// A Talos upgrade asked for while a Kubernetes upgrade holds the cluster waits, saying for which, and starts when
// the Kubernetes upgrade is done.
func TestTalosWaitsForKubernetes(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 1, 1)
	release := make(chan struct{})
	f.hook(func(c fakeCall) {
		if c.Method == "ApplyConfiguration" && strings.Contains(c.Arg, "kubelet") {
			<-release
		}
	})

	ctx, st := kubernetesFleet(t, f, v13)
	setKubernetes(ctx, t, st, "v"+k8sTarget, nil)

	assertKubernetes(ctx, t, st, func(s *upgrade.KubernetesUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseUpgrading, s.Phase)

		if a.Less(s.CurrentStep, len(s.Steps)) {
			a.Equal(string(upgrade.StepKubelet), string(s.Steps[s.CurrentStep].Kind))
		}
	})

	setTarget(ctx, t, st, v14)
	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhasePending, s.Phase)
		a.Contains(s.Reason, "waiting for the Kubernetes upgrade to "+k8sTarget)
		a.Empty(s.Admitted)
	})
	require.Zero(t, f.count("cp-1", "PullImage")+f.count("w-1", "PullImage"), "a Talos machine started beside the Kubernetes upgrade")

	close(release)
	assertKubernetesDone(ctx, t, st)
	assertDone(ctx, t, st, v14)
}
