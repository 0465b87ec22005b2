package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// manifestCheckInterval is how often the test engine compares the bootstrap manifests with the live objects.
const manifestCheckInterval = 2 * time.Second

// TestManifestSync upgrades Talos to a release that renders a newer CoreDNS and Flannel, in manual mode, through the
// server-side apply path (Talos >= 1.13) and the legacy path (Talos < 1.13): the diff shows and nothing changes;
// `manifests sync` applies and waits; a field another manager changed is drift, named as a conflict, held back by a
// sync and overwritten by `sync --force-conflicts`.
func TestManifestSync(t *testing.T) {
	for _, tc := range []struct {
		name, from, to            string
		coreDNSBefore, coreDNSNow string
		legacy                    bool
	}{
		{name: "ssa", from: "1.13.4", to: "1.14.1", coreDNSBefore: "v1.13.1", coreDNSNow: "v1.14.7"},
		{name: "legacy", from: "1.11.6", to: "1.12.6", coreDNSBefore: "v1.12.3", coreDNSNow: "v1.12.4", legacy: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bed := startBed(t, testbed.WithUpgradeOptions(controllers.WithManifestCheckInterval(manifestCheckInterval)),
				testbed.WithFleetOptions(talosemu.WithControlPlanes(1), talosemu.WithWorkers(1),
					talosemu.WithTalosVersion(tc.from), talosemu.WithRebootDowntime(rebootDowntime)))
			logOnFailure(t, bed, "c1")

			st := bed.State()
			client := kubeClient(t, bed, "c1")

			waitSync(t, bed, "the first check: bootstrap objects as rendered", func(s *manifest.ManifestSyncSpec) bool {
				return s.Phase == manifest.PhaseUpToDate && !s.CheckedAt.IsZero()
			})

			setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + tc.to })
			waitTalos(t, st, "c1", 3*time.Minute, "the Talos upgrade", phaseIs(upgrade.PhaseDone, tc.to))

			// Done when 1: OutOfSync with the changed objects and a readable diff; the live CoreDNS is still old.
			ms := waitSync(t, bed, "the diff after the upgrade", func(s *manifest.ManifestSyncSpec) bool {
				return s.Phase == manifest.PhaseOutOfSync && hasDiff(s, "Deployment kube-system/coredns")
			})
			assert.Equal(t, tc.legacy, ms.Legacy)
			coreDNS := ms.Diffs[diffIndex(ms, "Deployment kube-system/coredns")]
			assert.Equal(t, "update", coreDNS.Action)
			assert.Contains(t, coreDNS.Diff, "-        image: registry.k8s.io/coredns/coredns:"+tc.coreDNSBefore)
			assert.Contains(t, coreDNS.Diff, "+        image: registry.k8s.io/coredns/coredns:"+tc.coreDNSNow)
			assert.Equal(t, "registry.k8s.io/coredns/coredns:"+tc.coreDNSBefore, liveImage(t, client, "coredns"), "nothing applied by itself")

			diff := mustCLI(t, bed, "manifests", "diff", "c1")
			assert.Contains(t, diff, "## Deployment kube-system/coredns (update)")

			status := mustCLI(t, bed, "status", "c1")
			assert.Contains(t, status, "`upshift manifests diff c1`")
			assert.Contains(t, status, "`upshift manifests sync c1`")

			// Done when 2: sync brings every object to the rendered state, waits, UpToDate, count 0; history shows it.
			out := mustCLI(t, bed, "manifests", "sync", "c1")
			assert.Contains(t, out, "Applied   Deployment kube-system/coredns (update)")
			assert.Contains(t, out, "UpToDate: applied")

			ms = syncOf(t, bed)
			assert.Equal(t, manifest.PhaseUpToDate, ms.Phase)
			assert.Zero(t, ms.OutOfSync)
			assert.Equal(t, "registry.k8s.io/coredns/coredns:"+tc.coreDNSNow, liveImage(t, client, "coredns"))

			deployment, err := client.AppsV1().Deployments("kube-system").Get(t.Context(), "coredns", metav1.GetOptions{})
			require.NoError(t, err)
			assert.Equal(t, *deployment.Spec.Replicas, deployment.Status.UpdatedReplicas, "the sync waited for the rollout")
			assert.Equal(t, *deployment.Spec.Replicas, deployment.Status.ReadyReplicas, "the sync waited for the rollout")

			history := mustCLI(t, bed, "history", "manifestsync", "c1")
			assert.Contains(t, history, "Applying")
			assert.Contains(t, history, "by user:") // the CLI's writer, as the event log names it

			// Done when 3: another field manager's change is drift, named as a conflict; sync holds it back;
			// --force-conflicts overwrites it.
			editKubeProxy(t, client)

			ms = waitSync(t, bed, "the drift to be found", func(s *manifest.ManifestSyncSpec) bool {
				return hasDiff(s, "DaemonSet kube-system/kube-proxy") &&
					len(s.Diffs[diffIndex(s, "DaemonSet kube-system/kube-proxy")].Conflicts) > 0
			})
			assert.Equal(t, []string{"spec.template.spec.containers[0].command set by kubectl-edit"},
				ms.Diffs[diffIndex(ms, "DaemonSet kube-system/kube-proxy")].Conflicts)

			out = mustCLI(t, bed, "manifests", "diff", "c1")
			assert.Contains(t, out, "CONFLICT DaemonSet kube-system/kube-proxy: spec.template.spec.containers[0].command set by kubectl-edit would be overwritten")

			out = mustCLI(t, bed, "manifests", "sync", "c1")
			assert.Contains(t, out, "HeldBack  DaemonSet kube-system/kube-proxy (update): fields set by another field manager")
			assert.Contains(t, liveCommand(t, client), "--v=4", "the edited field is left alone")

			out = mustCLI(t, bed, "manifests", "sync", "c1", "--force-conflicts")
			assert.Contains(t, out, "Applied   DaemonSet kube-system/kube-proxy (update)")
			assert.NotContains(t, liveCommand(t, client), "--v=4", "--force-conflicts overwrote the edit")
			assert.Equal(t, manifest.PhaseUpToDate, syncOf(t, bed).Phase)
		})
	}
}

// editKubeProxy changes the kube-proxy DaemonSet's command as `kubectl edit` would, under its own field manager.
func editKubeProxy(t *testing.T, client kubernetes.Interface) {
	t.Helper()

	ds, err := client.AppsV1().DaemonSets("kube-system").Get(t.Context(), "kube-proxy", metav1.GetOptions{})
	require.NoError(t, err)

	ds.Spec.Template.Spec.Containers[0].Command = append(ds.Spec.Template.Spec.Containers[0].Command, "--v=4")

	_, err = client.AppsV1().DaemonSets("kube-system").Update(t.Context(), ds, metav1.UpdateOptions{FieldManager: "kubectl-edit"})
	require.NoError(t, err)
}

func liveCommand(t *testing.T, client kubernetes.Interface) string {
	t.Helper()

	ds, err := client.AppsV1().DaemonSets("kube-system").Get(t.Context(), "kube-proxy", metav1.GetOptions{})
	require.NoError(t, err)

	return strings.Join(ds.Spec.Template.Spec.Containers[0].Command, " ")
}

func liveImage(t *testing.T, client kubernetes.Interface, deployment string) string {
	t.Helper()

	var d *appsv1.Deployment

	d, err := client.AppsV1().Deployments("kube-system").Get(t.Context(), deployment, metav1.GetOptions{})
	require.NoError(t, err)

	return d.Spec.Template.Spec.Containers[0].Image
}

func waitSync(t *testing.T, bed *testbed.Bed, what string, cond func(*manifest.ManifestSyncSpec) bool) *manifest.ManifestSyncSpec {
	t.Helper()

	return waitFor(t, bed.State(), manifest.NewManifestSync("c1").Metadata(), time.Minute, what, func(r *manifest.ManifestSync) bool {
		return cond(r.TypedSpec())
	}).TypedSpec()
}

func syncOf(t *testing.T, bed *testbed.Bed) *manifest.ManifestSyncSpec {
	t.Helper()

	ms, err := safe.StateGetByID[*manifest.ManifestSync](t.Context(), bed.State(), "c1")
	require.NoError(t, err)

	return ms.TypedSpec()
}

func diffIndex(s *manifest.ManifestSyncSpec, object string) int {
	for i, d := range s.Diffs {
		if d.Object == object {
			return i
		}
	}

	return -1
}

func hasDiff(s *manifest.ManifestSyncSpec, object string) bool { return diffIndex(s, object) >= 0 }
