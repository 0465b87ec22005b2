package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/internal/tmpfs"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/store"
)

// TestFaultTalosAPIDownMidUpgrade takes a worker's Talos API down while its cluster's upgrade runs (the control
// plane upgrading, the worker next): the worker is admitted and waits through many refused tries,
// its status saying so (`get -o yaml` and `status`), without failing; once the API is back the upgrade finishes,
// each machine installed once.
func TestFaultTalosAPIDownMidUpgrade(t *testing.T) {
	bed := startLiteBed(t, 1, 1, "1.13.4")
	ctx, st := t.Context(), bed.State()
	waitObserved(t, bed, "1.13.4")

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v1.14.1" })
	waitFor(t, st, upgrade.NewMachineUpgradeStatus("c1-cp-1").Metadata(), time.Minute, "the control plane upgrading",
		func(s *upgrade.MachineUpgradeStatus) bool { return s.TypedSpec().Phase.InFlight() })
	require.NoError(t, bed.Fleet.SetFault(ctx, "c1-w-1", talosemu.FaultAPIDown))

	waiting := waitFor(t, st, upgrade.NewMachineUpgradeStatus("c1-w-1").Metadata(), time.Minute, "c1-w-1 waiting for its API",
		func(s *upgrade.MachineUpgradeStatus) bool { return s.TypedSpec().Waiting != "" })
	require.Contains(t, waiting.TypedSpec().Waiting, "unreachable")

	// The outage lasts many retries (the bed's retry delay is 100ms), well within the step timeout (30s).
	const refusals = 20

	refused := 0
	_, err := bed.Fleet.Journal().Wait(ctx, func(e talosemu.Entry) bool {
		if e.Node == "c1-w-1" && e.Error == "Unavailable" {
			refused++
		}

		return refused >= refusals
	})
	require.NoError(t, err)

	out := mustCLI(t, bed, "get", "machineupgradestatus", "c1-w-1", "-o", "yaml")
	require.Contains(t, out, "waiting: ")
	require.Contains(t, out, "unreachable")
	require.Contains(t, mustCLI(t, bed, "status", "c1"), "(retrying until ")

	require.NoError(t, bed.Fleet.ClearFault(ctx, "c1-w-1", talosemu.FaultAPIDown))
	waitTalos(t, st, "c1", 2*time.Minute, "the upgrade to finish", phaseIs(upgrade.PhaseDone, "1.14.1"))

	done, err := st.Get(ctx, upgrade.NewMachineUpgradeStatus("c1-w-1").Metadata())
	require.NoError(t, err)
	require.Empty(t, done.(*upgrade.MachineUpgradeStatus).TypedSpec().Waiting)                           //nolint:forcetypeassert
	require.Equal(t, 1, done.(*upgrade.MachineUpgradeStatus).TypedSpec().Attempt, "no retry was needed") //nolint:forcetypeassert

	installs := map[string]int{}

	for _, e := range bed.Fleet.Journal().Entries() {
		if isInstall(e) && e.Error == "" {
			installs[e.Node]++
		}
	}

	require.Equal(t, map[string]int{"c1-cp-1": 1, "c1-w-1": 1}, installs, "each machine installed once")
}

// TestFaultCorruptStateRefusedAtStart runs an upgrade on a lite bed, stops the engine, damages one page of its
// state file that holds live data, and starts the engine again, in process and as `upshift serve`: both refuse
// with a message naming the file and saying it is corrupt, and the file's bytes are the damaged bytes, untouched.
func TestFaultCorruptStateRefusedAtStart(t *testing.T) {
	bed := startLiteBed(t, 1, 1, "1.13.4")
	setCluster(t, bed.State(), "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v1.14.1" })
	waitTalos(t, bed.State(), "c1", 2*time.Minute, "the upgrade to finish", phaseIs(upgrade.PhaseDone, "1.14.1"))
	require.NoError(t, bed.StopEngine())

	path := filepath.Join(bed.EngineDir(), "state.db")
	damaged := damageLivePage(t, path)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	err := bed.StartEngine(ctx)
	require.ErrorIs(t, err, store.ErrCorrupt)
	require.ErrorContains(t, err, path)

	var stdout, stderr bytes.Buffer

	cmd := exec.CommandContext(ctx, binary, "serve", "--data-dir", bed.EngineDir(), "--listen", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.Error(t, cmd.Run(), "serve must refuse a corrupt state file: %s", stdout.String())
	require.Contains(t, stderr.String(), "state file is corrupt")
	require.Contains(t, stderr.String(), path)
	require.NotContains(t, stderr.String(), "goroutine ", "a refusal, not a crash")

	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(damaged, after), "the corrupt file must never be overwritten")
}

// damageLivePage flips the header of the first page whose damage the store's verifier notices (a page holding
// live data, not free space), writes the damaged file in place and returns its bytes.
func damageLivePage(t *testing.T, path string) []byte {
	t.Helper()

	good, err := os.ReadFile(path)
	require.NoError(t, err)

	const pageSize = 4096

	probe := filepath.Join(t.TempDir(), "probe.db")

	for page := 2; page < len(good)/pageSize; page++ {
		damaged := append([]byte(nil), good...)
		for i := range 16 {
			damaged[page*pageSize+i] ^= 0xff
		}

		require.NoError(t, os.WriteFile(probe, damaged, 0o600))

		if _, err := store.Verify(probe); err != nil {
			require.NoError(t, os.WriteFile(path, damaged, 0o600))

			return damaged
		}
	}

	require.FailNow(t, "no page of the state file holds live data")

	return nil
}

// TestFaultDiskFullEngineStaysUp runs a lite bed whose engine data dir is a small tmpfs and fills the device:
// a user's write through the CLI fails with the store's clear error, the engine stays up and `get` still reads,
// and once space is freed the requested upgrade runs to Done; after a restart everything acknowledged is there.
func TestFaultDiskFullEngineStaysUp(t *testing.T) {
	dir := t.TempDir()
	engineDir := filepath.Join(dir, "engine")
	require.NoError(t, os.MkdirAll(engineDir, 0o700))

	tmpfs.MountForTest(t, engineDir, 16<<20)

	bed := startBed(t, testbed.WithDir(dir), testbed.WithLite(), testbed.WithFleetOptions(
		talosemu.WithControlPlanes(1), talosemu.WithWorkers(1), talosemu.WithTalosVersion("1.13.4"),
		talosemu.WithRebootDowntime(0)))
	logOnFailure(t, bed, "c1")
	waitObserved(t, bed, "1.13.4")

	filler := fillDevice(t, engineDir)

	_, errOut, err := cli(t, bed, "upgrade", "talos", "c1", "--to", "v1.14.1")
	require.Error(t, err, "a write on a full device must fail")
	require.Contains(t, errOut, "no space left for the state file")

	out := mustCLI(t, bed, "get", "machines")
	require.Contains(t, out, "c1-w-1", "the engine serves reads while the device is full")

	require.NoError(t, os.Remove(filler))

	// The engine retries its kept commit about every second; until then a write is still refused.
	deadline := time.Now().Add(30 * time.Second)

	for {
		_, errOut, err = cli(t, bed, "upgrade", "talos", "c1", "--to", "v1.14.1")
		if err == nil {
			break
		}

		require.Contains(t, errOut, "no space left for the state file")
		require.True(t, time.Now().Before(deadline), "writes never resumed after space was freed: %s", errOut)
	}

	waitTalos(t, bed.State(), "c1", 2*time.Minute, "the upgrade to finish", phaseIs(upgrade.PhaseDone, "1.14.1"))

	require.NoError(t, bed.StopEngine())
	require.NoError(t, bed.StartEngine(t.Context()))

	done, err := bed.State().Get(t.Context(), upgrade.NewTalosUpgradeStatus("c1").Metadata())
	require.NoError(t, err)
	require.Equal(t, upgrade.PhaseDone, done.(*upgrade.TalosUpgradeStatus).TypedSpec().Phase) //nolint:forcetypeassert
}

// fillDevice writes a file in dir until its device has no space left, and returns the file's path.
func fillDevice(t *testing.T, dir string) string {
	t.Helper()

	path := filepath.Join(dir, "filler")

	f, err := os.Create(path)
	require.NoError(t, err)

	defer f.Close() //nolint:errcheck

	chunk := make([]byte, 64<<10)

	for {
		if _, err = f.Write(chunk); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)

			return path
		}
	}
}

// TestFaultAPIServerRestartMidDrain stops the cluster's kube-apiserver process while a PodDisruptionBudget
// (minAvailable 1) holds a worker's drain, and starts it again on the same port, certificates and etcd: meanwhile
// the worker stays Draining in its first attempt, its status waiting on the API; after the restart the pinned
// replica the budget protects is the very pod it was (never evicted: the budget was never passed over), and once
// the budget is removed the drain finishes, the upgrade ends Done in one attempt with one install, and the worker
// ends uncordoned.
func TestFaultAPIServerRestartMidDrain(t *testing.T) {
	const (
		worker       = "c1-w-1"
		from, target = "1.12.6", "1.13.4"
	)

	d := startDrainHeld(t, 1, worker, from, target)
	ctx, bed, st, client, start, protected := t.Context(), d.bed, d.bed.State(), d.client, d.start, d.protected
	machine := upgrade.NewMachineUpgradeStatus(worker).Metadata()

	require.NoError(t, bed.Fleet.StopAPIServer("c1"))

	waiting := waitFor(t, st, machine, time.Minute, worker+" waiting for the API server",
		func(s *upgrade.MachineUpgradeStatus) bool { return s.TypedSpec().Waiting != "" }).TypedSpec()
	require.Contains(t, waiting.Waiting, "the Kubernetes API does not answer")
	require.Equal(t, upgrade.MachineDraining, waiting.Phase)
	require.Equal(t, 1, waiting.Attempt)
	require.Empty(t, waiting.Error)

	require.NoError(t, bed.Fleet.StartAPIServer(ctx, "c1"))

	after := pinnedPod(t, client)
	require.Equal(t, protected.UID, after.UID, "the replica the budget protects was never evicted")
	require.Nil(t, after.DeletionTimestamp, "the replica the budget protects was never evicted")

	still, err := st.Get(ctx, machine)
	require.NoError(t, err)
	require.Equal(t, upgrade.MachineDraining, still.(*upgrade.MachineUpgradeStatus).TypedSpec().Phase, "the drain is still held by the budget") //nolint:forcetypeassert

	releaseDrain(t, client)
	waitTalos(t, st, "c1", 2*time.Minute, "the rollout done", phaseIs(upgrade.PhaseDone, target))

	done, err := st.Get(ctx, machine)
	require.NoError(t, err)

	spec := done.(*upgrade.MachineUpgradeStatus).TypedSpec() //nolint:forcetypeassert
	require.Equal(t, upgrade.MachineDone, spec.Phase)
	require.Equal(t, 1, spec.Attempt, "the outage cost no attempt")
	require.Empty(t, spec.Waiting)
	require.Equal(t, target, nodeVersion(t, bed, worker))
	require.False(t, nodeCordoned(t, client, worker), "%s ends uncordoned", worker)
	require.Equal(t, []string{target}, installedVersions(bed, worker, start), "one install")
}

// pinnedPod is the one replica of the pinned workload.
func pinnedPod(t *testing.T, client kubernetes.Interface) corev1.Pod {
	t.Helper()

	pods, err := client.CoreV1().Pods(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{LabelSelector: "app=" + pinned})
	require.NoError(t, err)
	require.Len(t, pods.Items, 1)

	return pods.Items[0]
}
