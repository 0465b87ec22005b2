// Package testbed puts an upshift engine in charge of an emulated Talos fleet: it starts the fleet (talosemu, with
// real etcd and real Kubernetes unless lite), the engine (in this process, or as a child process a test can kill
// with SIGKILL) and registers the fleet's Cluster, Credentials and Machine resources in it. Integration tests, the
// benchmarks, `upshift emulator --register` and the demo all build on it, so each sees the fleet the same way.
package testbed

import (
	"context"
	"fmt"
	"slices"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/resources/cluster"
)

// Register creates (or updates) the fleet's Cluster, Credentials and Machine resources in st: each cluster wants
// the version its nodes run now (so nothing starts until a user asks), with its own talosconfig and kubeconfig
// (none for a lite fleet); each machine points at the fleet's endpoint. A cluster whose nodes run different
// versions (talosemu.WithNodeVersion) has no such version: it wants the newest one its nodes run and is registered
// paused, so nothing starts there either until a user resumes it.
func Register(ctx context.Context, st state.State, fleet *talosemu.Fleet) error {
	for _, name := range fleet.Clusters() {
		if err := registerCluster(ctx, st, fleet, name); err != nil {
			return err
		}
	}

	return nil
}

func registerCluster(ctx context.Context, st state.State, fleet *talosemu.Fleet, name string) error {
	cfg, err := fleet.ClusterTalosconfig(name)
	if err != nil {
		return err
	}

	talosconfig, err := cfg.Bytes()
	if err != nil {
		return fmt.Errorf("encoding the talosconfig of cluster %q: %w", name, err)
	}

	nodes, err := fleet.ClusterNodes(name)
	if err != nil {
		return err
	}

	version, mixed := clusterVersion(nodes)

	if err = register(ctx, st, cluster.NewCluster(name), func(r *cluster.Cluster) {
		r.TypedSpec().TalosVersion = "v" + version
		r.TypedSpec().KubernetesVersion = "v" + fleet.KubernetesVersion()

		if mixed {
			r.TypedSpec().Paused = true
		}
	}); err != nil {
		return err
	}

	kubeconfig, err := fleet.Kubeconfig(name)
	if err != nil {
		return err
	}

	if err = register(ctx, st, cluster.NewCredentials(name), func(r *cluster.Credentials) {
		r.TypedSpec().Talosconfig = string(talosconfig)
		r.TypedSpec().Kubeconfig = string(kubeconfig)
	}); err != nil {
		return err
	}

	for _, n := range nodes {
		role := cluster.RoleWorker
		if n.ControlPlane() {
			role = cluster.RoleControlPlane
		}

		if err = register(ctx, st, cluster.NewMachine(n.Name()), func(r *cluster.Machine) {
			r.TypedSpec().Cluster = name
			r.TypedSpec().Role = role
			r.TypedSpec().Endpoint = fleet.Endpoint()
			r.TypedSpec().InstallerImage = talosemu.InstallerImageRepository
		}); err != nil {
			return err
		}
	}

	return nil
}

// clusterVersion is the newest Talos version the nodes run, and whether some of them run another one.
func clusterVersion(nodes []*talosemu.Node) (newest string, mixed bool) {
	supported := talosemu.SupportedVersions()

	for _, n := range nodes {
		v := n.Version()

		switch {
		case newest == "":
			newest = v
		case v != newest:
			mixed = true

			if slices.Index(supported, v) > slices.Index(supported, newest) {
				newest = v
			}
		}
	}

	return newest, mixed
}

// register creates a resource or updates the existing one with set.
func register[T resource.Resource](ctx context.Context, st state.State, r T, set func(T)) error {
	if err := safe.StateModify(ctx, st, r, func(current T) error {
		set(current)

		return nil
	}); err != nil {
		return fmt.Errorf("registering %s %q: %w", r.Metadata().Type(), r.Metadata().ID(), err)
	}

	return nil
}
