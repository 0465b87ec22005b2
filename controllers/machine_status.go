package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/upshift-io/upshift/internal/machineview"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// MachineStatusController observes every Machine through its cluster's Talos API (version, stage, readiness,
// boot ID, node name) and Kubernetes (kubelet version, cordon) into a MachineStatus, again every poll interval.
// A machine that cannot be reached is reported as such, with the error and its last known state; that is an
// observation, never a controller failure. A machine whose upgrade finishes is observed again at once, so the
// observation catches up with what the upgrade's steps confirmed without waiting for the next poll.
//
// It reconciles a cluster at a time: a poll is one queued item per cluster, not per machine. COSI's controller
// queue finds an item by a linear scan, so a per-machine poll of a 10,000-machine fleet made every event scan
// 10,000 queued polls (docs/benchmarks.md). A cluster's machines are observed at once, each bounded by the observe
// timeout, so a dead machine delays neither its cluster's other machines nor other clusters.
type MachineStatusController struct {
	conn Connector
	cfg  UpgradeConfig

	// polled holds when each machine of each cluster was last observed, so a reconcile that an event brings
	// between two polls observes only what the event concerns. It is a schedule, not the truth: an entry lost or
	// dropped only makes the machine observed sooner.
	mu     sync.Mutex
	polled map[string]map[string]time.Time
}

// NewMachineStatusController returns the controller; conn reaches the machines.
func NewMachineStatusController(conn Connector, cfg UpgradeConfig) *MachineStatusController {
	return &MachineStatusController{conn: conn, cfg: cfg, polled: map[string]map[string]time.Time{}}
}

// observeConcurrency bounds how many machines of one cluster are observed at the same time.
const observeConcurrency = 16

// Name implements controller.QController.
func (ctrl *MachineStatusController) Name() string { return "MachineStatusController" }

// Settings implements controller.QController.
func (ctrl *MachineStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs: qInputs(cluster.ClusterType, cluster.MachineType, cluster.CredentialsType, observe.EtcdStatusType,
			upgrade.MachineUpgradeStatusType),
		Outputs:     []controller.Output{{Type: observe.MachineStatusType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
	}
}

// outputsNamedAfter implements namedAfter: a MachineStatus has the ID of its Machine, not of its Cluster.
func (ctrl *MachineStatusController) outputsNamedAfter() resource.Type { return cluster.MachineType }

// MapInput implements controller.QController: a Machine written and new credentials have their machines observed
// again at once, and so does an upgrade that finished after its machine's last observation; etcd changes and the
// upgrade's other updates are picked up by the next poll.
func (ctrl *MachineStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	switch ptr.Type() {
	case cluster.CredentialsType:
		ctrl.forget(ptr.ID(), "")
	case cluster.MachineType:
		if id, ok := ptr.Labels().Get(cluster.LabelCluster); ok {
			ctrl.forget(id, ptr.ID())
		}
	case upgrade.MachineUpgradeStatusType:
		return ctrl.mapUpgrade(ctx, r, ptr)
	default:
		return nil, nil
	}

	return mapToCluster(ctx, r, ptr)
}

// forget makes machine id of clusterID (every machine of it when id is empty) due for observation.
func (ctrl *MachineStatusController) forget(clusterID, id string) {
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()

	if id == "" {
		delete(ctrl.polled, clusterID)
	} else {
		delete(ctrl.polled[clusterID], id)
	}
}

// mapUpgrade maps the upgrade of a machine to its cluster when the upgrade finished after the machine's last
// observation. The upgrade is read first: most of its writes are steps, and only a finished one needs the
// observation read too.
func (ctrl *MachineStatusController) mapUpgrade(ctx context.Context, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	id := ptr.ID()

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

	return mapToCluster(ctx, r, ptr)
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

// Reconcile implements controller.QController: it observes the machines of the cluster that are due (a poll
// interval after their last observation, never observed, or their upgrade finished since), writes the
// observations that changed, and removes the statuses of machines that are gone.
func (ctrl *MachineStatusController) Reconcile(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	machines, statuses, err := ctrl.read(ctx, r, id)
	if err != nil {
		return err
	}

	for machine := range statuses {
		if !slices.ContainsFunc(machines, func(m *cluster.Machine) bool { return m.Metadata().ID() == machine }) {
			if err = destroyIfExists(ctx, r, observe.NewMachineStatus(machine).Metadata()); err != nil {
				return err
			}
		}
	}

	if len(machines) == 0 {
		ctrl.forget(id, "")

		return nil
	}

	due, err := ctrl.due(ctx, r, id, machines, statuses)
	if err != nil {
		return err
	}

	observed := make([]observe.MachineStatusSpec, len(due))
	g := new(errgroup.Group)
	g.SetLimit(observeConcurrency)

	for i, m := range due {
		prev := statuses[m.machine.Metadata().ID()]
		observed[i] = prev

		g.Go(func() error {
			observedAt := time.Now()
			ctrl.observe(ctx, r, m.machine, &observed[i])
			date(prev, &observed[i], m.upgrade, observedAt)

			return nil
		})
	}

	_ = g.Wait() //nolint:errcheck // an observation reports its errors in the status, never here

	for i, m := range due {
		if err = safe.WriterModify(ctx, r, observe.NewMachineStatus(m.machine.Metadata().ID()), func(s *observe.MachineStatus) error {
			*s.TypedSpec() = observed[i]
			s.Metadata().Labels().Set(cluster.LabelCluster, id)

			return nil
		}); err != nil {
			return fmt.Errorf("writing status of machine %q: %w", m.machine.Metadata().ID(), err)
		}
	}

	return controller.NewRequeueInterval(ctrl.cfg.PollInterval)
}

// read lists the Machines of cluster id (none when the cluster is gone: its machines are not observed) and the
// statuses this controller wrote for it.
func (ctrl *MachineStatusController) read(ctx context.Context, r controller.Reader, id string) ([]*cluster.Machine, map[string]observe.MachineStatusSpec, error) {
	list, err := safe.ReaderListAll[*observe.MachineStatus](ctx, r, state.WithLabelQuery(resource.LabelEqual(cluster.LabelCluster, id)))
	if err != nil {
		return nil, nil, fmt.Errorf("listing machine statuses of cluster %q: %w", id, err)
	}

	statuses := make(map[string]observe.MachineStatusSpec, list.Len())
	for s := range list.All() {
		statuses[s.Metadata().ID()] = s.TypedSpec().DeepCopy()
	}

	if _, err = safe.ReaderGetByID[*cluster.Cluster](ctx, r, id); err != nil {
		if state.IsNotFoundError(err) {
			return nil, statuses, nil
		}

		return nil, nil, fmt.Errorf("reading cluster %q: %w", id, err)
	}

	machines, err := clusterMachines(ctx, r, id)

	return machines, statuses, err
}

// dueMachine is a machine to observe now, with its upgrade (nil for none).
type dueMachine struct {
	machine *cluster.Machine
	upgrade *upgrade.MachineUpgradeStatusSpec
}

// due picks the machines of cluster id to observe now and books them as observed.
func (ctrl *MachineStatusController) due(ctx context.Context, r controller.Reader, id string, machines []*cluster.Machine,
	statuses map[string]observe.MachineStatusSpec,
) ([]dueMachine, error) {
	now := time.Now()

	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()

	polled := ctrl.polled[id]
	if polled == nil {
		polled = map[string]time.Time{}
		ctrl.polled[id] = polled
	}

	var out []dueMachine

	for _, m := range machines {
		mid := m.Metadata().ID()

		up, err := readUpgrade(ctx, r, mid) // the observation itself comes with the statuses
		if err != nil {
			return nil, err
		}

		status, seen := statuses[mid]
		last, booked := polled[mid]

		if seen && booked && now.Sub(last) < ctrl.cfg.PollInterval && !finishedSince(&status, up) {
			continue
		}

		polled[mid] = now
		out = append(out, dueMachine{machine: m, upgrade: up})
	}

	for mid := range polled {
		if !slices.ContainsFunc(machines, func(m *cluster.Machine) bool { return m.Metadata().ID() == mid }) {
			delete(polled, mid)
		}
	}

	return out, nil
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
