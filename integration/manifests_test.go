package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/go-kubernetes/kubernetes/ssa"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kube"
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

// TestManifestSyncAuto upgrades Talos in auto mode to a release that renders a newer CoreDNS and Flannel, while a
// ValidatingAdmissionPolicy in the cluster refuses any change of the CoreDNS image: auto mode applies by itself once
// the upgrade is Done, and not before; Flannel is applied, CoreDNS refused. Back in manual mode, a sync applies an
// object deleted by hand and fails on CoreDNS, naming it and the API server's reason.
func TestManifestSyncAuto(t *testing.T) {
	bed := startBed(t, testbed.WithUpgradeOptions(controllers.WithManifestCheckInterval(manifestCheckInterval)),
		testbed.WithFleetOptions(talosemu.WithControlPlanes(1), talosemu.WithWorkers(1),
			talosemu.WithTalosVersion("1.13.4"), talosemu.WithRebootDowntime(rebootDowntime)))
	logOnFailure(t, bed, "c1")

	st := bed.State()
	client := kubeClient(t, bed, "c1")

	waitSync(t, bed, "the first check: bootstrap objects as rendered", func(s *manifest.ManifestSyncSpec) bool {
		return s.Phase == manifest.PhaseUpToDate && !s.CheckedAt.IsZero()
	})

	const frozen = "the CoreDNS image is frozen by the test"

	freezeCoreDNS(t, client, frozen)

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) {
		s.ManifestSync, s.TalosVersion = cluster.ManifestSyncAuto, "v1.14.1"
	})
	done := waitTalos(t, st, "c1", 3*time.Minute, "the Talos upgrade", phaseIs(upgrade.PhaseDone, "1.14.1"))

	// Done when 4: the sync runs by itself after the upgrade is Done, not before. It waits for the Flannel
	// rollout (each old pod's 30 s grace period), so it is given longer than a check.
	ms := waitSyncWithin(t, bed, 3*time.Minute, "the automatic sync", func(s *manifest.ManifestSyncSpec) bool {
		return s.Request.By == controllers.AutoRequestBy && !s.Request.Finished.IsZero()
	})
	assert.False(t, ms.Request.Started.Before(done.Metadata().Updated()),
		"the automatic sync started at %s, before the upgrade was Done at %s", ms.Request.Started, done.Metadata().Updated())
	assert.Equal(t, "ghcr.io/siderolabs/flannel:v0.28.0", liveDaemonSetImage(t, client, "kube-flannel"), "Flannel applied by itself")
	assert.Equal(t, "registry.k8s.io/coredns/coredns:v1.13.1", liveImage(t, client, "coredns"), "the API server refused CoreDNS")
	assert.Equal(t, manifest.PhaseFailed, ms.Phase)
	assert.Equal(t, "applied 1, held back 0, failed 1", ms.Request.Outcome, "%+v", ms.Diffs)
	require.True(t, hasDiff(ms, "Deployment kube-system/coredns"), "%+v", ms.Diffs)
	assert.Contains(t, ms.Diffs[diffIndex(ms, "Deployment kube-system/coredns")].Refused, frozen)
	assert.Equal(t, 1, ms.OutOfSync, "%+v", ms.Diffs)

	// Done when 5: an object the API server refuses fails the sync, named with the reason; the others are applied.
	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.ManifestSync = cluster.ManifestSyncManual })
	require.NoError(t, client.CoreV1().ServiceAccounts("kube-system").Delete(t.Context(), "flannel", metav1.DeleteOptions{}))
	waitSync(t, bed, "the deleted ServiceAccount to be found", func(s *manifest.ManifestSyncSpec) bool {
		return hasDiff(s, "ServiceAccount kube-system/flannel")
	})

	out, errOut, err := cli(t, bed, "manifests", "sync", "c1")
	t.Logf("upshift manifests sync c1:\n%s%s", out, errOut)
	require.Error(t, err, "a failed sync exits non-zero: %s", out)
	assert.Contains(t, out, "Applied   ServiceAccount kube-system/flannel (create)")
	assert.Contains(t, out, "Failed    Deployment kube-system/coredns")
	assert.Contains(t, errOut, frozen)

	ms = syncOf(t, bed)
	assert.Equal(t, manifest.PhaseFailed, ms.Phase)
	assert.Contains(t, ms.Error, "Deployment kube-system/coredns: ")
	assert.Contains(t, ms.Error, frozen)
	assert.Equal(t, "applied 1, held back 0, failed 1", ms.Request.Outcome)

	_, err = client.CoreV1().ServiceAccounts("kube-system").Get(t.Context(), "flannel", metav1.GetOptions{})
	assert.NoError(t, err, "the other object was applied")
	assert.Equal(t, "registry.k8s.io/coredns/coredns:v1.13.1", liveImage(t, client, "coredns"))
}

// freezeCoreDNS makes the API server refuse any change of the CoreDNS Deployment's image, with message, and waits
// until the policy is in force.
func freezeCoreDNS(t *testing.T, client kubernetes.Interface, message string) {
	t.Helper()

	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "freeze-coredns"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{"apps"}, APIVersions: []string{"v1"}, Resources: []string{"deployments"}},
				},
			}}},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "object.metadata.name != 'coredns' || " +
					"object.spec.template.spec.containers[0].image == oldObject.spec.template.spec.containers[0].image",
				Message: message,
			}},
		},
	}
	_, err := client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(t.Context(), policy, metav1.CreateOptions{})
	require.NoError(t, err)

	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "freeze-coredns"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: "freeze-coredns", ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	_, err = client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(t.Context(), binding, metav1.CreateOptions{})
	require.NoError(t, err)

	// The API server loads policies in the background: a dry-run image change shows when it refuses.
	require.Eventually(t, func() bool {
		d, err := client.AppsV1().Deployments("kube-system").Get(t.Context(), "coredns", metav1.GetOptions{})
		require.NoError(t, err)

		d.Spec.Template.Spec.Containers[0].Image += "-changed"
		_, err = client.AppsV1().Deployments("kube-system").Update(t.Context(), d, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})

		return err != nil && strings.Contains(err.Error(), message)
	}, time.Minute, 100*time.Millisecond, "the policy in force")
}

func liveDaemonSetImage(t *testing.T, client kubernetes.Interface, name string) string {
	t.Helper()

	ds, err := client.AppsV1().DaemonSets("kube-system").Get(t.Context(), name, metav1.GetOptions{})
	require.NoError(t, err)

	return ds.Spec.Template.Spec.Containers[0].Image
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

	return waitSyncWithin(t, bed, time.Minute, what, cond)
}

// waitSyncWithin waits up to timeout until c1's ManifestSync passes cond.
func waitSyncWithin(t testing.TB, bed *testbed.Bed, timeout time.Duration, what string, cond func(*manifest.ManifestSyncSpec) bool) *manifest.ManifestSyncSpec {
	t.Helper()

	return waitFor(t, bed.State(), manifest.NewManifestSync("c1").Metadata(), timeout, what, func(r *manifest.ManifestSync) bool {
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

// manifestsAfterKubeUpgrade checks the bootstrap manifests of a cluster whose Kubernetes upgrade has just ended
// (done; manual mode, the default check interval of minutes): the engine computes the diff against what the control
// planes re-rendered for the new version at once, and finds nothing out of sync. The one object the emulated
// releases render from the Kubernetes version is the kube-proxy DaemonSet, which the upgrade rolls out itself, and
// its apply keeps the object in Talos' inventory (its owning-inventory annotation), so no sync is owed after it. It
// runs on the cluster TestKubeUpgradeOneMinor upgraded, so it costs no cluster of its own.
func manifestsAfterKubeUpgrade(t *testing.T, bed *testbed.Bed, done *upgrade.KubernetesUpgradeStatusSpec) {
	t.Helper()

	var finished time.Time

	for _, s := range done.Steps {
		if s.FinishedAt.After(finished) {
			finished = s.FinishedAt
		}
	}

	ms := waitSync(t, bed, "the diff computed after the Kubernetes upgrade", func(s *manifest.ManifestSyncSpec) bool {
		return !s.CheckedAt.Before(finished) && s.Phase != manifest.PhaseApplying
	})

	assert.Equal(t, manifest.PhaseUpToDate, ms.Phase, "%+v", ms.Diffs)
	assert.Zero(t, ms.OutOfSync)
	assert.Empty(t, ms.Diffs)

	ds, err := kubeClient(t, bed, "c1").AppsV1().DaemonSets("kube-system").Get(t.Context(), "kube-proxy", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "registry.k8s.io/kube-proxy:v"+kubeNext, ds.Spec.Template.Spec.Containers[0].Image)
	assert.Equal(t, kube.InventoryName, ds.Annotations[ssa.InventoryAnnotationKey], "the upgrade's apply keeps kube-proxy in Talos' inventory")
	assert.Contains(t, mustCLI(t, bed, "manifests", "diff", "c1"), "UpToDate")
}
