package controllers

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// TalosUpgradeStatusController plans and schedules the Talos rollout of every Cluster, and reports it in the
// cluster's TalosUpgradeStatus. It never calls Talos: it reads the cluster (ReadClusterView) and runs rollout.Decide,
// the one home of the rollout's rules, so its decisions are repeatable, survive restarts and are the ones the CLI's
// dry run shows. A machine starts when it is added to TalosUpgradeStatus.Admitted, a durable decision: it holds its
// slot until MachineUpgradeStatusController has taken it to its end, so no restart can start more machines than
// allowed.
//
// It decides the cluster's config rollout in the same reconcile and from the same view (written to its
// ConfigRolloutStatus), and gives the cluster's turn (rollout.DecideCluster): a Talos upgrade, a Kubernetes upgrade
// and a config rollout of one cluster never change machines at once.
type TalosUpgradeStatusController struct {
	cfg UpgradeConfig
	now func() time.Time
}

// NewTalosUpgradeStatusController returns the controller.
func NewTalosUpgradeStatusController(cfg UpgradeConfig) *TalosUpgradeStatusController {
	return &TalosUpgradeStatusController{cfg: cfg, now: time.Now}
}

// Name implements controller.QController.
func (ctrl *TalosUpgradeStatusController) Name() string { return "TalosUpgradeStatusController" }

// Settings implements controller.QController.
func (ctrl *TalosUpgradeStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs: qInputs(cluster.ClusterType, cluster.MachineType, cluster.MachineLockType, observe.MachineStatusType,
			observe.EtcdStatusType, upgrade.MachineUpgradeStatusType, upgrade.MachineConfigStatusType, cluster.ConfigPatchType,
			upgrade.KubernetesUpgradeStatusType),
		Outputs: []controller.Output{
			{Type: upgrade.TalosUpgradeStatusType, Kind: controller.OutputExclusive},
			{Type: upgrade.ConfigRolloutStatusType, Kind: controller.OutputExclusive},
		},
		Concurrency: ctrl.cfg.concurrency(),
	}
}

// MapInput implements controller.QController.
func (ctrl *TalosUpgradeStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	return mapToCluster(ctx, r, ptr)
}

// Reconcile implements controller.QController.
func (ctrl *TalosUpgradeStatusController) Reconcile(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	view, err := ReadClusterView(ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			if err = destroyIfExists(ctx, r, upgrade.NewConfigRolloutStatus(id).Metadata()); err != nil {
				return err
			}

			return destroyIfExists(ctx, r, upgrade.NewTalosUpgradeStatus(id).Metadata())
		}

		return err
	}

	view.Now = ctrl.now()

	var prevConfig upgrade.ConfigRolloutStatusSpec

	if crs, err := safe.ReaderGetByID[*upgrade.ConfigRolloutStatus](ctx, r, id); err == nil {
		prevConfig = crs.TypedSpec().DeepCopy()
	} else if !state.IsNotFoundError(err) {
		return fmt.Errorf("reading config rollout status of cluster %q: %w", id, err)
	}

	patches, err := safe.ReaderListAll[*cluster.ConfigPatch](ctx, r, state.WithLabelQuery(resource.LabelEqual(cluster.LabelCluster, id)))
	if err != nil {
		return fmt.Errorf("listing config patches of cluster %q: %w", id, err)
	}

	view.PatchSet = cluster.PatchSet(slices.Collect(patches.All()))

	kube, err := readKubernetesUpgrade(ctx, r, id)
	if err != nil {
		return err
	}

	var recheck time.Duration

	if err = safe.WriterModify(ctx, r, upgrade.NewTalosUpgradeStatus(id), func(s *upgrade.TalosUpgradeStatus) error {
		d := rollout.DecideCluster(ctrl.cfg.policy(), view, s.TypedSpec().DeepCopy(), prevConfig, kuberollout.ClaimOf(kube), kuberollout.Target(kube))
		*s.TypedSpec(), prevConfig, recheck = d.Talos, d.Config, d.Recheck

		return nil
	}); err != nil {
		return fmt.Errorf("writing Talos upgrade status of cluster %q: %w", id, err)
	}

	// Written after the Talos status that carries the turn: a restart between the two writes decides again from a
	// turn at least as recent as any config start (an admitted config change is busy, and keeps the turn).
	if err = safe.WriterModify(ctx, r, upgrade.NewConfigRolloutStatus(id), func(s *upgrade.ConfigRolloutStatus) error {
		*s.TypedSpec() = prevConfig

		return nil
	}); err != nil {
		return fmt.Errorf("writing config rollout status of cluster %q: %w", id, err)
	}

	if recheck > 0 {
		// At most a poll interval: a requeued item stays in the controller's queue until it fires, and every event
		// queued meanwhile is checked against it, so long delays for a thousand waiting clusters would slow every
		// event; a cluster that waits on etcd is decided again each poll until the grace period ends.
		return controller.NewRequeueInterval(min(recheck, ctrl.cfg.PollInterval))
	}

	return nil
}

// ReadClusterView reads what rollout.Decide decides from for cluster id: the cluster, its machines (a label query)
// with their locks, observations and upgrades, the machines observed in it, and its etcd. The error is a not-found
// one when the cluster is gone. The CLI's dry run reads the same view over the API.
func ReadClusterView(ctx context.Context, r controller.Reader, id string) (rollout.ClusterView, error) {
	c, err := safe.ReaderGetByID[*cluster.Cluster](ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return rollout.ClusterView{}, err
		}

		return rollout.ClusterView{}, fmt.Errorf("reading cluster %q: %w", id, err)
	}

	view := rollout.ClusterView{Cluster: c.TypedSpec()}

	observed, err := safe.ReaderListAll[*observe.MachineStatus](ctx, r, state.WithLabelQuery(resource.LabelEqual(cluster.LabelCluster, id)))
	if err != nil {
		return view, fmt.Errorf("listing machine observations of cluster %q: %w", id, err)
	}

	statuses := make(map[string]*observe.MachineStatusSpec, observed.Len())

	for st := range observed.All() {
		view.Observed = append(view.Observed, st.Metadata().ID())
		statuses[st.Metadata().ID()] = st.TypedSpec()
	}

	machines, err := clusterMachines(ctx, r, id)
	if err != nil {
		return view, err
	}

	for _, m := range machines {
		mv, err := readMachineView(ctx, r, m)
		if err != nil {
			return view, err
		}

		mv.Status = statuses[mv.ID]
		view.Machines = append(view.Machines, mv)
	}

	if e, err := safe.ReaderGetByID[*observe.EtcdStatus](ctx, r, id); err == nil {
		view.Etcd = e.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return view, fmt.Errorf("reading etcd status of cluster %q: %w", id, err)
	}

	return view, nil
}

// readMachineView reads machine m with its lock and upgrade; its observation comes from the cluster's list.
func readMachineView(ctx context.Context, r controller.Reader, m *cluster.Machine) (rollout.MachineView, error) {
	id := m.Metadata().ID()
	skip, _ := m.Metadata().Annotations().Get(upgrade.SkipAnnotation)
	view := rollout.MachineView{ID: id, Role: m.TypedSpec().Role, SkipVersion: skip}

	if at, ok := m.Metadata().Annotations().Get(cluster.UnlockedAtAnnotation); ok {
		view.UnlockedAt, _ = time.Parse(time.RFC3339Nano, at) // one that does not parse counts as unknown
	}

	if _, err := safe.ReaderGetByID[*cluster.MachineLock](ctx, r, id); err == nil {
		view.Locked = true
	} else if !state.IsNotFoundError(err) {
		return view, fmt.Errorf("reading lock of machine %q: %w", id, err)
	}

	if u, err := safe.ReaderGetByID[*upgrade.MachineUpgradeStatus](ctx, r, id); err == nil {
		view.Upgrade = u.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return view, fmt.Errorf("reading upgrade of machine %q: %w", id, err)
	}

	if c, err := safe.ReaderGetByID[*upgrade.MachineConfigStatus](ctx, r, id); err == nil {
		view.Config = c.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return view, fmt.Errorf("reading config status of machine %q: %w", id, err)
	}

	return view, nil
}
