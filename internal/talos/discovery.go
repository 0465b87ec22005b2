package talos

import (
	"context"
	"errors"
	"net/netip"
	"strings"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/cluster"
)

// Member is one machine of the cluster as Talos' cluster discovery knows it (a Members.cluster.talos.dev resource).
type Member struct {
	// Name is the member's node name (the resource ID), which is also its Kubernetes node name.
	Name string
	// Hostname is the machine's hostname.
	Hostname string
	// ControlPlane is true for a control plane machine.
	ControlPlane bool
	// Addresses are the machine's addresses as it announces them.
	Addresses []netip.Addr
	// OperatingSystem is what the machine announces it runs, e.g. "Talos (v1.14.1)".
	OperatingSystem string
}

// Discoverer reads what a cluster says about itself through one machine's Talos API.
type Discoverer interface {
	// Members lists the cluster's discovery members as node sees them ("" asks the endpoint's own machine).
	Members(ctx context.Context, node string) ([]Member, error)
	// Kubeconfig returns an admin kubeconfig from a control plane ("" asks the endpoint's own machine).
	Kubeconfig(ctx context.Context, node string) ([]byte, error)
}

var _ Discoverer = (*Client)(nil)

// nodeContext addresses node, or the endpoint's own machine when node is "" (no node metadata, as talosctl without
// --nodes).
func nodeContext(ctx context.Context, node string) context.Context {
	if node == "" {
		return ctx
	}

	return client.WithNode(ctx, node)
}

// Members implements Discoverer.
func (c *Client) Members(ctx context.Context, node string) ([]Member, error) {
	list, err := safe.StateListAll[*cluster.Member](nodeContext(ctx, node), c.c.COSI)
	if err != nil {
		return nil, wrap(node, "listing cluster discovery members", err)
	}

	members := make([]Member, 0, list.Len())

	for m := range list.All() {
		spec := m.TypedSpec()
		members = append(members, Member{
			Name:            m.Metadata().ID(),
			Hostname:        spec.Hostname,
			ControlPlane:    spec.MachineType == machine.TypeControlPlane || spec.MachineType == machine.TypeInit,
			Addresses:       append([]netip.Addr(nil), spec.Addresses...),
			OperatingSystem: spec.OperatingSystem,
		})
	}

	return members, nil
}

// Kubeconfig implements Discoverer (MachineService.Kubeconfig: Talos generates an admin kubeconfig on a control
// plane).
func (c *Client) Kubeconfig(ctx context.Context, node string) ([]byte, error) {
	kubeconfig, err := c.c.Kubeconfig(nodeContext(ctx, node))
	if err != nil {
		return nil, wrap(node, "reading the kubeconfig", err)
	}

	if len(strings.TrimSpace(string(kubeconfig))) == 0 {
		return nil, wrap(node, "reading the kubeconfig", errors.New("empty kubeconfig"))
	}

	return kubeconfig, nil
}
