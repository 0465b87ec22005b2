package integration

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	kfields "k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/server"
)

// startImportBed starts an emulated cluster of 3 control planes and 3 workers (real etcd, real kube-apiserver) on
// Talos 1.12.6, joined (every Node Ready), and an engine in a child process that knows nothing of it.
func startImportBed(t *testing.T) *testbed.Bed {
	t.Helper()

	bed := startBed(t, testbed.WithEngineProcess(testbed.SelfCommand()), testbed.WithoutRegister(), testbed.WithFleetOptions(
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(3), talosemu.WithTalosVersion("1.12.6"),
		talosemu.WithRebootDowntime(rebootDowntime),
	))
	logOnFailure(t, bed, "c1")

	// The kubelets register their Nodes in the background once the fleet runs; an import wants the cluster joined.
	nodes, err := bed.Fleet.ClusterNodes("c1")
	require.NoError(t, err)

	client := kubeClient(t, bed, "c1")
	for _, n := range nodes {
		waitNodeJoined(t, client, n.Name())
	}

	return bed
}

// importChanges are the machine lines an import printed (added, removed, changed).
func importChanges(out string) []string {
	var changes []string

	for line := range strings.Lines(out) {
		for _, kind := range []string{"added machine ", "removed machine ", "changed machine "} {
			if strings.HasPrefix(line, kind) {
				changes = append(changes, strings.TrimSpace(line))
			}
		}
	}

	return changes
}

// importedMachines are the engine's Machines of cluster c1, by name.
func importedMachines(t *testing.T, st state.State) map[string]cluster.MachineSpec {
	t.Helper()

	list, err := safe.StateListAll[*cluster.Machine](t.Context(), st)
	require.NoError(t, err)

	out := map[string]cluster.MachineSpec{}

	for m := range list.All() {
		if m.TypedSpec().Cluster == "c1" {
			out[m.Metadata().ID()] = *m.TypedSpec()
		}
	}

	return out
}

// assertMatchesFleet checks that the engine's Machines are the emulated nodes, minus missing: same names, roles
// and Talos API endpoint.
func assertMatchesFleet(t *testing.T, bed *testbed.Bed, missing ...string) {
	t.Helper()

	got := importedMachines(t, bed.State())
	nodes, err := bed.Fleet.ClusterNodes("c1")
	require.NoError(t, err)

	want := 0

	for _, n := range nodes {
		if slices.Contains(missing, n.Name()) {
			assert.NotContains(t, got, n.Name(), "unreachable %s was imported", n.Name())

			continue
		}

		want++

		role := cluster.RoleWorker
		if n.ControlPlane() {
			role = cluster.RoleControlPlane
		}

		m, ok := got[n.Name()]
		if assert.True(t, ok, "node %s has no Machine", n.Name()) {
			assert.Equal(t, role, m.Role, n.Name())
			assert.Equal(t, bed.Fleet.Endpoint(), m.Endpoint, n.Name())
		}
	}

	assert.Len(t, got, want, "one Machine per node: %v", got)
}

// waitNodeJoined waits until a node's kubelet has registered it and reports it Ready: it has joined the cluster.
func waitNodeJoined(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	lw := cache.NewListWatchFromClient(client.CoreV1().RESTClient(), "nodes", "", kfields.OneTermEqualSelector("metadata.name", name))

	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Node{}, nil, func(ev watch.Event) (bool, error) {
		n, ok := ev.Object.(*corev1.Node)
		if !ok || n.Status.NodeInfo.KubeletVersion == "" {
			return false, nil
		}

		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, nil
			}
		}

		return false, nil
	})
	require.NoError(t, err, "waiting for node %s to join", name)
}

// TestClusterImport puts a running emulated cluster under the engine from the emulator's talosconfig alone: the dry
// run prints what it would write (credentials redacted) and writes nothing; the import writes the Cluster wanting
// the versions the cluster runs, one Machine per node with its role and endpoint, and the credentials (the
// kubeconfig fetched through the Talos API); no upgrade starts. A worker added to the running cluster is added by a
// second import, and said so, alone. A Talos upgrade of the imported cluster then reaches Done.
func TestClusterImport(t *testing.T) {
	bed := startImportBed(t)
	st := bed.State()
	talosconfig := bed.Fleet.TalosconfigPath()
	talosVersion, kubernetesVersion := "v"+bed.Fleet.TalosVersion(), "v"+bed.Fleet.KubernetesVersion()

	dry := mustCLI(t, bed, "cluster", "import", "c1", "--talosconfig", talosconfig, "--dry-run")
	assert.Contains(t, dry, "# added machine c1-cp-1 (controlplane, "+bed.Fleet.Endpoint()+", Talos "+talosVersion+")")
	assert.Contains(t, dry, "talosVersion: "+talosVersion)
	assert.Contains(t, dry, "kubernetesVersion: "+kubernetesVersion)
	assert.Contains(t, dry, "talosconfig: "+resources.Redacted)
	assert.NotContains(t, dry, "BEGIN", "the dry run printed a key or certificate")
	assert.Equal(t, 7, strings.Count(dry, "\n---\n"), "Cluster, Credentials and six Machines: %s", dry)

	_, err := safe.StateGetByID[*cluster.Cluster](t.Context(), st, "c1")
	require.True(t, state.IsNotFoundError(err), "the dry run wrote the cluster: %v", err)

	out := mustCLI(t, bed, "cluster", "import", "c1", "--talosconfig", talosconfig)
	assert.Contains(t, out, "imported cluster c1: 6 machines, Talos "+talosVersion+", Kubernetes "+kubernetesVersion+", kubeconfig fetched through the Talos API")
	assert.Len(t, importChanges(out), 6, out)

	c, err := safe.StateGetByID[*cluster.Cluster](t.Context(), st, "c1")
	require.NoError(t, err)
	assert.Equal(t, talosVersion, c.TypedSpec().TalosVersion)
	assert.Equal(t, kubernetesVersion, c.TypedSpec().KubernetesVersion)
	assert.False(t, c.TypedSpec().Paused)

	assertMatchesFleet(t, bed)

	creds, err := safe.StateGetByID[*cluster.Credentials](server.WithSecretsShown(t.Context()), st, "c1")
	require.NoError(t, err)

	stored, err := clientconfig.FromString(creds.TypedSpec().Talosconfig)
	require.NoError(t, err)
	assert.Equal(t, []string{bed.Fleet.Endpoint()}, stored.Contexts[stored.Context].Endpoints)

	kubeconfig, err := bed.Fleet.Kubeconfig("c1")
	require.NoError(t, err)
	assert.Equal(t, string(kubeconfig), creds.TypedSpec().Kubeconfig, "the kubeconfig the Talos API hands out")

	// The engine observes every machine on the version it wants and decides the cluster is done: nothing started.
	waitObserved(t, bed, bed.Fleet.TalosVersion())
	waitTalos(t, st, "c1", time.Minute, "the engine to find nothing to do", phaseIs(upgrade.PhaseDone, talosVersion))

	upgrades, err := safe.StateListAll[*upgrade.MachineUpgradeStatus](t.Context(), st)
	require.NoError(t, err)
	assert.Zero(t, upgrades.Len(), "a machine upgrade started after the import")

	for _, e := range bed.Fleet.Journal().Entries() {
		assert.False(t, isInstall(e) || e.Method == methodReboot || e.Method == methodApply || e.Event != "",
			"the import or the engine changed a machine: %+v", e)
	}

	// A worker joins the running cluster; importing again adds it, and only it.
	added, err := bed.Fleet.AddWorker(t.Context(), "c1")
	require.NoError(t, err)
	require.Equal(t, "c1-w-4", added.Name())
	waitNodeJoined(t, kubeClient(t, bed, "c1"), added.Name())

	out = mustCLI(t, bed, "cluster", "import", "c1", "--talosconfig", talosconfig)
	assert.Contains(t, out, "re-imported cluster c1: 7 machines")
	assert.Contains(t, out, "the cluster's targets are unchanged")
	assert.Equal(t, []string{"added machine c1-w-4 (worker, " + bed.Fleet.Endpoint() + ", Talos " + talosVersion + ")"}, importChanges(out))
	assertMatchesFleet(t, bed)

	out = mustCLI(t, bed, "cluster", "import", "c1", "--talosconfig", talosconfig)
	assert.Contains(t, out, "no machine added, removed or changed")
	assert.Empty(t, importChanges(out))

	// The imported cluster upgrades like a registered one.
	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v1.13.4")

	done := waitTalos(t, st, "c1", 5*time.Minute, "the upgrade of the imported cluster to finish", phaseIs(upgrade.PhaseDone, "1.13.4"))
	assert.Equal(t, 7, done.TypedSpec().Done)
	assert.Equal(t, 7, done.TypedSpec().Total)

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, "1.13.4", n.Version(), n.Name())
	}
}

// TestClusterImportUnreachable: with one worker's Talos API down, the import is refused with the member named and
// nothing is written; with --allow-unreachable the other members are imported and the unreachable one is listed.
func TestClusterImportUnreachable(t *testing.T) {
	bed := startImportBed(t)
	st := bed.State()
	talosconfig := bed.Fleet.TalosconfigPath()

	require.NoError(t, bed.Fleet.SetFault(t.Context(), "c1-w-2", talosemu.FaultAPIDown))

	out, errOut, err := cli(t, bed, "cluster", "import", "c1", "--talosconfig", talosconfig)
	require.Error(t, err)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "member c1-w-2 (worker) is unreachable")
	assert.Contains(t, errOut, "--allow-unreachable")

	_, err = safe.StateGetByID[*cluster.Cluster](t.Context(), st, "c1")
	require.True(t, state.IsNotFoundError(err), "a refused import wrote the cluster: %v", err)
	assert.Empty(t, importedMachines(t, st))

	out = mustCLI(t, bed, "cluster", "import", "c1", "--talosconfig", talosconfig, "--allow-unreachable")
	assert.Contains(t, out, "imported cluster c1: 5 machines")
	assert.Contains(t, out, "unreachable, not imported: c1-w-2 (worker)")
	assert.Len(t, importChanges(out), 5, out)
	assertMatchesFleet(t, bed, "c1-w-2")

	// Back, it is added by the next import.
	require.NoError(t, bed.Fleet.ClearFault(t.Context(), "c1-w-2", talosemu.FaultAPIDown))

	out = mustCLI(t, bed, "cluster", "import", "c1", "--talosconfig", talosconfig)
	assert.Equal(t, []string{"added machine c1-w-2 (worker, " + bed.Fleet.Endpoint() + ", Talos v" + bed.Fleet.TalosVersion() + ")"}, importChanges(out))
	assertMatchesFleet(t, bed)
}
