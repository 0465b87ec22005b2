package talosemu_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/resources/etcd"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// kubeletRecorder is a KubernetesRunner without Kubernetes: it keeps the last configuration each node gave its
// kubelet, which is all a test of the Talos side needs to see.
type kubeletRecorder struct {
	mu      sync.Mutex
	configs map[string]talosemu.KubeletConfig
}

func (r *kubeletRecorder) StartControlPlane(context.Context, talosemu.KubernetesControlPlaneConfig) (talosemu.KubernetesControlPlane, error) {
	return recordedControlPlane{r}, nil
}

func (r *kubeletRecorder) config(node string) talosemu.KubeletConfig {
	r.mu.Lock()
	defer r.mu.Unlock()

	return r.configs[node]
}

func (r *kubeletRecorder) set(cfg talosemu.KubeletConfig) {
	r.mu.Lock()
	defer r.mu.Unlock()

	if r.configs == nil {
		r.configs = map[string]talosemu.KubeletConfig{}
	}

	r.configs[cfg.Name] = cfg
}

type recordedControlPlane struct{ r *kubeletRecorder }

func (recordedControlPlane) Kubeconfig() []byte { return []byte("apiVersion: v1\nkind: Config\n") }
func (recordedControlPlane) Stop() error        { return nil }

func (recordedControlPlane) ApplyManifests(context.Context, []map[string]any) error { return nil }

func (recordedControlPlane) InterruptAPIServer(context.Context, time.Duration) error { return nil }

func (recordedControlPlane) StopAPIServer() error { return nil }

func (recordedControlPlane) StartAPIServer(context.Context) error { return nil }

func (cp recordedControlPlane) StartKubelet(_ context.Context, cfg talosemu.KubeletConfig) (talosemu.Kubelet, error) {
	cp.r.set(cfg)

	return recordedKubelet(cp), nil
}

type recordedKubelet struct{ r *kubeletRecorder }

func (recordedKubelet) SetReady(bool)                       {}
func (k recordedKubelet) Update(cfg talosemu.KubeletConfig) { k.r.set(cfg) }

// TestNodeVersionAtStart starts a cluster with real etcd members in which one control plane and one worker run a
// newer Talos than the rest: each of them looks, through the API, its etcd member, its kubelet and the journal,
// like a node that was installed on that version, and the others like nodes of the fleet's version.
func TestNodeVersionAtStart(t *testing.T) {
	t.Parallel()

	const (
		fleetVersion = "1.11.6"
		nodeVersion  = "1.14.1"
	)

	newer := []string{"c1-cp-2", "c1-w-1"}
	kubelets := &kubeletRecorder{}

	fleet := startFleet(t, talosemu.WithControlPlanes(2), talosemu.WithWorkers(2), talosemu.WithTalosVersion(fleetVersion),
		talosemu.WithNodeVersion("c1-cp-2", "v"+nodeVersion), talosemu.WithNodeVersion("c1-w-1", nodeVersion),
		talosemu.WithRebootDowntime(0), talosemu.WithKubernetes(kubelets))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	assert.Equal(t, fleetVersion, fleet.TalosVersion(), "the fleet's version is the one nodes without their own run")

	for _, n := range fleet.Nodes() {
		want := fleetVersion
		if slices.Contains(newer, n.Name()) {
			want = nodeVersion
		}

		nodeCtx := client.WithNode(ctx, n.Name())

		assert.Equal(t, want, n.Version(), n.Name())
		assert.Empty(t, n.StagedVersion(), "%s has nothing staged for its next boot", n.Name())
		assert.Equal(t, "v"+want, mustVersion(t, c, n.Name()), "%s: Version API", n.Name())

		v, err := safe.StateGet[*runtime.Version](nodeCtx, c.COSI, runtime.NewVersion().Metadata())
		require.NoError(t, err, n.Name())
		assert.Equal(t, "v"+want, v.TypedSpec().Version, "%s: Version resource", n.Name())

		ms, err := safe.StateGetByID[*runtime.MachineStatus](nodeCtx, c.COSI, runtime.MachineStatusID)
		require.NoError(t, err, n.Name())
		assert.Equal(t, runtime.MachineStageRunning, ms.TypedSpec().Stage, n.Name())
		assert.True(t, ms.TypedSpec().Status.Ready, n.Name())

		assert.Equal(t, "Talos (v"+want+")", kubelets.config(n.Name()).OSImage, "%s: the kubelet's OS image", n.Name())

		if n.ControlPlane() {
			member, err := safe.StateGetByID[*etcd.Member](nodeCtx, c.COSI, etcd.LocalMemberID)
			require.NoError(t, err, n.Name())
			assert.NotZero(t, n.EtcdMemberID(), n.Name())
			assert.Equal(t, n.EtcdMemberID(), mustParseMemberID(t, member.TypedSpec().MemberID), "%s: etcd member resource", n.Name())
		}
	}

	// Both control planes are members of the one etcd cluster, whatever version they run.
	members, err := c.EtcdMemberList(client.WithNode(ctx, "c1-cp-1"), &machine.EtcdMemberListRequest{})
	require.NoError(t, err)

	var hostnames []string
	for _, m := range members.GetMessages()[0].GetMembers() {
		hostnames = append(hostnames, m.GetHostname())
	}

	slices.Sort(hostnames)
	assert.Equal(t, []string{"c1-cp-1", "c1-cp-2"}, hostnames)

	// Nothing happened to any node at start: the journal only has the calls above, none of which changes a node.
	for _, e := range fleet.Journal().Entries() {
		assert.Empty(t, e.Event, "no event at start: %+v", e)
	}

	// The API is the one of each node's own release: LifecycleService on 1.14, Unimplemented on a legacy node.
	if _, err = lifecycleUpgrade(t, c, "c1-w-2", talosemu.InstallerImage(nodeVersion)); status.Code(err) != codes.Unimplemented {
		t.Fatalf("lifecycle upgrade on the v%s node: want Unimplemented, got %v", fleetVersion, err)
	}

	code, err := lifecycleUpgrade(t, c, "c1-w-1", talosemu.InstallerImage(nodeVersion))
	require.NoError(t, err)
	require.Zero(t, code)

	w1, err := fleet.Node("c1-w-1")
	require.NoError(t, err)
	assert.Equal(t, nodeVersion, w1.StagedVersion())

	bootID := w1.BootID()
	require.NoError(t, c.Reboot(client.WithNode(ctx, "c1-w-1")))

	down := waitEvent(ctx, t, fleet, "c1-w-1", talosemu.EventRebootDown)
	up := waitEvent(ctx, t, fleet, "c1-w-1", talosemu.EventRebootUp)

	assert.Equal(t, nodeVersion, down.Version, "the journal has the node going down on its start version")
	assert.Equal(t, bootID, down.BootID)
	assert.Equal(t, nodeVersion, up.Version)
	assert.NotEqual(t, bootID, up.BootID)
	assert.Equal(t, "v"+nodeVersion, mustVersion(t, c, "c1-w-1"))
	assert.Equal(t, "Talos (v"+nodeVersion+")", kubelets.config("c1-w-1").OSImage)
}

func mustParseMemberID(t *testing.T, s string) uint64 {
	t.Helper()

	id, err := strconv.ParseUint(s, 16, 64)
	require.NoError(t, err, "etcd member ID %q", s)

	return id
}

// TestNodeVersionRefused: a node version must be supported and name a node of the fleet.
func TestNodeVersionRefused(t *testing.T) {
	t.Parallel()

	_, err := talosemu.New(t.Context(), talosemu.WithStateDir(t.TempDir()), talosemu.WithNodeVersion("c1-w-1", "1.10.0"))
	require.ErrorContains(t, err, "not supported")

	_, err = talosemu.New(t.Context(), talosemu.WithStateDir(t.TempDir()), talosemu.WithNodeVersion("", "1.14.1"))
	require.ErrorContains(t, err, "node name is empty")

	_, err = talosemu.New(t.Context(), talosemu.WithStateDir(t.TempDir()), talosemu.WithLite(), talosemu.WithWorkers(1),
		talosemu.WithNodeVersion("c1-w-9", "1.14.1"))
	require.ErrorContains(t, err, `unknown node "c1-w-9"`)
}
