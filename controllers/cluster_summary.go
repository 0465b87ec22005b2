package controllers

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
)

// ClusterSummaryController keeps one ClusterSummary per Cluster: its desired versions and its machines counted by
// role, with the locked ones listed. Summaries of deleted clusters are removed. A Machine or MachineLock event
// recomputes only its cluster's summary, so the cost of an event does not grow with the fleet.
type ClusterSummaryController struct{}

// NewClusterSummaryController returns the controller.
func NewClusterSummaryController() *ClusterSummaryController {
	return &ClusterSummaryController{}
}

// Name implements controller.QController.
func (ctrl *ClusterSummaryController) Name() string { return "ClusterSummaryController" }

// Settings implements controller.QController.
func (ctrl *ClusterSummaryController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs:  qInputs(cluster.ClusterType, cluster.MachineType, cluster.MachineLockType),
		Outputs: []controller.Output{{Type: observe.ClusterSummaryType, Kind: controller.OutputExclusive}},
	}
}

// MapInput implements controller.QController: a Machine or its lock maps to the machine's cluster.
func (ctrl *ClusterSummaryController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	return mapToCluster(ctx, r, ptr)
}

// Reconcile implements controller.QController.
func (ctrl *ClusterSummaryController) Reconcile(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	c, err := safe.ReaderGetByID[*cluster.Cluster](ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return destroyIfExists(ctx, r, observe.NewClusterSummary(id).Metadata())
		}

		return fmt.Errorf("reading cluster %q: %w", id, err)
	}

	summary := observe.ClusterSummarySpec{TalosVersion: c.TypedSpec().TalosVersion, KubernetesVersion: c.TypedSpec().KubernetesVersion}

	machines, err := clusterMachines(ctx, r, id)
	if err != nil {
		return err
	}

	for _, m := range machines { // sorted, so Locked is too
		mid := m.Metadata().ID()
		summary.Machines++

		switch m.TypedSpec().Role {
		case cluster.RoleControlPlane:
			summary.ControlPlanes++
		case cluster.RoleWorker:
			summary.Workers++
		}

		if _, err = safe.ReaderGetByID[*cluster.MachineLock](ctx, r, mid); err == nil {
			summary.Locked = append(summary.Locked, mid)
		} else if !state.IsNotFoundError(err) {
			return fmt.Errorf("reading lock of machine %q: %w", mid, err)
		}
	}

	if err = safe.WriterModify(ctx, r, observe.NewClusterSummary(id), func(s *observe.ClusterSummary) error {
		*s.TypedSpec() = summary

		return nil
	}); err != nil {
		return fmt.Errorf("writing summary of cluster %q: %w", id, err)
	}

	return nil
}
