package talosemu

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	clusterres "github.com/siderolabs/talos/pkg/machinery/resources/cluster"
)

// newDiscoveryState is a cluster's "cluster" namespace, where Talos' cluster discovery keeps a Member per node.
func newDiscoveryState() state.CoreState {
	build := inmem.NewStateWithOptions(inmem.WithHistoryInitialCapacity(historyInitialCapacity), inmem.WithHistoryMaxCapacity(historyMaxCapacity))

	return build(clusterres.NamespaceName)
}

// newNode builds a node of cluster c, not yet published, routed or booted.
func (f *Fleet) newNode(c *cluster, name string, controlPlane bool, cfg talosconfig.Provider) *Node {
	return &Node{
		name:          name,
		nodeID:        rand.Text(),
		cluster:       c,
		controlPlane:  controlPlane,
		fleet:         f,
		st:            newNodeState(f.meta, c.discovery),
		running:       f.opts.versionOf(name),
		bootID:        newBootID(),
		cfg:           cfg,
		faults:        map[Fault]bool{},
		pullFaults:    map[string]bool{},
		images:        map[common.ContainerdNamespace][]string{},
		faultsChanged: make(chan struct{}),
	}
}

// addNode makes a node part of its cluster and routes calls to it.
func (f *Fleet) addNode(n *Node) {
	f.mu.Lock()
	defer f.mu.Unlock()

	n.cluster.nodes = append(n.cluster.nodes, n)
	f.nodes[n.name] = n
	f.order = append(f.order, n)
}

// lookup finds a node by name.
func (f *Fleet) lookup(name string) (*Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()

	n, ok := f.nodes[name]

	return n, ok
}

// clusterNodes lists c's nodes, control planes first, then workers in the order they joined.
func (f *Fleet) clusterNodes(c *cluster) []*Node {
	f.mu.RLock()
	defer f.mu.RUnlock()

	return append([]*Node(nil), c.nodes...)
}

// AddWorker joins a new worker to a running cluster, as a machine booted with the cluster's worker config does: it
// is named after the cluster's workers (c1-w-4 after c1-w-3), runs the fleet's Talos version, boots, registers with
// the cluster discovery and, when the cluster runs Kubernetes, with it as a Node. The talosconfigs already handed
// out reach it (calls route on its name).
func (f *Fleet) AddWorker(ctx context.Context, clusterName string) (*Node, error) {
	c, err := f.cluster(clusterName)
	if err != nil {
		return nil, err
	}

	workers := 0

	for _, n := range f.clusterNodes(c) {
		if !n.controlPlane {
			workers++
		}
	}

	name := fmt.Sprintf("%s-w-%d", c.name, workers+1)
	if _, taken := f.lookup(name); taken {
		return nil, fmt.Errorf("adding a worker to cluster %q: node %q exists", c.name, name)
	}

	n := f.newNode(c, name, false, c.workerConfig)

	if err = n.publishInitial(ctx); err != nil {
		return nil, err
	}

	f.addNode(n)

	if err = n.boot(ctx); err != nil {
		return nil, fmt.Errorf("booting new worker %q: %w", name, err)
	}

	if c.kube != nil {
		if err = f.startKubelet(c.kube, n); err != nil {
			return nil, err
		}
	}

	return n, nil
}

// address is the IP address the fleet's nodes have: the one its endpoint listens on, where each node's apid
// answers (the loopback address when it listens on all of them).
func (f *Fleet) address() netip.Addr {
	host, _, err := net.SplitHostPort(f.opts.listenAddress)
	if err == nil {
		if addr, err := netip.ParseAddr(host); err == nil && !addr.IsUnspecified() {
			return addr
		}
	}

	return netip.MustParseAddr("127.0.0.1")
}

// publishMember writes the node's discovery Member as Talos' cluster discovery does (cluster.MemberController, from
// the node's affiliate): named after its node name, with its node ID, addresses, hostname, machine type and
// operating system with the running version, and the API server port of a control plane.
func (n *Node) publishMember(ctx context.Context, version string) error {
	machineType := machine.TypeWorker

	var controlPlane *clusterres.ControlPlane

	if n.controlPlane {
		machineType = machine.TypeControlPlane
		controlPlane = &clusterres.ControlPlane{APIServerPort: 6443}
	}

	if err := safe.StateModify(ctx, state.WrapCore(n.cluster.discovery), clusterres.NewMember(clusterres.NamespaceName, n.name), func(r *clusterres.Member) error {
		spec := r.TypedSpec()
		spec.NodeID = n.nodeID
		spec.Addresses = []netip.Addr{n.fleet.address()}
		spec.Hostname = n.name
		spec.MachineType = machineType
		spec.OperatingSystem = "Talos (v" + version + ")"
		spec.ControlPlane = controlPlane

		return nil
	}); err != nil {
		return fmt.Errorf("updating the discovery member of %q: %w", n.name, err)
	}

	return nil
}
