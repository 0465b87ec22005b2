package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// KubernetesUpgradeStatusController plans and runs the Kubernetes upgrade of every Cluster toward its
// kubernetesVersion (docs/architecture.md, "The Kubernetes step machine"). Its reconcile decides with
// kuberollout.Decide, the one home of the rules, and writes the steps it admits as Running before anything
// happens; then one executor goroutine per running step (kubernetes_upgrade_steps.go) makes the step's side effect
// and records how it ended, so a reconcile never waits on the fleet. After a restart a Running step is resumed and
// the observed state (the node's machine config, the mirror pod, the Node) says whether its change was made.
type KubernetesUpgradeStatusController struct {
	conn   Connector
	cfg    UpgradeConfig
	policy kuberollout.Policy
	now    func() time.Time
	exec   executors // by stepKey
}

// NewKubernetesUpgradeStatusController returns the controller; conn reaches the machines and the Kubernetes API.
func NewKubernetesUpgradeStatusController(conn Connector, cfg UpgradeConfig) *KubernetesUpgradeStatusController {
	return &KubernetesUpgradeStatusController{conn: conn, cfg: cfg, policy: kuberollout.Policy{Releases: cfg.KubernetesReleases}, now: time.Now}
}

// Name implements controller.QController.
func (ctrl *KubernetesUpgradeStatusController) Name() string {
	return "KubernetesUpgradeStatusController"
}

// Settings implements controller.QController. Its own output is an input: an executor's write of a finished step
// wakes the cluster's reconcile, which admits the next steps.
func (ctrl *KubernetesUpgradeStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs: qInputs(cluster.ClusterType, cluster.MachineType, cluster.MachineLockType, observe.MachineStatusType,
			upgrade.MachineUpgradeStatusType, upgrade.TalosUpgradeStatusType, upgrade.KubernetesUpgradeStatusType,
			cluster.CredentialsType, observe.EtcdStatusType, upgrade.MachineConfigStatusType),
		Outputs:     []controller.Output{{Type: upgrade.KubernetesUpgradeStatusType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
		RunHook:     ctrl.exec.runHook, // executors stop with the runtime; the next run resumes their steps
	}
}

// MapInput implements controller.QController.
func (ctrl *KubernetesUpgradeStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	return mapToCluster(ctx, r, ptr)
}

// Reconcile implements controller.QController.
func (ctrl *KubernetesUpgradeStatusController) Reconcile(ctx context.Context, logger *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	view, err := ReadKubernetesView(ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			ctrl.exec.stopPrefix(id + "/")

			return destroyIfExists(ctx, r, upgrade.NewKubernetesUpgradeStatus(id).Metadata())
		}

		return err
	}

	view.Now = ctrl.now()

	var next upgrade.KubernetesUpgradeStatusSpec

	if err = safe.WriterModify(ctx, r, upgrade.NewKubernetesUpgradeStatus(id), func(s *upgrade.KubernetesUpgradeStatus) error {
		next = kuberollout.Decide(ctrl.policy, view, s.TypedSpec().DeepCopy())
		*s.TypedSpec() = next

		return nil
	}); err != nil {
		return fmt.Errorf("writing Kubernetes upgrade status of cluster %q: %w", id, err)
	}

	for _, step := range next.Steps {
		if step.State == upgrade.StepRunning {
			run := &kubeStepRun{ctrl: ctrl, r: r, logger: logger.With(zap.String("cluster", id), zap.Stringer("step", step)), cluster: id, step: step}
			ctrl.exec.start(ctx, stepKey(id, step), func(ctx context.Context, _ *execution) { run.execute(ctx) })
		}
	}

	return nil
}

// ReadKubernetesView reads what kuberollout.Decide decides from for cluster id: the Talos rollout's view
// (ReadClusterView), the Cluster's retry annotation and its TalosUpgradeStatus. The CLI's dry run reads the same.
func ReadKubernetesView(ctx context.Context, r controller.Reader, id string) (kuberollout.View, error) {
	cv, err := ReadClusterView(ctx, r, id)
	if err != nil {
		return kuberollout.View{}, err
	}

	view := kuberollout.View{ClusterView: cv}

	c, err := safe.ReaderGetByID[*cluster.Cluster](ctx, r, id)
	if err != nil {
		return view, fmt.Errorf("reading cluster %q: %w", id, err)
	}

	view.Retry, _ = c.Metadata().Annotations().Get(upgrade.KubernetesRetryAnnotation)

	if t, err := safe.ReaderGetByID[*upgrade.TalosUpgradeStatus](ctx, r, id); err == nil {
		view.Talos = t.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return view, fmt.Errorf("reading Talos upgrade status of cluster %q: %w", id, err)
	}

	return view, nil
}

func stepKey(cluster string, s upgrade.KubernetesUpgradeStep) string {
	return cluster + "/" + string(s.Kind) + "/" + s.Machine + "/" + s.Version
}
