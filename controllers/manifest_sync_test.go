package controllers_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/store"
	"github.com/upshift-io/upshift/state/validate"
)

// The bootstrap objects of the double, as ManifestSync names them.
const (
	coreDNS   = "Deployment kube-system/coredns"
	kubeProxy = "DaemonSet kube-system/kube-proxy"
)

// fakeManifests is a double of one cluster's bootstrap manifests behind the ManifestConnector: each object is
// reduced to its image, as Talos renders it and as it runs. Every check and apply is recorded.
type fakeManifests struct {
	mu       sync.Mutex
	order    []string
	rendered map[string]string
	live     map[string]string
	// conflicts are the fields another field manager set, found by a check and by an apply that does not force.
	conflicts map[string][]kube.Conflict
	// lateConflicts are found only by an apply: a field another manager set after the check.
	lateConflicts map[string][]kube.Conflict
	// refused is the API server's answer to any write of the object.
	refused map[string]string
	checks  int
	applies []fakeApply
}

type fakeApply struct {
	Object string
	Force  bool
}

var (
	_ controllers.ManifestConnector = (*fakeManifests)(nil)
	_ kube.BootstrapObjects         = (*fakeManifests)(nil)
)

func newFakeManifests() *fakeManifests {
	images := map[string]string{kubeProxy: "kube-proxy:v1.33.0", coreDNS: "coredns:v1.12.3"}

	return &fakeManifests{
		order: []string{kubeProxy, coreDNS}, rendered: images, live: maps.Clone(images),
		conflicts: map[string][]kube.Conflict{}, lateConflicts: map[string][]kube.Conflict{}, refused: map[string]string{},
	}
}

// change runs edit on the double under its lock.
func (f *fakeManifests) change(edit func(*fakeManifests)) {
	f.mu.Lock()
	defer f.mu.Unlock()

	edit(f)
}

func (f *fakeManifests) image(object string) string {
	f.mu.Lock()
	defer f.mu.Unlock()

	return f.live[object]
}

func (f *fakeManifests) checkCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()

	return f.checks
}

func (f *fakeManifests) applied() []fakeApply {
	f.mu.Lock()
	defer f.mu.Unlock()

	return slices.Clone(f.applies)
}

func (f *fakeManifests) BootstrapManifests(context.Context, controllers.ClusterAccess, string) ([]kube.Object, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	out := make([]kube.Object, 0, len(f.order))
	for _, name := range f.order {
		out = append(out, fakeObject(name))
	}

	return out, nil
}

func (f *fakeManifests) BootstrapObjects(context.Context, controllers.ClusterAccess) (kube.BootstrapObjects, error) {
	return f, nil
}

// fakeObject is the object named "Kind namespace/name".
func fakeObject(name string) kube.Object {
	obj := &unstructured.Unstructured{}

	kind, rest, _ := strings.Cut(name, " ")
	ns, n, _ := strings.Cut(rest, "/")
	obj.SetKind(kind)
	obj.SetNamespace(ns)
	obj.SetName(n)

	return obj
}

func (f *fakeManifests) Check(_ context.Context, obj kube.Object, _ bool) (kube.ObjectCheck, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	f.checks++
	name := kube.Describe(obj)
	check := kube.ObjectCheck{Conflicts: slices.Clone(f.conflicts[name]), Error: f.refused[name]}

	if live, want := f.live[name], f.rendered[name]; live != want {
		check.Action, check.Diff = "update", "-image: "+live+"\n+image: "+want+"\n"
	}

	return check, nil
}

func (f *fakeManifests) Apply(_ context.Context, obj kube.Object, _, forceConflicts bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	name := kube.Describe(obj)
	f.applies = append(f.applies, fakeApply{Object: name, Force: forceConflicts})

	if reason := f.refused[name]; reason != "" {
		return errors.New(reason)
	}

	if conflicts := append(slices.Clone(f.conflicts[name]), f.lateConflicts[name]...); len(conflicts) > 0 && !forceConflicts {
		return &kube.ConflictError{Object: name, Conflicts: conflicts}
	}

	f.live[name] = f.rendered[name]
	delete(f.conflicts, name)
	delete(f.lateConflicts, name)

	return nil
}

func (f *fakeManifests) Prunable(context.Context, []kube.Object) ([]string, error) { return nil, nil }

func (f *fakeManifests) Prune(context.Context, []kube.Object) ([]string, error) { return nil, nil }

func (f *fakeManifests) WaitRollout(context.Context, []kube.Object, time.Duration) error { return nil }

// startManifestSync runs ManifestSyncController alone over a cluster c1 in mode, with one reachable control plane
// on v13 and its credentials, written as the other controllers and the user would.
func startManifestSync(t *testing.T, f *fakeManifests, mode cluster.ManifestSyncMode) (context.Context, state.State) {
	t.Helper()

	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	cfg := controllers.NewUpgradeConfig(controllers.WithManifestCheckInterval(20 * time.Millisecond))
	ctx := startEngine(t, st, zaptest.NewLogger(t), func(engine controller.Engine) error {
		return engine.RegisterQController(controllers.NewManifestSyncController(f, cfg))
	})

	c := cluster.NewCluster("c1")
	*c.TypedSpec() = cluster.ClusterSpec{TalosVersion: v13, KubernetesVersion: "v1.33.0", ManifestSync: mode}
	require.NoError(t, st.Create(ctx, c))

	creds := cluster.NewCredentials("c1")
	creds.TypedSpec().Kubeconfig = "apiVersion: v1\nkind: Config\n"
	require.NoError(t, st.Create(ctx, creds))

	m := cluster.NewMachine("cp-1")
	*m.TypedSpec() = cluster.MachineSpec{Cluster: "c1", Role: cluster.RoleControlPlane, Endpoint: "127.0.0.1:50000"}
	require.NoError(t, st.Create(ctx, m))
	observed(ctx, t, st, "cp-1", v13)

	return ctx, st
}

// assertSync waits until c1's ManifestSync passes check.
func assertSync(ctx context.Context, t *testing.T, st state.State, check func(*manifest.ManifestSyncSpec, *assert.Assertions)) *manifest.ManifestSyncSpec {
	t.Helper()

	rtestutils.AssertResource(ctx, t, st, "c1", func(r *manifest.ManifestSync, a *assert.Assertions) {
		check(r.TypedSpec(), a)
	}, rtestutils.WithNamespace(resources.Namespace))

	ms, err := safe.StateGetByID[*manifest.ManifestSync](ctx, st, "c1")
	require.NoError(t, err)

	return ms.TypedSpec()
}

// request asks, as user:alice, for an apply of c1's manifests.
func request(ctx context.Context, t *testing.T, st state.State, spec cluster.ManifestSyncRequestSpec) {
	t.Helper()

	ctx = store.WithWriter(ctx, "user:alice")

	_, err := safe.StateGetByID[*cluster.ManifestSyncRequest](ctx, st, "c1")
	if state.IsNotFoundError(err) {
		r := cluster.NewManifestSyncRequest("c1")
		*r.TypedSpec() = spec
		require.NoError(t, st.Create(ctx, r))

		return
	}

	require.NoError(t, err)

	_, err = safe.StateUpdateWithConflicts(ctx, st, cluster.NewManifestSyncRequest("c1").Metadata(), func(r *cluster.ManifestSyncRequest) error {
		*r.TypedSpec() = spec

		return nil
	})
	require.NoError(t, err)
}

// quietChecks waits until the controller has checked every object n more times, and returns the ManifestSync's
// version before and after: a check that finds what the last one found writes nothing.
func quietChecks(ctx context.Context, t *testing.T, st state.State, f *fakeManifests, n int) (before, after resource.Version) {
	t.Helper()

	version := func() resource.Version {
		ms, err := safe.StateGetByID[*manifest.ManifestSync](ctx, st, "c1")
		require.NoError(t, err)

		return ms.Metadata().Version()
	}

	before, start := version(), f.checkCount()

	require.Eventually(t, func() bool { return f.checkCount() >= start+n*2 }, 10*time.Second, time.Millisecond, "interval checks")

	return before, version()
}

// TestManifestSyncController runs the controller alone in manual mode: Cluster, Credentials, Machine, MachineStatus
// and ManifestSyncRequest in, ManifestSync out, the clusters' APIs behind a double. It shows the diff without
// applying it, applies a request and records who asked, holds back fields of another manager unless forced (found
// by the check or only as the apply runs), fails an apply the API server refuses while applying the others, and
// writes nothing for checks that find nothing new.
func TestManifestSyncController(t *testing.T) {
	t.Parallel()

	f := newFakeManifests()
	ctx, st := startManifestSync(t, f, cluster.ManifestSyncManual)

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal(manifest.PhaseUpToDate, s.Phase)
		a.Zero(s.OutOfSync)
		a.Equal("cp-1", s.Node)
		a.False(s.Legacy)
	})

	before, after := quietChecks(ctx, t, st, f, 3)
	assert.Equal(t, before, after, "checks that find nothing new write nothing")

	// The control plane renders a newer CoreDNS: shown, not applied.
	f.change(func(f *fakeManifests) { f.rendered[coreDNS] = "coredns:v1.12.4" })

	ms := assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal(manifest.PhaseOutOfSync, s.Phase)
		a.Equal(1, s.OutOfSync)
	})
	assert.Equal(t, []manifest.ObjectDiff{{Object: coreDNS, Action: "update", Diff: "-image: coredns:v1.12.3\n+image: coredns:v1.12.4\n"}}, ms.Diffs)

	before, after = quietChecks(ctx, t, st, f, 3)
	assert.Equal(t, before, after, "an unchanged diff is not written again")
	assert.Empty(t, f.applied(), "manual mode applies nothing by itself")

	// A request applies, without forcing, and records who asked.
	request(ctx, t, st, cluster.ManifestSyncRequestSpec{RequestID: "r1"})

	ms = assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal("r1", s.Request.ID)
		a.Equal(manifest.PhaseUpToDate, s.Phase)
	})
	assert.Equal(t, "user:alice", ms.Request.By)
	assert.Equal(t, "applied 1, held back 0, failed 0", ms.Request.Outcome)
	assert.Equal(t, []fakeApply{{Object: coreDNS}}, f.applied())
	assert.Equal(t, "coredns:v1.12.4", f.image(coreDNS))

	// Another manager's field is found by the interval check and held back, without an apply, until forced.
	edited := []kube.Conflict{{Field: "spec.template.spec.containers[0].command", Manager: "kubectl-edit"}}
	f.change(func(f *fakeManifests) { f.live[kubeProxy], f.conflicts[kubeProxy] = "kube-proxy:edited", edited })

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal([]manifest.ObjectDiff{{
			Object: kubeProxy, Action: "update", Diff: "-image: kube-proxy:edited\n+image: kube-proxy:v1.33.0\n",
			Conflicts: []string{"spec.template.spec.containers[0].command set by kubectl-edit"},
		}}, s.Diffs)
	})

	request(ctx, t, st, cluster.ManifestSyncRequestSpec{RequestID: "r2"})

	ms = assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal("r2", s.Request.ID)
		a.False(s.Request.Finished.IsZero())
	})
	assert.Equal(t, manifest.PhaseOutOfSync, ms.Phase)
	assert.Equal(t, "applied 0, held back 1, failed 0", ms.Request.Outcome)
	require.Len(t, ms.Diffs, 1)
	assert.Equal(t, manifest.ObjectHeldBack, ms.Diffs[0].Status)
	assert.Contains(t, ms.Diffs[0].Reason, "spec.template.spec.containers[0].command set by kubectl-edit")
	assert.Len(t, f.applied(), 1, "an object held back is not applied")
	assert.Equal(t, "kube-proxy:edited", f.image(kubeProxy))

	before, after = quietChecks(ctx, t, st, f, 3)
	assert.Equal(t, before, after, "later checks keep showing the object held back, and write nothing")

	request(ctx, t, st, cluster.ManifestSyncRequestSpec{RequestID: "r3", ForceConflicts: true})

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal("r3", s.Request.ID)
		a.Equal(manifest.PhaseUpToDate, s.Phase)
	})
	assert.Equal(t, fakeApply{Object: kubeProxy, Force: true}, f.applied()[1])
	assert.Equal(t, "kube-proxy:v1.33.0", f.image(kubeProxy))

	// A field another manager sets after the check is found as the apply runs: held back, not forced.
	f.change(func(f *fakeManifests) {
		f.rendered[kubeProxy] = "kube-proxy:v1.33.1"
		f.lateConflicts[kubeProxy] = []kube.Conflict{{Field: "spec.template.spec.containers[0].image", Manager: "helm"}}
	})
	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) { a.Equal(1, s.OutOfSync) })
	request(ctx, t, st, cluster.ManifestSyncRequestSpec{RequestID: "r4"})

	ms = assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal("r4", s.Request.ID)
		a.False(s.Request.Finished.IsZero())
	})
	assert.Equal(t, "applied 0, held back 1, failed 0", ms.Request.Outcome)
	require.Len(t, ms.Diffs, 1)
	assert.Equal(t, manifest.ObjectHeldBack, ms.Diffs[0].Status)
	assert.Contains(t, ms.Diffs[0].Reason, "spec.template.spec.containers[0].image set by helm")
	assert.Equal(t, fakeApply{Object: kubeProxy}, f.applied()[2], "applied without forcing")
	assert.Equal(t, "kube-proxy:v1.33.0", f.image(kubeProxy))

	// An object the API server refuses fails the apply, named with the reason; the others are applied.
	const denied = `deployments.apps "coredns" is forbidden: ValidatingAdmissionPolicy 'deny-coredns' denied request`

	f.change(func(f *fakeManifests) {
		delete(f.lateConflicts, kubeProxy)
		f.rendered[coreDNS], f.refused[coreDNS] = "coredns:v1.13.1", denied
	})
	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) { a.Equal(2, s.OutOfSync) })
	request(ctx, t, st, cluster.ManifestSyncRequestSpec{RequestID: "r5"})

	ms = assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal("r5", s.Request.ID)
		a.Equal(manifest.PhaseFailed, s.Phase)
	})
	assert.Equal(t, coreDNS+": "+denied, ms.Error)
	assert.Equal(t, "applied 1, held back 0, failed 1", ms.Request.Outcome)
	require.Len(t, ms.Diffs, 1)
	assert.Equal(t, manifest.ObjectFailed, ms.Diffs[0].Status)
	assert.Equal(t, "kube-proxy:v1.33.1", f.image(kubeProxy), "the other object is applied")
	assert.Equal(t, "coredns:v1.12.4", f.image(coreDNS))

	before, after = quietChecks(ctx, t, st, f, 3)
	assert.Equal(t, before, after, "later checks keep the failure and its reason, and write nothing")
}

// TestManifestSyncControllerAuto: in auto mode the diff a Talos upgrade brings is shown while the upgrade runs and
// applied by itself once it is Done, never over a conflict, and not again while the diff it left stays the same.
func TestManifestSyncControllerAuto(t *testing.T) {
	t.Parallel()

	f := newFakeManifests()
	ctx, st := startManifestSync(t, f, cluster.ManifestSyncAuto)

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) { a.Equal(manifest.PhaseUpToDate, s.Phase) })

	tus := upgrade.NewTalosUpgradeStatus("c1")
	*tus.TypedSpec() = upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseUpgrading, FromVersion: v13, ToVersion: v14}
	require.NoError(t, st.Create(ctx, tus, state.WithCreateOwner("TalosUpgradeStatusController")))

	// The upgraded control plane renders a newer CoreDNS while the upgrade runs; kube-proxy was edited by hand.
	f.change(func(f *fakeManifests) {
		f.rendered[coreDNS] = "coredns:v1.13.1"
		f.live[kubeProxy] = "kube-proxy:edited"
		f.conflicts[kubeProxy] = []kube.Conflict{{Field: "spec.template.spec.containers[0].command", Manager: "kubectl-edit"}}
	})
	observedVersion(ctx, t, st, "cp-1", v14)

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) { a.Equal(2, s.OutOfSync) })

	_, _ = quietChecks(ctx, t, st, f, 3)
	assert.Empty(t, f.applied(), "nothing is applied while the upgrade runs")

	_, err := safe.StateUpdateWithConflicts(ctx, st, tus.Metadata(), func(r *upgrade.TalosUpgradeStatus) error {
		r.TypedSpec().Phase = upgrade.PhaseDone

		return nil
	}, state.WithUpdateOwner("TalosUpgradeStatusController"))
	require.NoError(t, err)

	ms := assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal(controllers.AutoRequestBy, s.Request.By)
		a.False(s.Request.Finished.IsZero())
	})
	assert.Equal(t, []fakeApply{{Object: coreDNS}}, f.applied(), "CoreDNS applied, the edited kube-proxy not")
	assert.Equal(t, "coredns:v1.13.1", f.image(coreDNS))
	assert.Equal(t, manifest.PhaseOutOfSync, ms.Phase)
	require.Len(t, ms.Diffs, 1)
	assert.Equal(t, kubeProxy, ms.Diffs[0].Object)
	assert.Equal(t, manifest.ObjectHeldBack, ms.Diffs[0].Status)

	before, after := quietChecks(ctx, t, st, f, 3)
	assert.Equal(t, before, after)
	assert.Len(t, f.applied(), 1, "auto mode does not apply again what it held back")
}

// observedVersion changes machine id's observed Talos version, as MachineStatusController does after a reboot.
func observedVersion(ctx context.Context, t *testing.T, st state.State, id, version string) {
	t.Helper()

	_, err := safe.StateUpdateWithConflicts(ctx, st, observe.NewMachineStatus(id).Metadata(), func(r *observe.MachineStatus) error {
		r.TypedSpec().TalosVersion = version

		return nil
	}, state.WithUpdateOwner("MachineStatusController"))
	require.NoError(t, err)
}

// TestManifestSyncAutoPastLockedMachines: a Talos upgrade Blocked with nothing left but locked machines changes
// nothing until they are unlocked, so auto mode applies the diff its control planes brought; Blocked with work
// left (an etcd wait past its grace period) still counts as running, and nothing is applied.
func TestManifestSyncAutoPastLockedMachines(t *testing.T) {
	t.Parallel()

	f := newFakeManifests()
	ctx, st := startManifestSync(t, f, cluster.ManifestSyncAuto)

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) { a.Equal(manifest.PhaseUpToDate, s.Phase) })

	tus := upgrade.NewTalosUpgradeStatus("c1")
	*tus.TypedSpec() = upgrade.TalosUpgradeStatusSpec{
		Phase: upgrade.PhaseBlocked, FromVersion: v13, ToVersion: v14, Done: 1, Total: 3, WaitingOnLock: []string{"w-1"},
		Error: "control plane cp-2 waits for etcd", // work left beside the lock: still running
	}
	require.NoError(t, st.Create(ctx, tus, state.WithCreateOwner("TalosUpgradeStatusController")))

	f.change(func(f *fakeManifests) { f.rendered[coreDNS] = "coredns:v1.13.1" })
	observedVersion(ctx, t, st, "cp-1", v14)

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) { a.Equal(1, s.OutOfSync) })

	_, _ = quietChecks(ctx, t, st, f, 3)
	assert.Empty(t, f.applied(), "nothing is applied while the upgrade has work left")

	_, err := safe.StateUpdateWithConflicts(ctx, st, tus.Metadata(), func(r *upgrade.TalosUpgradeStatus) error {
		r.TypedSpec().Done, r.TypedSpec().Error = 2, "waiting for locked machines to be unlocked: w-1"

		return nil
	}, state.WithUpdateOwner("TalosUpgradeStatusController"))
	require.NoError(t, err)

	assertSync(ctx, t, st, func(s *manifest.ManifestSyncSpec, a *assert.Assertions) {
		a.Equal(controllers.AutoRequestBy, s.Request.By)
		a.False(s.Request.Finished.IsZero())
	})
	assert.Equal(t, []fakeApply{{Object: coreDNS}}, f.applied(), "applied while only the locked machine waits")
}
