package controllers

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/resources"
)

// namedAfter is a controller whose outputs have the IDs of another input than its primary one (the one named),
// so the sweep looks for that input instead.
type namedAfter interface {
	outputsNamedAfter() resource.Type
}

// sweepOrphans makes every run of ctrl start by destroying the outputs whose primary input is gone.
//
// A QController removes an output when the Reconcile of its primary input finds the input deleted. But a fresh
// COSI runtime queues only the primary inputs that exist, and its watches start at the moment it starts: a Cluster
// or Machine deleted while the runtime was stopped or restarting (Runtime restarts it after any error) is never
// reconciled again, and its outputs would stay forever. The sweep closes that gap at the start of each run.
//
// It relies on the convention of every controller in this package: each output has the ID of its primary input
// (a ClusterSummary, EtcdStatus or TalosUpgradeStatus is named after its Cluster; a MachineUpgradeStatus after its
// Machine), both in resources.Namespace, or, for a controller that is namedAfter another input (MachineStatus is
// reconciled per Cluster and named after its Machine), the ID of that input. It writes through the controller's own
// QRuntime, so only outputs this controller owns are destroyed. Reconciles wait for the sweep to finish: a primary
// created during the sweep is reconciled after it, so the sweep can never destroy an output a reconcile just wrote.
func sweepOrphans(ctrl controller.QController) controller.QController {
	return &orphanSweeper{QController: ctrl, settings: ctrl.Settings(), swept: make(chan struct{})}
}

// orphanSweeper is a QController that sweeps its outputs (see sweepOrphans) before it lets reconciles run.
type orphanSweeper struct {
	controller.QController

	settings controller.QSettings
	swept    chan struct{} // closed once the sweep is done
	done     bool          // the sweep is done; only the run hook goroutine reads and writes it
}

// Settings implements controller.QController: the wrapped controller's, with the sweep before its run hook. COSI
// calls Settings more than once, so it returns the same settings every time.
func (w *orphanSweeper) Settings() controller.QSettings {
	s := w.settings
	hook := w.settings.RunHook

	s.RunHook = func(ctx context.Context, logger *zap.Logger, r controller.QRuntime) error {
		if !w.done {
			// An error returns to COSI, which runs the hook again after a backoff; reconciles wait meanwhile.
			if err := w.sweep(ctx, logger, r); err != nil {
				return err
			}

			w.done = true
			close(w.swept)
		}

		if hook == nil {
			return nil
		}

		return hook(ctx, logger, r)
	}

	return s
}

// Reconcile implements controller.QController: it waits for the sweep, then reconciles as the wrapped controller.
func (w *orphanSweeper) Reconcile(ctx context.Context, logger *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	select {
	case <-w.swept:
	case <-ctx.Done():
		return ctx.Err()
	}

	return w.QController.Reconcile(ctx, logger, r, ptr)
}

// sweep destroys every output of the controller whose primary input (same ID) does not exist.
func (w *orphanSweeper) sweep(ctx context.Context, logger *zap.Logger, r controller.QRuntime) error {
	var primary *controller.Input

	for i := range w.settings.Inputs {
		if w.settings.Inputs[i].Kind == controller.InputQPrimary {
			primary = &w.settings.Inputs[i]

			break
		}
	}

	if primary == nil {
		return nil
	}

	if n, ok := w.QController.(namedAfter); ok {
		primary = &controller.Input{Namespace: resources.Namespace, Type: n.outputsNamedAfter()}
	}

	for _, out := range w.settings.Outputs {
		list, err := r.List(ctx, resource.NewMetadata(resources.Namespace, out.Type, "", resource.VersionUndefined))
		if err != nil {
			return fmt.Errorf("listing %s to remove those of deleted %s: %w", resources.DisplayType(out.Type), resources.DisplayType(primary.Type), err)
		}

		for _, res := range list.Items {
			md := res.Metadata()
			if md.Owner() != w.Name() {
				continue
			}

			_, err := r.Get(ctx, resource.NewMetadata(primary.Namespace, primary.Type, md.ID(), resource.VersionUndefined))
			if err == nil {
				continue
			}

			if !state.IsNotFoundError(err) {
				return fmt.Errorf("reading %s %q: %w", resources.DisplayType(primary.Type), md.ID(), err)
			}

			if err = destroyIfExists(ctx, r, md); err != nil {
				return err
			}

			logger.Info("removed the output of a deleted input",
				zap.String("type", resources.DisplayType(out.Type)), zap.String("id", md.ID()))
		}
	}

	return nil
}
