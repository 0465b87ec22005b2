package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	talosclient "github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	talosconfigres "github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// The Kubernetes upgrade tests start on Talos 1.13, which runs Kubernetes 1.35 and 1.36, from the oldest of those.
const (
	kubeTalos = "1.13.4"
	kubeFrom  = "1.35.2"
	kubeNext  = "1.36.2"
	kubeLast  = "1.37.2" // Talos 1.14 runs it, 1.13 does not
)

// methodApply is the call every changing step of a Kubernetes upgrade makes.
const methodApply = "/machine.MachineService/ApplyConfiguration"

// kubeStaticPodRestart is how long a changed control-plane static pod (and the API endpoint, for kube-apiserver)
// stays down: short, so an upgrade takes seconds, yet long enough that the engine must wait for it.
const kubeStaticPodRestart = 200 * time.Millisecond

// startKubeBed starts a bed of one full cluster (3 control planes, 2 workers, real etcd and kube-apiserver) on
// Talos talosVersion and Kubernetes kubeFrom, logging the upgrade and the journal if the test fails, and waits until
// the engine observed every machine's Talos and kubelet versions (what a Kubernetes upgrade is planned from).
func startKubeBed(t testing.TB, talosVersion string, opts ...testbed.Option) *testbed.Bed {
	t.Helper()

	bed := startBed(t, append([]testbed.Option{testbed.WithFleetOptions(
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(2), talosemu.WithTalosVersion(talosVersion),
		talosemu.WithKubernetesVersion(kubeFrom), talosemu.WithRebootDowntime(rebootDowntime),
		talosemu.WithStaticPodRestart(kubeStaticPodRestart),
	)}, opts...)...)

	t.Cleanup(func() {
		if !t.Failed() {
			return
		}

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		for _, args := range [][]string{{"status", "c1"}, {"get", "kubernetesupgradestatus", "c1", "-o", "yaml"}} {
			out, err := exec.CommandContext(ctx, binary, cliArgs(bed, args...)...).CombinedOutput()
			t.Logf("upshift %s (%v):\n%s", strings.Join(args, " "), err, out)
		}

		for _, e := range bed.Fleet.Journal().Entries() {
			if e.Method == methodApply || strings.Contains(e.Method, "Pull") || e.Event != "" {
				t.Logf("%s %-8s %s%s mode=%s image=%s changes=%v error=%s", e.Time.Format(time.StampMicro), e.Node, e.Method, e.Event, e.Mode, e.Image, e.Changes, e.Error)
			}
		}
	})

	for _, n := range bed.Fleet.Nodes() {
		waitFor(t, bed.State(), observe.NewMachineStatus(n.Name()).Metadata(), time.Minute, n.Name()+" observed",
			func(s *observe.MachineStatus) bool {
				return sameVersion(s.TypedSpec().TalosVersion, n.Version()) && sameVersion(s.TypedSpec().KubeletVersion, kubeFrom)
			})
	}

	return bed
}

// waitKube waits until the cluster's KubernetesUpgradeStatus satisfies cond.
func waitKube(t testing.TB, bed *testbed.Bed, timeout time.Duration, what string, cond func(*upgrade.KubernetesUpgradeStatusSpec) bool) *upgrade.KubernetesUpgradeStatusSpec {
	t.Helper()

	return waitFor(t, bed.State(), upgrade.NewKubernetesUpgradeStatus("c1").Metadata(), timeout, what, func(r *upgrade.KubernetesUpgradeStatus) bool {
		return cond(r.TypedSpec())
	}).TypedSpec()
}

// kubePhaseIs matches a KubernetesUpgradeStatus in phase heading to version to.
func kubePhaseIs(phase upgrade.ClusterPhase, to string) func(*upgrade.KubernetesUpgradeStatusSpec) bool {
	return func(s *upgrade.KubernetesUpgradeStatusSpec) bool {
		return s.Phase == phase && sameVersion(s.ToVersion, to)
	}
}

// kubeCall is one accepted pull or ApplyConfiguration of the journal, read as a step of a Kubernetes upgrade.
type kubeCall struct {
	talosemu.Entry

	controlPlane bool
}

func (c kubeCall) pull() bool { return strings.Contains(c.Method, "Pull") }

// component is the one component an ApplyConfiguration changes ("" when it changes none, or several).
func (c kubeCall) component() string {
	if len(c.Changes) != 1 {
		return ""
	}

	return c.Changes[0].Component
}

func (c kubeCall) String() string {
	return fmt.Sprintf("%s %s %s%v", c.Time.Format(time.StampMicro), c.Node, c.Method, c.Changes)
}

// kubeCalls returns the pulls and ApplyConfigurations the nodes accepted from the journal's entry from on.
func kubeCalls(bed *testbed.Bed, from int) []kubeCall {
	cps := map[string]bool{}
	for _, n := range bed.Fleet.Nodes() {
		cps[n.Name()] = n.ControlPlane()
	}

	var out []kubeCall

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		if e.Error == "" && (e.Method == methodApply || strings.Contains(e.Method, "Pull")) {
			out = append(out, kubeCall{Entry: e, controlPlane: cps[e.Node]})
		}
	}

	return out
}

// appliedTwice lists the ApplyConfigurations that change nothing (the same config sent again) and the changes of a
// node's component toward the same image made more than once: a step's side effect sent twice.
func appliedTwice(calls []kubeCall) []string {
	var (
		out  []string
		seen = map[string]kubeCall{}
	)

	for _, c := range calls {
		if c.pull() {
			continue
		}

		if len(c.Changes) == 0 {
			out = append(out, "no change: "+c.String())
		}

		for _, ch := range c.Changes {
			key := c.Node + " " + ch.Component + " " + ch.To
			if first, ok := seen[key]; ok {
				out = append(out, fmt.Sprintf("again: %s (first: %s)", c, first))
			}

			seen[key] = c
		}
	}

	return out
}

// upgradeOrder checks the journal of one hop to version: pulls of the hop's images on every node before any
// change; then kube-apiserver, kube-controller-manager and kube-scheduler, one control plane after the other; then
// kube-proxy on every control plane; then the kubelets, every control plane before any worker.
func upgradeOrder(bed *testbed.Bed, calls []kubeCall, version string) error {
	tag := ":v" + strings.TrimPrefix(version, "v")
	pulled := map[string][]string{}

	var applies []kubeCall

	for _, c := range calls {
		switch {
		case c.pull() && len(applies) > 0:
			return fmt.Errorf("a pull after the first change: %s", c)
		case c.pull():
			pulled[c.Node] = append(pulled[c.Node], c.Image)
		default:
			applies = append(applies, c)
		}
	}

	var cps, workers []string

	for _, n := range bed.Fleet.Nodes() {
		want := []string{"kubelet"}
		if n.ControlPlane() {
			want = append(want, "kube-apiserver", "kube-controller-manager", "kube-scheduler")
			cps = append(cps, n.Name())
		} else {
			workers = append(workers, n.Name())
		}

		for _, component := range want {
			if !slices.ContainsFunc(pulled[n.Name()], func(image string) bool {
				return strings.Contains(image, "/"+component+tag)
			}) {
				return fmt.Errorf("%s did not pull %s%s before the first change (pulled %v)", n.Name(), component, tag, pulled[n.Name()])
			}
		}
	}

	// The order the steps must take, as node/component pairs; the control planes' order is the engine's.
	var got []string

	for _, c := range applies {
		if c.component() == "" || !strings.HasSuffix(c.Changes[0].To, tag) {
			return fmt.Errorf("an ApplyConfiguration that is not one step toward %s: %s", version, c)
		}

		got = append(got, c.Node+"/"+c.component())
	}

	var cpOrder []string

	for _, c := range applies {
		if c.controlPlane && c.component() == "kube-apiserver" {
			cpOrder = append(cpOrder, c.Node)
		}
	}

	if !sameSet(cpOrder, cps) {
		return fmt.Errorf("kube-apiserver changed on %v, want each of %v once", cpOrder, cps)
	}

	var want []string

	for _, cp := range cpOrder {
		want = append(want, cp+"/kube-apiserver", cp+"/kube-controller-manager", cp+"/kube-scheduler")
	}

	// kube-proxy and the kubelets: any order within a group (the kube-proxy step walks the control planes, workers
	// go in parallel), so the groups are compared as sets.
	groups := [][]string{want, nodeComponents(cps, "kube-proxy"), nodeComponents(cps, "kubelet"), nodeComponents(workers, "kubelet")}

	for _, group := range groups {
		if len(got) < len(group) {
			return fmt.Errorf("changes %v end before %v", got, group)
		}

		head := got[:len(group)]
		if !sameSet(head, group) || (len(group) == len(want) && !slices.Equal(head, want)) {
			return fmt.Errorf("changes %v, want %v next", head, group)
		}

		got = got[len(group):]
	}

	if len(got) > 0 {
		return fmt.Errorf("changes after the kubelets: %v", got)
	}

	return nil
}

// nodeComponents names component on every node.
func nodeComponents(nodes []string, component string) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n+"/"+component)
	}

	return out
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	return slices.Equal(sorted(a), sorted(b))
}

// requireKubernetesOn checks, in the real API server, that every control-plane mirror pod and the kube-proxy
// DaemonSet run version's images and that every Node reports version's kubelet.
func requireKubernetesOn(t testing.TB, bed *testbed.Bed, version string) {
	t.Helper()

	ctx := t.Context()
	client := kubeClient(t, bed, "c1")
	want := "v" + strings.TrimPrefix(version, "v")

	pods, err := client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: "tier=control-plane"})
	require.NoError(t, err)

	mirrors := 0

	for _, p := range pods.Items {
		if _, ok := p.Annotations[corev1.MirrorPodAnnotationKey]; !ok {
			continue
		}

		mirrors++

		for _, c := range p.Spec.Containers {
			assert.True(t, strings.HasSuffix(c.Image, ":"+want), "mirror pod %s runs %s, want %s", p.Name, c.Image, want)
		}
	}

	assert.Equal(t, 3*3, mirrors, "every control plane has its three mirror pods")

	ds, err := client.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, "kube-proxy", metav1.GetOptions{})
	require.NoError(t, err)

	for _, c := range ds.Spec.Template.Spec.Containers {
		assert.True(t, strings.HasSuffix(c.Image, ":"+want), "kube-proxy DaemonSet runs %s, want %s", c.Image, want)
	}

	assert.Equal(t, ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled, "the kube-proxy rollout is complete")

	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	assert.Len(t, nodes.Items, len(bed.Fleet.Nodes()))

	for _, n := range nodes.Items {
		assert.Equal(t, want, n.Status.NodeInfo.KubeletVersion, "kubelet version of %s", n.Name)
		assert.True(t, nodeReady(n), "%s is Ready", n.Name)
	}
}

func nodeReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}

	return false
}

// TestKubeUpgradeOneMinor upgrades 3 control planes and 2 workers from Kubernetes 1.35 to 1.36 with the CLI: the
// journal shows the pre-pulls on every node first, then the static pods control plane by control plane, then
// kube-proxy, then the kubelets (control planes first), and no ApplyConfiguration sent twice for a step; the real
// API server shows the new images and kubelet versions; the status is Done. Then the bootstrap manifests of the
// upgraded cluster (manifestsAfterKubeUpgrade).
func TestKubeUpgradeOneMinor(t *testing.T) {
	bed := startKubeBed(t, kubeTalos)
	from := len(bed.Fleet.Journal().Entries())

	t.Log(mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext))

	done := waitKube(t, bed, 90*time.Second, "the upgrade to finish", kubePhaseIs(upgrade.PhaseDone, kubeNext))
	assert.Equal(t, done.Total, done.Done, "every step is done")

	calls := kubeCalls(bed, from)
	require.NoError(t, upgradeOrder(bed, calls, kubeNext))
	assert.Empty(t, appliedTwice(calls), "no ApplyConfiguration sent twice for a step")

	requireKubernetesOn(t, bed, kubeNext)
	assert.Contains(t, mustCLI(t, bed, "status", "c1"), kubeNext)

	t.Run("manifests", func(t *testing.T) { manifestsAfterKubeUpgrade(t, bed, done) })
}

// TestKubePullFailThenRetry fails the pull of the target kubelet image on one worker: the upgrade fails at the
// pre-pull naming node and image, with no ApplyConfiguration sent; once the fault is cleared, `upshift upgrade
// retry` resumes it to Done, every step in order and none sent twice.
func TestKubePullFailThenRetry(t *testing.T) {
	const worker = "c1-w-2"

	image := "ghcr.io/siderolabs/kubelet:v" + kubeNext
	fault := talosemu.NodeFault{Node: worker, Fault: talosemu.FaultPullFail, Image: image}

	bed := startKubeBed(t, kubeTalos)
	require.NoError(t, bed.Fleet.SetNodeFault(t.Context(), fault))

	from := len(bed.Fleet.Journal().Entries())

	mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext)

	failed := waitKube(t, bed, time.Minute, "the upgrade to fail at the pre-pull", kubePhaseIs(upgrade.PhaseFailed, kubeNext))
	assert.Contains(t, failed.Error, worker, "the failure names the node")
	assert.Contains(t, failed.Error, image, "the failure names the image")

	var failedSteps []string

	for _, s := range failed.Steps {
		if s.State == upgrade.StepFailed {
			failedSteps = append(failedSteps, s.String())
		}
	}

	assert.Equal(t, []string{upgrade.KubernetesUpgradeStep{Kind: upgrade.StepPrePull, Machine: worker, Version: kubeNext}.String()},
		failedSteps, "the one failed step is the worker's pre-pull")

	status := mustCLI(t, bed, "status", "c1")
	assert.Contains(t, status, worker, "status names the node")
	assert.Contains(t, status, image, "status names the image")

	for _, c := range kubeCalls(bed, from) {
		assert.True(t, c.pull(), "nothing changed while the image cannot be pulled: %s", c)
	}

	require.NoError(t, bed.Fleet.ClearNodeFault(t.Context(), fault))
	t.Log(mustCLI(t, bed, "upgrade", "retry", "c1"))

	waitKube(t, bed, 90*time.Second, "the retried upgrade to finish", kubePhaseIs(upgrade.PhaseDone, kubeNext))

	calls := kubeCalls(bed, from)
	require.NoError(t, upgradeOrder(bed, calls, kubeNext))
	assert.Empty(t, appliedTwice(calls), "no ApplyConfiguration sent twice for a step")
	requireKubernetesOn(t, bed, kubeNext)
}

// TestKubeUpgradeHoldsTalosUpgrade requests a Talos upgrade of the cluster while its Kubernetes upgrade runs: the
// Talos upgrade waits, its status naming the Kubernetes upgrade, and installs nothing until the Kubernetes upgrade
// made its last change; then it runs to Done.
func TestKubeUpgradeHoldsTalosUpgrade(t *testing.T) {
	supported := talosemu.SupportedVersions()
	newest := supported[len(supported)-1]

	bed := startKubeBed(t, kubeTalos)
	from := len(bed.Fleet.Journal().Entries())

	mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext)
	waitKube(t, bed, time.Minute, "the Kubernetes upgrade to run", func(s *upgrade.KubernetesUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseUpgrading && sameVersion(s.ToVersion, kubeNext)
	})

	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)

	waiting := waitTalos(t, bed.State(), "c1", time.Minute, "the Talos upgrade to wait", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhasePending && sameVersion(s.ToVersion, newest) && s.YieldsTo != ""
	}).TypedSpec()
	assert.Contains(t, waiting.Reason, "Kubernetes upgrade to "+kubeNext, "the status says which upgrade it waits for")
	assert.Contains(t, waitStatus(t, bed, "c1", 30*time.Second, "Kubernetes upgrade to "+kubeNext), "waiting")

	waitKube(t, bed, 90*time.Second, "the Kubernetes upgrade to finish", kubePhaseIs(upgrade.PhaseDone, kubeNext))
	waitTalos(t, bed.State(), "c1", 2*time.Minute, "the Talos upgrade to finish", phaseIs(upgrade.PhaseDone, newest))

	var lastApply, firstInstall time.Time

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		switch {
		case e.Error != "":
			continue
		case e.Method == methodApply && len(e.Changes) > 0:
			lastApply = e.Time
		case isInstall(e) && firstInstall.IsZero():
			firstInstall = e.Time
		}
	}

	require.False(t, firstInstall.IsZero(), "the Talos upgrade installed")
	assert.True(t, firstInstall.After(lastApply), "the first install (%s) comes after the Kubernetes upgrade's last change (%s)",
		firstInstall.Format(time.StampMicro), lastApply.Format(time.StampMicro))

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, newest, n.Version(), n.Name())
	}
}

// removedGate is a kube-apiserver feature gate that Kubernetes 1.36 removes (go-kubernetes' pre-check tables).
const removedGate = "HonorPVReclaimPolicy"

// patchNode applies a strategic-merge config patch to a node's active machine config through the Talos API, as an
// operator does with `talosctl patch mc --mode no-reboot`.
func patchNode(t *testing.T, bed *testbed.Bed, node, patch string) {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	c, err := talosclient.New(ctx, talosclient.WithConfigFromFile(bed.Fleet.TalosconfigPath()))
	require.NoError(t, err)

	defer c.Close() //nolint:errcheck

	ctx = talosclient.WithNode(ctx, node)

	active, err := safe.StateGetByID[*talosconfigres.MachineConfig](ctx, c.COSI, talosconfigres.ActiveID)
	require.NoError(t, err)

	p, err := configpatcher.LoadPatch([]byte(patch))
	require.NoError(t, err)

	out, err := configpatcher.Apply(configpatcher.WithConfig(active.Provider()), []configpatcher.Patch{p})
	require.NoError(t, err)

	data, err := out.Bytes()
	require.NoError(t, err)

	_, err = c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_NO_REBOOT})
	require.NoError(t, err)
}

// TestKubePreCheckBlocksUntilSkipped sets a feature gate that the target removes on one control plane's
// kube-apiserver through a config patch: the upgrade stops at its pre-checks naming the check, the node and the
// gate, with nothing changed; `upshift upgrade kubernetes --skip-checks` lets it go on to Done, and the Cluster's
// history records the user who skipped the check.
func TestKubePreCheckBlocksUntilSkipped(t *testing.T) {
	const (
		node  = "c1-cp-2"
		check = "removed-feature-gates"
	)

	bed := startKubeBed(t, kubeTalos)
	patchNode(t, bed, node, "cluster:\n  apiServer:\n    extraArgs:\n      feature-gates: "+removedGate+"=true\n")

	from := len(bed.Fleet.Journal().Entries())

	mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext)

	blocked := waitKube(t, bed, time.Minute, "the pre-checks to stop the upgrade", func(s *upgrade.KubernetesUpgradeStatusSpec) bool {
		return (s.Phase == upgrade.PhaseFailed || s.Phase == upgrade.PhaseBlocked) && sameVersion(s.ToVersion, kubeNext)
	})
	for _, want := range []string{check, node, removedGate} {
		assert.Contains(t, blocked.Error, want, "the status names what failed")
	}

	i := slices.IndexFunc(blocked.PreChecks, func(p upgrade.PreCheck) bool { return p.Name == check })
	require.GreaterOrEqual(t, i, 0, "the check's result is recorded: %+v", blocked.PreChecks)
	assert.False(t, blocked.PreChecks[i].Passed)
	assert.Contains(t, blocked.PreChecks[i].Message, removedGate)
	assert.Contains(t, mustCLI(t, bed, "status", "c1"), removedGate, "status names the gate")

	for _, c := range kubeCalls(bed, from) {
		assert.True(t, c.pull(), "nothing changed while a pre-check fails: %s", c)
	}

	t.Log(mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext, "--skip-checks", check))

	done := waitKube(t, bed, 90*time.Second, "the upgrade to go on past the skipped check", kubePhaseIs(upgrade.PhaseDone, kubeNext))
	i = slices.IndexFunc(done.PreChecks, func(p upgrade.PreCheck) bool { return p.Name == check })
	require.GreaterOrEqual(t, i, 0)
	assert.True(t, done.PreChecks[i].Skipped, "the result says the check was skipped")

	calls := kubeCalls(bed, from)
	require.NoError(t, upgradeOrder(bed, calls, kubeNext))
	assert.Empty(t, appliedTwice(calls))
	requireKubernetesOn(t, bed, kubeNext)

	var skippedBy []string

	for _, w := range historyOf[clusterHistory](t, bed, cluster.ClusterType, "c1") {
		if slices.Contains(w.doc.Spec.SkipKubernetesChecks, check) {
			skippedBy = append(skippedBy, w.writer)
		}
	}

	require.NotEmpty(t, skippedBy, "the Cluster's history has the skip")
	assert.True(t, strings.HasPrefix(skippedBy[0], "user:"), "the skip was written by the API user, not %q", skippedBy[0])
	assert.Contains(t, mustCLI(t, bed, "history", "cluster", "c1"), skippedBy[0], "`upshift history` shows who")
}

// clusterHistory is the part of a logged Cluster the tests read.
type clusterHistory struct {
	Spec cluster.ClusterSpec `yaml:"spec"`
}

// TestKubeUpgradeTwoMinors upgrades a cluster on Talos 1.14 from Kubernetes 1.35 to 1.37: the plan is two full
// upgrades, 1.36 then 1.37, and the journal shows each hop's pre-pulls, static pods, kube-proxy and kubelets in
// order, the second hop only after the first one's last change.
func TestKubeUpgradeTwoMinors(t *testing.T) {
	bed := startKubeBed(t, "1.14.1")
	from := len(bed.Fleet.Journal().Entries())

	out := mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeLast, "--dry-run")
	assert.Contains(t, out, kubeNext, "the dry run shows the intermediate hop")

	mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeLast)

	done := waitKube(t, bed, 100*time.Second, "the upgrade to finish", kubePhaseIs(upgrade.PhaseDone, kubeLast))
	assert.Equal(t, []string{kubeNext, kubeLast}, done.Plan, "two upgrades, in order")
	assert.Equal(t, done.Total, done.Done)

	calls := kubeCalls(bed, from)
	second := slices.IndexFunc(calls, func(c kubeCall) bool { return c.pull() && strings.HasSuffix(c.Image, ":v"+kubeLast) })
	require.Positive(t, second, "the second hop pulled its images")
	require.NoError(t, upgradeOrder(bed, calls[:second], kubeNext), "the first hop")
	require.NoError(t, upgradeOrder(bed, calls[second:], kubeLast), "the second hop")
	assert.Empty(t, appliedTwice(calls))

	requireKubernetesOn(t, bed, kubeLast)
}

// TestKubeUnsupportedTargetRefused asks for Kubernetes 1.37 on a cluster with one worker still on Talos 1.13, which
// runs Kubernetes up to 1.36: the CLI refuses naming the node and its Talos version, the engine blocks the same
// request made through the API with the same reason, and the journal shows no call that changes anything.
func TestKubeUnsupportedTargetRefused(t *testing.T) {
	const behind = "c1-w-2"

	bed := startKubeBed(t, "1.14.1", testbed.WithFleetOptions(talosemu.WithNodeVersion(behind, kubeTalos)))
	from := len(bed.Fleet.Journal().Entries())

	_, errOut, err := cli(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeLast)
	require.Error(t, err, "the CLI refuses")
	t.Log(errOut)
	assert.Contains(t, errOut, behind, "the refusal names the node")
	assert.Contains(t, errOut, kubeTalos, "and its Talos version")

	setCluster(t, bed.State(), "c1", func(s *cluster.ClusterSpec) { s.KubernetesVersion = "v" + kubeLast })

	blocked := waitKube(t, bed, time.Minute, "the engine to refuse", kubePhaseIs(upgrade.PhaseBlocked, kubeLast))
	assert.Contains(t, blocked.Error, behind, "the status names the node")
	assert.Contains(t, blocked.Error, kubeTalos, "and its Talos version")

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		assert.False(t, e.Method == methodApply || strings.Contains(e.Method, "Pull") || isInstall(e) || e.Method == methodReboot,
			"no changing call: %s %s", e.Node, e.Method)
	}
}

// isKubeChange matches the journal entries that are a Kubernetes upgrade's changes and their consequences (a
// changing ApplyConfiguration, the API server's restart), so kills land right after them, before the engine
// recorded their outcome. Pulls are left out: a resumed pre-pull pulls again, so kills after pulls would pile up
// in the pre-pull.
func isKubeChange(e talosemu.Entry) bool {
	switch {
	case e.Error != "":
		return false
	case e.Method == methodApply:
		return len(e.Changes) > 0
	default:
		return e.Event == talosemu.EventAPIServerDown || e.Event == talosemu.EventAPIServerUp
	}
}

// isPull matches an accepted pull.
func isPull(e talosemu.Entry) bool { return e.Error == "" && strings.Contains(e.Method, "Pull") }

// kubeletsApplied reports whether every node of the bed was sent its kubelet change to version: the upgrade's
// last side effects.
func kubeletsApplied(bed *testbed.Bed, version string) bool {
	applied := map[string]bool{}

	for _, c := range kubeCalls(bed, 0) {
		if c.component() == "kubelet" && strings.HasSuffix(c.Changes[0].To, ":v"+version) {
			applied[c.Node] = true
		}
	}

	return len(applied) == len(bed.Fleet.Nodes())
}

// TestKubeCrashDuringUpgrade runs the engine as a child process and kills it with SIGKILL once in the pre-pull and
// then right after every one or two of the upgrade's changes, at least minKills times, from 1.35 to 1.36: the upgrade converges to Done, every
// step in order and none skipped, and no ApplyConfiguration was sent twice for a node's component.
func TestKubeCrashDuringUpgrade(t *testing.T) {
	bed := startKubeBed(t, kubeTalos, testbed.WithEngineProcess(testbed.SelfCommand()))
	from := len(bed.Fleet.Journal().Entries())

	mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0)) //nolint:gosec // test randomness

	// The first kill lands in the pre-pull (the cluster pulls 14 images), the others after one or two changes each
	// (17 ApplyConfigurations and 6 API server events), so at least 12 of them.
	kills := killEngineDuring(t, bed, func() bool { return kubeletsApplied(bed, kubeNext) }, func(i int) (int, func(talosemu.Entry) bool) {
		if i == 0 {
			return 1 + rng.IntN(14), isPull
		}

		return 1 + rng.IntN(2), isKubeChange
	})

	t.Logf("killed the engine %d times during the upgrade", kills)
	assert.GreaterOrEqual(t, kills, minKills, "the upgrade was long enough for %d kills", minKills)

	done := waitKube(t, bed, time.Minute, "the upgrade to converge", kubePhaseIs(upgrade.PhaseDone, kubeNext))
	assert.Equal(t, done.Total, done.Done, "every step is done")

	calls := kubeCalls(bed, from)
	require.NoError(t, upgradeOrder(bed, calls, kubeNext), "every step, in order")
	assert.Empty(t, appliedTwice(calls), "no ApplyConfiguration sent twice for a step")
	requireKubernetesOn(t, bed, kubeNext)
}

// TestKubeRevertHalfWay sets the version back once the first control plane's static pods changed: every component
// comes back to the old version, the revert changing back exactly what the upgrade had changed, one component at a
// time in the reverse order, each once.
func TestKubeRevertHalfWay(t *testing.T) {
	bed := startKubeBed(t, kubeTalos)
	from := len(bed.Fleet.Journal().Entries())

	mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	require.NoError(t, waitJournal(ctx, bed, from, len(kuberollout.StaticPods), func(e talosemu.Entry) bool {
		return e.Error == "" && e.Method == methodApply && len(e.Changes) > 0
	}), "the first control plane's static pods changed")

	t.Log(mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeFrom))

	done := waitKube(t, bed, 90*time.Second, "the revert to finish", kubePhaseIs(upgrade.PhaseDone, kubeFrom))
	assert.False(t, done.Reverting)

	var forward, back []string

	for _, c := range kubeCalls(bed, from) {
		switch {
		case c.pull():
		case c.component() == "":
			assert.Fail(t, "an ApplyConfiguration that is not one step", "%s", c)
		case strings.HasSuffix(c.Changes[0].To, ":v"+kubeNext):
			require.Empty(t, back, "an upgrade change after the revert started: %s", c)
			forward = append(forward, c.Node+"/"+c.component())
		default:
			back = append(back, c.Node+"/"+c.component())
		}
	}

	t.Logf("changed %v; changed back %v", forward, back)
	require.GreaterOrEqual(t, len(forward), len(kuberollout.StaticPods))
	assert.Equal(t, reversed(forward), back, "the revert changes back what changed, in the reverse order")
	assert.Empty(t, appliedTwice(kubeCalls(bed, from)))
	requireKubernetesOn(t, bed, kubeFrom)
}

// reversed returns a reversed copy of s.
func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)

	return out
}
