package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/machineview"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// MachineStatusController observes every Machine through its cluster's Talos API (version, stage, readiness,
// boot ID, node name) and Kubernetes (kubelet version, cordon) into a MachineStatus, again every poll interval.
// A machine that cannot be reached is reported as such, with the error and its last known state; that is an
// observation, never a controller failure. Each observation is bounded by the observe timeout, so a dead machine
// holds one worker for that long at most. A machine whose upgrade finishes is observed again at once, so the
// observation catches up with what the upgrade's steps confirmed without waiting for the next poll.
type MachineStatusController struct {
	conn Connector
	cfg  UpgradeConfig
}

// NewMachineStatusController returns the controller; conn reaches the machines.
func NewMachineStatusController(conn Connector, cfg UpgradeConfig) *MachineStatusController {
	return &MachineStatusController{conn: conn, cfg: cfg}
}

// Name implements controller.QController.
func (ctrl *MachineStatusController) Name() string { return "MachineStatusController" }

// Settings implements controller.QController.
func (ctrl *MachineStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs:      qInputs(cluster.MachineType, cluster.CredentialsType, observe.EtcdStatusType, upgrade.MachineUpgradeStatusType),
		Outputs:     []controller.Output{{Type: observe.MachineStatusType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
	}
}

// MapInput implements controller.QController: new credentials re-observe the cluster's machines at once, and so
// does an upgrade that finished after its machine's last observation; etcd changes and the upgrade's other
// updates are picked up by the next poll.
func (ctrl *MachineStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	switch ptr.Type() {
	case cluster.CredentialsType:
		return machinePointers(ctx, r, ptr.ID())
	case upgrade.MachineUpgradeStatusType:
		return ctrl.mapUpgrade(ctx, r, ptr.ID())
	default:
		return nil, nil
	}
}

// mapUpgrade re-observes machine id when its upgrade finished after its last observation. The upgrade is read
// first: most of its writes are steps, and only a finished one needs the observation read too.
func (ctrl *MachineStatusController) mapUpgrade(ctx context.Context, r controller.Reader, id string) ([]resource.Pointer, error) {
	up, err := readUpgrade(ctx, r, id)
	if err != nil || !finished(up) {
		return nil, err
	}

	var status *observe.MachineStatusSpec

	if s, err := safe.ReaderGetByID[*observe.MachineStatus](ctx, r, id); err == nil {
		status = s.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return nil, fmt.Errorf("reading status of machine %q: %w", id, err)
	}

	if !finishedSince(status, up) {
		return nil, nil
	}

	return []resource.Pointer{cluster.NewMachine(id).Metadata()}, nil
}

// readUpgrade reads the upgrade of machine id, nil when it has none.
func readUpgrade(ctx context.Context, r controller.Reader, id string) (*upgrade.MachineUpgradeStatusSpec, error) {
	u, err := safe.ReaderGetByID[*upgrade.MachineUpgradeStatus](ctx, r, id)

	switch {
	case err == nil:
		return u.TypedSpec(), nil
	case state.IsNotFoundError(err):
		return nil, nil
	default:
		return nil, fmt.Errorf("reading upgrade of machine %q: %w", id, err)
	}
}

// Reconcile implements controller.QController.
func (ctrl *MachineStatusController) Reconcile(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	machine, err := safe.ReaderGetByID[*cluster.Machine](ctx, r, ptr.ID())
	if err != nil && !state.IsNotFoundError(err) {
		return fmt.Errorf("reading machine %q: %w", ptr.ID(), err)
	}

	if machine == nil {
		return destroyIfExists(ctx, r, observe.NewMachineStatus(ptr.ID()).Metadata())
	}

	up, err := readUpgrade(ctx, r, ptr.ID()) // the observation itself comes with the write below
	if err != nil {
		return err
	}

	if err = safe.WriterModify(ctx, r, observe.NewMachineStatus(ptr.ID()), func(s *observe.MachineStatus) error {
		prev, observedAt := s.TypedSpec().DeepCopy(), time.Now()
		ctrl.observe(ctx, r, machine, s.TypedSpec())
		date(prev, s.TypedSpec(), up, observedAt)
		s.Metadata().Labels().Set(cluster.LabelCluster, s.TypedSpec().Cluster)

		return nil
	}); err != nil {
		return fmt.Errorf("writing status of machine %q: %w", ptr.ID(), err)
	}

	return controller.NewRequeueInterval(ctrl.cfg.PollInterval)
}

// observe updates spec with what can be seen of machine now; what cannot be seen keeps its last known value.
func (ctrl *MachineStatusController) observe(ctx context.Context, r controller.Reader, machine *cluster.Machine, spec *observe.MachineStatusSpec) {
	ctx, cancel := context.WithTimeout(ctx, ctrl.cfg.ObserveTimeout)
	defer cancel()

	id := machine.Metadata().ID()
	spec.Cluster = machine.TypedSpec().Cluster

	access, err := readAccess(ctx, r, spec.Cluster, machine.TypedSpec().Endpoint)
	if err != nil {
		spec.Reachable, spec.Error = false, err.Error()

		return
	}

	if err = ctrl.observeTalos(ctx, access, id, spec); err != nil {
		spec.Reachable, spec.Error = false, err.Error()
	} else {
		spec.Reachable, spec.Error = true, ""
	}

	spec.KubernetesError = ""

	if err = ctrl.observeKubernetes(ctx, access, nodeName(id, spec.NodeName), spec); err != nil && !errors.Is(err, ErrNoKubernetes) {
		spec.KubernetesError = err.Error()
	}

	spec.EtcdMember = ""

	if etcd, err := safe.ReaderGetByID[*observe.EtcdStatus](ctx, r, spec.Cluster); err == nil {
		for _, member := range etcd.TypedSpec().Members {
			if member.Machine == id {
				spec.EtcdMember = member.ID
			}
		}
	}
}

// date sets the ObservedAt of spec, an observation started at observedAt over prev, given the machine's upgrade
// (nil without one). A poll that finds nothing new keeps the old date, so it writes nothing; one that comes after
// the upgrade finished is dated, since views tell from the date whether the end of the upgrade was observed
// (machineview.Stale). A machine that cannot be reached keeps its last known version, and after an upgrade that
// finished since the last observation that is the version the upgrade confirmed.
func date(prev observe.MachineStatusSpec, spec *observe.MachineStatusSpec, up *upgrade.MachineUpgradeStatusSpec, observedAt time.Time) {
	stale := finishedSince(&prev, up)

	if !spec.Reachable && stale && up.Phase == upgrade.MachineDone {
		spec.TalosVersion = up.ToVersion
	}

	spec.ObservedAt = prev.ObservedAt

	if *spec != prev || stale {
		spec.ObservedAt = observedAt
	}
}

// finishedSince reports whether the machine's upgrade finished (Done or Failed) after status was observed: only
// then is the machine observed again at once and the observation dated anew, one observation per machine and hop
// rather than one per step, which would double a rollout's writes.
func finishedSince(status *observe.MachineStatusSpec, up *upgrade.MachineUpgradeStatusSpec) bool {
	return finished(up) && machineview.Stale(status, up)
}

// finished reports whether the upgrade up (nil for none) has ended, Done or Failed.
func finished(up *upgrade.MachineUpgradeStatusSpec) bool {
	return up != nil && (up.Phase == upgrade.MachineDone || up.Phase == upgrade.MachineFailed)
}

func (ctrl *MachineStatusController) observeTalos(ctx context.Context, access ClusterAccess, id string, spec *observe.MachineStatusSpec) error {
	api, err := ctrl.conn.Talos(ctx, access)
	if err != nil {
		return err
	}

	st, err := api.MachineStatus(ctx, id)
	if err != nil {
		return err
	}

	spec.TalosVersion, spec.Stage, spec.Ready, spec.BootID, spec.NodeName = st.Version, st.Stage, st.Ready, st.BootID, st.NodeName

	return nil
}

func (ctrl *MachineStatusController) observeKubernetes(ctx context.Context, access ClusterAccess, node string, spec *observe.MachineStatusSpec) error {
	nodes, err := ctrl.conn.Kubernetes(ctx, access)
	if err != nil {
		return err
	}

	n, err := nodes.Node(ctx, node)
	if err != nil {
		return err
	}

	spec.KubeletVersion, spec.Cordoned = n.KubeletVersion, n.Cordoned

	return nil
}

// nodeName is the Kubernetes node name of machine id: the one Talos reports, else the machine ID (the emulator's
// and most installations' convention).
func nodeName(id, observed string) string {
	if observed != "" {
		return observed
	}

	return id
}

// destroyIfExists destroys the output ptr names, if there is one.
func destroyIfExists(ctx context.Context, r controller.Writer, ptr resource.Pointer) error {
	if err := r.Destroy(ctx, ptr); err != nil && !state.IsNotFoundError(err) {
		return fmt.Errorf("destroying %s %q: %w", resources.DisplayType(ptr.Type()), ptr.ID(), err)
	}

	return nil
}
