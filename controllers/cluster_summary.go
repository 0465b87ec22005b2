package controllers

import (
	"context"
	"fmt"
	"slices"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
)

// ClusterSummaryController keeps one ClusterSummary per Cluster: its desired versions and its machines counted by
// role, with the locked ones listed. Summaries of deleted clusters are removed.
type ClusterSummaryController struct{}

// Name implements controller.Controller.
func (ctrl *ClusterSummaryController) Name() string {
	return "ClusterSummaryController"
}

// Inputs implements controller.Controller.
func (ctrl *ClusterSummaryController) Inputs() []controller.Input {
	return []controller.Input{
		{Namespace: resources.Namespace, Type: cluster.ClusterType, Kind: controller.InputWeak},
		{Namespace: resources.Namespace, Type: cluster.MachineType, Kind: controller.InputWeak},
		{Namespace: resources.Namespace, Type: cluster.MachineLockType, Kind: controller.InputWeak},
	}
}

// Outputs implements controller.Controller.
func (ctrl *ClusterSummaryController) Outputs() []controller.Output {
	return []controller.Output{{Type: observe.ClusterSummaryType, Kind: controller.OutputExclusive}}
}

// Run implements controller.Controller: every change of an input recomputes every summary.
func (ctrl *ClusterSummaryController) Run(ctx context.Context, r controller.Runtime, _ *zap.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.EventCh():
		}

		if err := ctrl.reconcile(ctx, r); err != nil {
			return err
		}
	}
}

func (ctrl *ClusterSummaryController) reconcile(ctx context.Context, r controller.Runtime) error {
	clusters, err := safe.ReaderListAll[*cluster.Cluster](ctx, r)
	if err != nil {
		return fmt.Errorf("listing clusters: %w", err)
	}

	machines, err := safe.ReaderListAll[*cluster.Machine](ctx, r)
	if err != nil {
		return fmt.Errorf("listing machines: %w", err)
	}

	locks, err := safe.ReaderListAll[*cluster.MachineLock](ctx, r)
	if err != nil {
		return fmt.Errorf("listing machine locks: %w", err)
	}

	locked := map[resource.ID]bool{}
	for lock := range locks.All() {
		locked[lock.Metadata().ID()] = true
	}

	tally := map[resource.ID]*observe.ClusterSummarySpec{}

	for c := range clusters.All() {
		tally[c.Metadata().ID()] = &observe.ClusterSummarySpec{
			TalosVersion:      c.TypedSpec().TalosVersion,
			KubernetesVersion: c.TypedSpec().KubernetesVersion,
		}
	}

	for m := range machines.All() {
		summary, ok := tally[m.TypedSpec().Cluster]
		if !ok {
			continue
		}

		summary.Machines++

		switch m.TypedSpec().Role {
		case cluster.RoleControlPlane:
			summary.ControlPlanes++
		case cluster.RoleWorker:
			summary.Workers++
		}

		if locked[m.Metadata().ID()] {
			summary.Locked = append(summary.Locked, m.Metadata().ID())
		}
	}

	r.StartTrackingOutputs()

	for id, want := range tally {
		slices.Sort(want.Locked)

		if err = safe.WriterModify(ctx, r, observe.NewClusterSummary(id), func(s *observe.ClusterSummary) error {
			*s.TypedSpec() = *want

			return nil
		}); err != nil {
			return fmt.Errorf("writing summary of cluster %q: %w", id, err)
		}
	}

	if err = r.CleanupOutputs(ctx, observe.NewClusterSummary("").Metadata()); err != nil {
		return fmt.Errorf("removing summaries of deleted clusters: %w", err)
	}

	return nil
}
