package integration

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// The lock tests upgrade lite fleets over one hop of the lifecycle flow, the shortest rollout that shows the rules.
const (
	lockFrom = "1.13.4"
	lockTo   = "1.14.1"
)

// TestLockTalosRollout: 3 control planes and 4 workers, 2 of them locked, upgraded: the 5 others upgrade, the 2
// locked get no call that changes them, and the rollout is Blocked naming both, with each one's pending change in
// `upshift status`; unlocked one by one, each upgrades next, and the rollout ends Done. Locking a control plane is
// refused over gRPC too, and nothing is written.
func TestLockTalosRollout(t *testing.T) {
	bed := startLiteBed(t, 3, 4, lockFrom)
	st := bed.State()
	locked := []string{"c1-w-2", "c1-w-4"}

	waitObserved(t, bed, lockFrom)

	for _, id := range locked {
		mustCLI(t, bed, "lock", id, "--reason", "staged rollout")
	}

	c, err := bed.Dial()
	require.NoError(t, err)

	defer c.Close() //nolint:errcheck

	err = c.State().Create(t.Context(), cluster.NewMachineLock("c1-cp-2"))
	require.Error(t, err, "gRPC refuses a lock on a control plane")
	assert.Contains(t, err.Error(), "control planes cannot be locked")

	_, err = c.State().Get(t.Context(), cluster.NewMachineLock("c1-cp-2").Metadata())
	require.Error(t, err, "no lock was written")

	from := len(bed.Fleet.Journal().Entries())
	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+lockTo)

	blocked := waitTalos(t, st, "c1", rolloutTimeout, "the rollout blocked on the locks", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked && sameVersion(s.ToVersion, lockTo)
	}).TypedSpec()
	assert.Equal(t, locked, blocked.WaitingOnLock, "both locked machines are named")
	assert.Equal(t, 5, blocked.Done)
	assert.Contains(t, blocked.Error, "locked")

	for _, id := range nodesExcept(bed, locked) {
		assert.Equal(t, lockTo, nodeVersion(t, bed, id), id)
	}

	for _, id := range locked {
		assert.Equal(t, lockFrom, nodeVersion(t, bed, id), id)
		assert.Empty(t, changingCalls(bed, id, from), "nothing that changes %s is sent while it is locked", id)
	}

	status := mustCLI(t, bed, "status", "c1")
	assert.Contains(t, status, "2 machines waiting on a lock: c1-w-2, c1-w-4")
	assert.Equal(t, 2, strings.Count(status, "pending: talos v"+lockFrom+" -> v"+lockTo), "each locked machine's pending change:\n%s", status)

	// Unlocked one at a time: each upgrades next, the other staying as it was.
	unlockedAt := len(bed.Fleet.Journal().Entries())
	mustCLI(t, bed, "unlock", "c1-w-4")
	waitTalos(t, st, "c1", rolloutTimeout, "c1-w-4 upgraded, c1-w-2 still waited for", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked && s.Done == 6 && slices.Equal(s.WaitingOnLock, []string{"c1-w-2"})
	})
	assert.Equal(t, lockTo, nodeVersion(t, bed, "c1-w-4"))
	assert.Equal(t, []string{"c1-w-4"}, installedNodes(bed, unlockedAt), "only the unlocked machine was installed")

	mustCLI(t, bed, "unlock", "c1-w-2")

	done := waitTalos(t, st, "c1", rolloutTimeout, "the rollout done", phaseIs(upgrade.PhaseDone, lockTo)).TypedSpec()
	assert.Equal(t, 7, done.Done)
	assert.Empty(t, done.WaitingOnLock)
	assert.Equal(t, lockTo, nodeVersion(t, bed, "c1-w-2"))
}

// TestLockParallelismAndUnlockOrder: parallelism 2 with the first 2 of 6 workers locked: 2 unlocked workers are in
// flight at once (their install-to-reboot intervals overlap in the journal), so the locked ones hold no slot. Then,
// one slot, the rollout paused: c1-w-2 is unlocked before c1-w-1, and once resumed c1-w-2 goes first, against the
// natural order: the machines unlocked get their change in the order they were unlocked.
func TestLockParallelismAndUnlockOrder(t *testing.T) {
	bed := startLiteBed(t, 3, 6, lockFrom, talosemu.WithRebootDowntime(rebootDowntime))
	st := bed.State()
	locked := []string{"c1-w-1", "c1-w-2"}

	waitObserved(t, bed, lockFrom)

	for _, id := range locked {
		mustCLI(t, bed, "lock", id)
	}

	from := len(bed.Fleet.Journal().Entries())

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) {
		s.Parallelism = "2"
		s.TalosVersion = "v" + lockTo
	})

	waitTalos(t, st, "c1", rolloutTimeout, "the rollout blocked on the locks", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked && sameVersion(s.ToVersion, lockTo) && slices.Equal(s.WaitingOnLock, locked)
	})

	r := readRollout(bed.Fleet)
	workers := func(iv interval) bool { return !r.controlPlanes[iv.node] && sameVersion(iv.version, lockTo) }
	assert.Equal(t, 2, maxConcurrent(r.installs(), workers), "2 unlocked workers in flight at once beside 2 locked ones")

	for _, id := range locked {
		assert.Empty(t, changingCalls(bed, id, from), "nothing that changes %s is sent while it is locked", id)
	}

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) {
		s.Parallelism = "1"
		s.Paused = true
	})
	waitTalos(t, st, "c1", time.Minute, "the rollout paused", phaseIs(upgrade.PhasePaused, lockTo))

	unlockedAt := len(bed.Fleet.Journal().Entries())
	mustCLI(t, bed, "unlock", "c1-w-2")
	mustCLI(t, bed, "unlock", "c1-w-1")

	waitTalos(t, st, "c1", time.Minute, "both unlocks remembered, in unlock order", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return slices.Equal(s.Unlocked, []string{"c1-w-2", "c1-w-1"})
	})
	assert.Empty(t, installedNodes(bed, unlockedAt), "nothing starts while paused")

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.Paused = false })
	waitTalos(t, st, "c1", rolloutTimeout, "the rollout done", phaseIs(upgrade.PhaseDone, lockTo))

	assert.Equal(t, []string{"c1-w-2", "c1-w-1"}, installedNodes(bed, unlockedAt), "unlocked first, installed first")
}

// TestLockKubernetesUpgrade: a Kubernetes upgrade with a locked worker: the locked worker keeps its kubelet (no
// call reaches it, not even the pre-pull, which is skipped) while every other step runs; the upgrade is Blocked naming it, and status shows its
// pending change. Blocked on the lock, it holds back no other rollout: a Talos upgrade asked for then upgrades every
// unlocked machine and waits on the same lock. Unlocked, the worker gets both, and both upgrades are Done.
func TestLockKubernetesUpgrade(t *testing.T) {
	const worker = "c1-w-1"

	bed := startKubeBed(t, kubeTalos)
	mustCLI(t, bed, "lock", worker)

	from := len(bed.Fleet.Journal().Entries())
	mustCLI(t, bed, "upgrade", "kubernetes", "c1", "--to", "v"+kubeNext)

	blocked := waitKube(t, bed, 2*time.Minute, "the upgrade blocked on the lock", func(s *upgrade.KubernetesUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked && sameVersion(s.ToVersion, kubeNext)
	})
	assert.Equal(t, []string{worker}, blocked.WaitingOnLock)
	assert.Equal(t, blocked.Total-1, blocked.Done, "every step but the locked worker's kubelet is done (its pre-pull skipped)")

	for _, c := range kubeCalls(bed, from) {
		assert.NotEqual(t, worker, c.Node, "nothing reaches the locked worker, not even a pre-pull: %s", c)
	}

	waitFor(t, bed.State(), observe.NewMachineStatus("c1-w-2").Metadata(), time.Minute, "c1-w-2's kubelet upgraded",
		func(s *observe.MachineStatus) bool { return sameVersion(s.TypedSpec().KubeletVersion, kubeNext) })

	ms, err := bed.State().Get(t.Context(), observe.NewMachineStatus(worker).Metadata())
	require.NoError(t, err)
	assert.True(t, sameVersion(ms.(*observe.MachineStatus).TypedSpec().KubeletVersion, kubeFrom), "the locked worker keeps its kubelet") //nolint:forcetypeassert

	status := mustCLI(t, bed, "status", "c1")
	assert.Contains(t, status, "1 machines waiting on a lock: "+worker)
	assert.Contains(t, status, "pending: kubernetes "+kubeFrom+" -> "+kubeNext)

	// The upgrade waiting on the lock holds back no other rollout: a Talos upgrade asked for now upgrades every
	// unlocked machine and waits on the same lock.
	supported := talosemu.SupportedVersions()
	newest := supported[len(supported)-1]
	beforeTalos := len(bed.Fleet.Journal().Entries())

	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)
	talosBlocked := waitTalos(t, bed.State(), "c1", 3*time.Minute, "the Talos upgrade past the lock", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked && sameVersion(s.ToVersion, newest)
	}).TypedSpec()
	assert.Equal(t, []string{worker}, talosBlocked.WaitingOnLock)

	for _, n := range bed.Fleet.Nodes() {
		if n.Name() != worker {
			assert.Equal(t, newest, n.Version(), n.Name())
		}
	}

	for _, e := range bed.Fleet.Journal().Entries()[beforeTalos:] {
		assert.False(t, e.Node == worker && isInstall(e), "no install reaches the locked worker: %+v", e)
	}

	mustCLI(t, bed, "unlock", worker)

	waitKube(t, bed, 2*time.Minute, "the upgrade done once unlocked", kubePhaseIs(upgrade.PhaseDone, kubeNext))
	waitTalos(t, bed.State(), "c1", 2*time.Minute, "the Talos upgrade done once unlocked", phaseIs(upgrade.PhaseDone, newest))
	assert.Empty(t, appliedTwice(kubeCalls(bed, from)), "no ApplyConfiguration sent twice for a step")
	requireKubernetesOn(t, bed, kubeNext)
}

// TestLockDuringDrain locks a worker while a PodDisruptionBudget holds its drain, then lets the drain finish. On the
// legacy flow (1.12 -> 1.13) the install comes after the drain, so the worker has not passed the point of no return
// (rollout.HoldsForLock): it finishes the drain, is uncordoned, is never installed, and holds in Queued (Held) on
// its old version, the rollout Blocked on it; unlocked, it upgrades in the same attempt and ends uncordoned. (On the
// lifecycle flow the install is staged before the drain, so such a worker finishes its upgrade: the controller test
// TestRolloutLockedDuringDrain covers both flows.)
func TestLockDuringDrain(t *testing.T) {
	const (
		worker       = "c1-w-1"
		from, target = "1.12.6", "1.13.4"
	)

	d := startDrainHeld(t, 2, worker, from, target)
	bed, st, client, start := d.bed, d.bed.State(), d.client, d.start

	mustCLI(t, bed, "lock", worker)
	waitFor(t, st, observe.NewClusterSummary("c1").Metadata(), time.Minute, "the engine's controllers to see the lock",
		func(s *observe.ClusterSummary) bool { return slices.Contains(s.TypedSpec().Locked, worker) })

	releaseDrain(t, client)

	held := waitFor(t, st, upgrade.NewMachineUpgradeStatus(worker).Metadata(), time.Minute, worker+" held before its install",
		func(s *upgrade.MachineUpgradeStatus) bool { return s.TypedSpec().Phase == upgrade.MachineQueued }).TypedSpec()
	assert.True(t, held.Held)
	assert.False(t, held.Cordoned)
	assert.False(t, nodeCordoned(t, client, worker), "%s is left uncordoned", worker)
	assert.Empty(t, changingCalls(bed, worker, start), "%s was never installed nor rebooted", worker)
	assert.Equal(t, from, nodeVersion(t, bed, worker))

	waitTalos(t, st, "c1", 2*time.Minute, "the rollout blocked on the held worker", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked && slices.Equal(s.WaitingOnLock, []string{worker})
	})
	assert.Empty(t, changingCalls(bed, worker, start), "%s holds while locked", worker)

	mustCLI(t, bed, "unlock", worker)
	waitTalos(t, st, "c1", 2*time.Minute, "the rollout done", phaseIs(upgrade.PhaseDone, target))

	mus, err := st.Get(t.Context(), upgrade.NewMachineUpgradeStatus(worker).Metadata())
	require.NoError(t, err)

	spec := mus.(*upgrade.MachineUpgradeStatus).TypedSpec() //nolint:forcetypeassert
	assert.Equal(t, upgrade.MachineDone, spec.Phase)
	assert.Equal(t, 1, spec.Attempt, "holding for a lock is not a new attempt")
	assert.Equal(t, target, nodeVersion(t, bed, worker))
	assert.False(t, nodeCordoned(t, client, worker), "%s ends uncordoned", worker)
	assert.Equal(t, []string{target}, installedVersions(bed, worker, start), "one install, after the unlock")
}

// pinned is a Deployment of one replica pinned to one node, and the PodDisruptionBudget that holds its drain.
const pinned = "pinned"

// pinWorkload runs one replica of a Deployment on node, and waits until it is available.
func pinWorkload(t *testing.T, client kubernetes.Interface, node string) {
	t.Helper()

	labels := map[string]string{"app": pinned}
	replicas, grace := int32(1), int64(1)

	_, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Create(t.Context(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: pinned},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					NodeSelector:                  map[string]string{corev1.LabelHostname: node},
					Containers:                    []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
				},
			},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	w, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + pinned})
	require.NoError(t, err)

	defer w.Stop()

	for ev := range w.ResultChan() {
		if d, ok := ev.Object.(*appsv1.Deployment); ok && d.Status.AvailableReplicas == 1 {
			return
		}
	}

	require.FailNow(t, "the pinned workload did not become available", "%v", ctx.Err())
}

// drainHeld is a cluster whose worker is Draining, its drain held by a PodDisruptionBudget over a replica pinned to
// it (startDrainHeld).
type drainHeld struct {
	bed       *testbed.Bed
	client    kubernetes.Interface
	start     int        // the journal's length before the upgrade was asked for
	protected corev1.Pod // the pinned replica the budget protects, as it was before the drain
}

// startDrainHeld starts one control plane and workers workers on Talos from (real etcd and kube-apiserver), pins a
// replica to worker under a budget that lets none go, upgrades to target with a 3-minute drain timeout and returns
// once worker is Draining: the set-up of every test about what happens while a drain waits.
func startDrainHeld(t *testing.T, workers int, worker, from, target string) drainHeld {
	t.Helper()

	bed := startBed(t, testbed.WithFleetOptions(
		talosemu.WithControlPlanes(1), talosemu.WithWorkers(workers), talosemu.WithTalosVersion(from),
		talosemu.WithRebootDowntime(rebootDowntime),
	))
	logOnFailure(t, bed, "c1")

	st := bed.State()
	client := kubeClient(t, bed, "c1")

	pinWorkload(t, client, worker)
	waitObserved(t, bed, from)

	d := drainHeld{bed: bed, client: client, protected: pinnedPod(t, client), start: len(bed.Fleet.Journal().Entries())}

	holdDrain(t, client)
	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) {
		s.TalosVersion = "v" + target
		s.DrainTimeout = "3m"
	})

	waitFor(t, st, upgrade.NewMachineUpgradeStatus(worker).Metadata(), 2*time.Minute, worker+" draining",
		func(s *upgrade.MachineUpgradeStatus) bool { return s.TypedSpec().Phase == upgrade.MachineDraining })

	return d
}

// holdDrain makes the pinned replica unevictable (a budget of at least one available).
func holdDrain(t *testing.T, client kubernetes.Interface) {
	t.Helper()

	minAvailable := intstr.FromInt32(1)
	_, err := client.PolicyV1().PodDisruptionBudgets(metav1.NamespaceDefault).Create(t.Context(), &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: pinned},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &minAvailable, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": pinned}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// releaseDrain removes the budget, so the drain held by it finishes.
func releaseDrain(t *testing.T, client kubernetes.Interface) {
	t.Helper()

	require.NoError(t, client.PolicyV1().PodDisruptionBudgets(metav1.NamespaceDefault).Delete(t.Context(), pinned, metav1.DeleteOptions{}))
}

func nodeCordoned(t *testing.T, client kubernetes.Interface, node string) bool {
	t.Helper()

	n, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	require.NoError(t, err)

	return n.Spec.Unschedulable
}

// installedNodes lists the nodes sent an install from the from-th journal entry on, in the order of their first one.
func installedNodes(bed *testbed.Bed, from int) []string {
	var out []string

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		if isInstall(e) && e.Error == "" && !slices.Contains(out, e.Node) {
			out = append(out, e.Node)
		}
	}

	return out
}
