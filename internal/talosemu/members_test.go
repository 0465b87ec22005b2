package talosemu_test

import (
	"net/netip"
	"testing"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/cluster"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// members lists the discovery Members as node sees them, by name.
func members(t *testing.T, c *client.Client, node string) map[string]*cluster.Member {
	t.Helper()

	list, err := safe.StateListAll[*cluster.Member](client.WithNode(testContext(t), node), c.COSI)
	if err != nil {
		t.Fatalf("listing members on %s: %v", node, err)
	}

	byName := map[string]*cluster.Member{}
	for m := range list.All() {
		byName[m.Metadata().ID()] = m
	}

	return byName
}

// TestDiscoveryMembers reads the cluster discovery Members through the stock client, as `talosctl get members`
// does: every node of the cluster lists every other with its machine type, operating system and address, one
// cluster's members are not another's, a rebooted node announces its new version, and a worker added to the running
// cluster joins the list of every node, boots and answers its API.
func TestDiscoveryMembers(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithClusters(2), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1),
		talosemu.WithTalosVersion("1.13.4"), talosemu.WithRebootDowntime(0))
	c := talosClient(t, fleet)
	loopback := netip.MustParseAddr("127.0.0.1")

	for _, node := range []string{"c1-cp-1", "c1-w-1"} {
		got := members(t, c, node)
		if len(got) != 2 {
			t.Fatalf("%s lists %d members, want c1-cp-1 and c1-w-1: %v", node, len(got), got)
		}

		for name, wantType := range map[string]machine.Type{"c1-cp-1": machine.TypeControlPlane, "c1-w-1": machine.TypeWorker} {
			spec := got[name].TypedSpec()
			if spec.Hostname != name || spec.MachineType != wantType || spec.OperatingSystem != "Talos (v1.13.4)" ||
				len(spec.Addresses) != 1 || spec.Addresses[0] != loopback || spec.NodeID == "" || (spec.ControlPlane != nil) != (wantType == machine.TypeControlPlane) {
				t.Errorf("%s sees member %s as %+v", node, name, spec)
			}
		}
	}

	if got := members(t, c, "c2-w-1"); got["c1-cp-1"] != nil || got["c2-cp-1"] == nil {
		t.Errorf("c2-w-1 lists %v, want only cluster c2's", got)
	}

	ctx := testContext(t)

	if _, err := c.Upgrade(client.WithNode(ctx, "c1-w-1"), talosemu.InstallerImageRepository+":v1.14.1", false, false); err != nil {
		t.Fatal(err)
	}

	waitEvent(ctx, t, fleet, "c1-w-1", talosemu.EventRebootUp)

	if os := members(t, c, "c1-cp-1")["c1-w-1"].TypedSpec().OperatingSystem; os != "Talos (v1.14.1)" {
		t.Errorf("after its upgrade c1-w-1 announces %q, want Talos (v1.14.1)", os)
	}

	added, err := fleet.AddWorker(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}

	if added.Name() != "c1-w-2" || added.ControlPlane() || !added.Up() {
		t.Fatalf("added %s (control plane %v, up %v), want worker c1-w-2 up", added.Name(), added.ControlPlane(), added.Up())
	}

	for _, node := range []string{"c1-cp-1", "c1-w-1", "c1-w-2"} {
		if m := members(t, c, node)["c1-w-2"]; m == nil || m.TypedSpec().MachineType != machine.TypeWorker {
			t.Errorf("%s does not list the new worker c1-w-2: %v", node, m)
		}
	}

	if v := mustVersion(t, c, "c1-w-2"); v != "v1.13.4" {
		t.Errorf("new worker runs %s, want the fleet's v1.13.4", v)
	}

	if nodes, _ := fleet.ClusterNodes("c1"); len(nodes) != 3 || nodes[2].Name() != "c1-w-2" {
		t.Errorf("cluster c1 has %d nodes after adding one, want 3 ending with c1-w-2", len(nodes))
	}
}
