package controllers

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/controller/generic"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// A cluster's machines are found with a label query: every Machine carries its cluster as cluster.LabelCluster
// (the validating state sets it on every write), and so do the per-machine outputs. No controller keeps an index
// of its own that could hold part of a cluster (docs/architecture.md, "Reading a cluster").

// clusterMachines lists the Machines of clusterID, sorted by ID.
func clusterMachines(ctx context.Context, r controller.Reader, clusterID string) ([]*cluster.Machine, error) {
	list, err := safe.ReaderListAll[*cluster.Machine](ctx, r, state.WithLabelQuery(resource.LabelEqual(cluster.LabelCluster, clusterID)))
	if err != nil {
		return nil, fmt.Errorf("listing machines of cluster %q: %w", clusterID, err)
	}

	out := make([]*cluster.Machine, 0, list.Len())
	for m := range list.All() {
		out = append(out, m)
	}

	return out, nil
}

// machinePointers are the Machines of clusterID, for a per-machine controller that re-observes a whole cluster.
func machinePointers(ctx context.Context, r controller.Reader, clusterID string) ([]resource.Pointer, error) {
	machines, err := clusterMachines(ctx, r, clusterID)
	if err != nil {
		return nil, err
	}

	out := make([]resource.Pointer, 0, len(machines))
	for _, m := range machines {
		out = append(out, m.Metadata())
	}

	return out, nil
}

// mapToCluster maps an input event of a per-cluster controller to the cluster it concerns: per-cluster inputs
// (Credentials, EtcdStatus, TalosUpgradeStatus) by their ID; a Machine and the per-machine outputs by their cluster
// label, which a deleted resource's last state still carries; a MachineLock, which names only its machine, by that
// machine's cluster.
func mapToCluster(ctx context.Context, r controller.Reader, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	switch ptr.Type() {
	case cluster.CredentialsType, observe.EtcdStatusType, upgrade.TalosUpgradeStatusType, upgrade.KubernetesUpgradeStatusType:
		return []resource.Pointer{cluster.NewCluster(ptr.ID()).Metadata()}, nil
	}

	if id, ok := ptr.Labels().Get(cluster.LabelCluster); ok {
		return []resource.Pointer{cluster.NewCluster(id).Metadata()}, nil
	}

	m, err := safe.ReaderGetByID[*cluster.Machine](ctx, r, ptr.ID())
	if err != nil {
		if state.IsNotFoundError(err) {
			return nil, nil
		}

		return nil, fmt.Errorf("reading machine %q: %w", ptr.ID(), err)
	}

	return []resource.Pointer{cluster.NewCluster(m.TypedSpec().Cluster).Metadata()}, nil
}

// admittedMachines maps a cluster's rollout status (Talos upgrade, config rollout), read by its ID, to the machines
// it admits: an admission wakes exactly the machines it starts.
func admittedMachines[T generic.ResourceWithRD](ctx context.Context, r controller.Reader, id resource.ID, admitted func(T) []string) ([]resource.Pointer, error) {
	status, err := safe.ReaderGetByID[T](ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return nil, nil
		}

		return nil, fmt.Errorf("reading the rollout status of cluster %q: %w", id, err)
	}

	ids := admitted(status)
	out := make([]resource.Pointer, 0, len(ids))

	for _, m := range ids {
		out = append(out, cluster.NewMachine(m).Metadata())
	}

	return out, nil
}
