package talosemu_test

import (
	"slices"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// realDowntime keeps reboots of nodes with real etcd members short.
const realDowntime = 500 * time.Millisecond

// TestStockClientReadsACluster drives a 3-control-plane + 2-worker cluster with real etcd members through a stock
// machinery client only, one node at a time through client.WithNode.
func TestStockClientReadsACluster(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithControlPlanes(3), talosemu.WithWorkers(2), talosemu.WithRebootDowntime(realDowntime))
	ctx := testContext(t)

	// The talosconfig the fleet wrote, and a client built from the endpoint and TLS config alone.
	fromFile := talosClient(t, fleet)

	tlsConfig, err := fleet.ClientTLSConfig()
	if err != nil {
		t.Fatal(err)
	}

	fromEndpoint, err := client.New(ctx, client.WithEndpoints(fleet.Endpoint()), client.WithTLSConfig(tlsConfig))
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { fromEndpoint.Close() }) //nolint:errcheck

	controlPlanes := []string{"c1-cp-1", "c1-cp-2", "c1-cp-3"}
	nodes := append(slices.Clone(controlPlanes), "c1-w-1", "c1-w-2")

	var memberIDs []uint64

	for _, c := range []*client.Client{fromFile, fromEndpoint} {
		for _, node := range nodes {
			nodeCtx := client.WithNode(ctx, node)

			if got := mustVersion(t, c, node); got != "v"+talosemu.DefaultTalosVersion {
				t.Errorf("%s: version %s, want v%s", node, got, talosemu.DefaultTalosVersion)
			}

			hostname, err := c.MachineClient.Hostname(nodeCtx, nil)
			if err != nil || hostname.GetMessages()[0].GetHostname() != node {
				t.Errorf("%s: hostname %v, %v", node, hostname, err)
			}

			machineStatus, err := safe.StateGetByID[*runtime.MachineStatus](nodeCtx, c.COSI, runtime.MachineStatusID)
			if err != nil {
				t.Fatalf("%s: machine status: %v", node, err)
			}

			if machineStatus.TypedSpec().Stage != runtime.MachineStageRunning || !machineStatus.TypedSpec().Status.Ready {
				t.Errorf("%s: machine status %+v, want running and ready", node, machineStatus.TypedSpec())
			}

			nodename, err := safe.StateGetByID[*k8s.Nodename](nodeCtx, c.COSI, k8s.NodenameID)
			if err != nil || nodename.TypedSpec().Nodename != node {
				t.Errorf("%s: nodename %v, %v", node, nodename, err)
			}

			kubelet, err := safe.StateGetByID[*k8s.KubeletSpec](nodeCtx, c.COSI, k8s.KubeletID)
			if err != nil || kubelet.TypedSpec().Image != "ghcr.io/siderolabs/kubelet:v"+talosemu.DefaultKubernetesVersion {
				t.Errorf("%s: kubelet spec %v, %v", node, kubelet, err)
			}

			// What `talosctl get` resolves types with.
			definitions, err := safe.StateListAll[*meta.ResourceDefinition](nodeCtx, c.COSI)
			if err != nil || definitions.Len() < 10 {
				t.Errorf("%s: resource definitions: %d, %v", node, definitions.Len(), err)
			}

			members, err := c.EtcdMemberList(nodeCtx, &machine.EtcdMemberListRequest{})

			if !slices.Contains(controlPlanes, node) {
				if status.Code(err) != codes.FailedPrecondition {
					t.Errorf("%s: etcd member list on a worker: want FailedPrecondition, got %v", node, err)
				}

				continue
			}

			if err != nil {
				t.Fatalf("%s: etcd member list: %v", node, err)
			}

			var names []string

			var ids []uint64

			for _, m := range members.GetMessages()[0].GetMembers() {
				names = append(names, m.GetHostname())
				ids = append(ids, m.GetId())
			}

			slices.Sort(names)
			slices.Sort(ids)

			if !slices.Equal(names, controlPlanes) {
				t.Errorf("%s: etcd members %v, want %v", node, names, controlPlanes)
			}

			if memberIDs == nil {
				memberIDs = ids
			} else if !slices.Equal(ids, memberIDs) {
				t.Errorf("%s: etcd member IDs %v disagree with %v", node, ids, memberIDs)
			}
		}
	}

	// Control planes serve the bootstrap manifests rendered from their machine config: the CNI, kube-proxy, CoreDNS.
	manifests, err := safe.StateListAll[*k8s.Manifest](client.WithNode(ctx, "c1-cp-1"), fromFile.COSI)
	if err != nil {
		t.Fatalf("manifests: %v", err)
	}

	var manifestIDs []string
	for m := range manifests.All() {
		manifestIDs = append(manifestIDs, m.Metadata().ID())
	}

	if want := []string{"05-flannel", "10-kube-proxy", "11-core-dns"}; !slices.Equal(manifestIDs, want) {
		t.Errorf("manifests %v, want %v", manifestIDs, want)
	}

	services, err := fromFile.ServiceList(client.WithNode(ctx, "c1-cp-1"))
	if err != nil || len(services.GetMessages()[0].GetServices()) == 0 {
		t.Fatalf("service list: %v, %v", services, err)
	}

	for _, svc := range services.GetMessages()[0].GetServices() {
		if svc.GetState() != "Running" || !svc.GetHealth().GetHealthy() {
			t.Errorf("service %s: %s, healthy %v", svc.GetId(), svc.GetState(), svc.GetHealth().GetHealthy())
		}
	}

	// Every call is in the journal, with the node it was routed to.
	entries := fleet.Journal().Entries()
	for _, node := range nodes {
		if slicesIndex(entries, func(e talosemu.Entry) bool { return e.Node == node && e.Method == "/machine.MachineService/Version" }) < 0 {
			t.Errorf("journal has no Version call to %s", node)
		}
	}
}

// TestClusterTalosconfig: a cluster's talosconfig names only its own nodes, and it reaches them.
func TestClusterTalosconfig(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithClusters(2), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1))

	cfg, err := fleet.ClusterTalosconfig("c2")
	require.NoError(t, err)

	tc := cfg.Contexts[cfg.Context]
	require.NotNil(t, tc)
	assert.Equal(t, []string{"c2-cp-1", "c2-w-1"}, tc.Nodes)

	c, err := client.New(t.Context(), client.WithConfig(cfg))
	require.NoError(t, err)

	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	v, err := c.Version(client.WithNode(t.Context(), "c2-w-1"))
	require.NoError(t, err)
	assert.Equal(t, "v"+fleet.TalosVersion(), v.GetMessages()[0].GetVersion().GetTag())

	_, err = fleet.ClusterTalosconfig("c9")
	require.ErrorContains(t, err, "c9")
}
