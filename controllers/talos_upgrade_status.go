package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// ClusterLabel is set on the per-machine outputs (MachineStatus, MachineUpgradeStatus) to the machine's cluster,
// so users and tools can select one cluster's (`-l upshift.dev/cluster=c1`).
const ClusterLabel = "upshift.dev/cluster"

// TalosUpgradeStatusController plans and schedules the Talos rollout of every Cluster, and reports it in the
// cluster's TalosUpgradeStatus. It never calls Talos: it decides from resources, so its decisions are repeatable
// and survive restarts.
//
// Planning (internal/versions): the hops from the machines' versions to the cluster's target, refused with the
// reason when the target cannot run the cluster's Kubernetes version. Scheduling (rollout.Schedule): control
// planes first and one at a time, behind the etcd gate; then workers up to the parallelism, counted over the
// cluster; locked machines skipped and listed; a failed machine halts new starts; a pause too. A machine starts
// when it is added to TalosUpgradeStatus.Admitted, a durable decision: it holds its slot until
// MachineUpgradeStatusController has taken it to its end, so no restart can start more machines than allowed.
type TalosUpgradeStatusController struct {
	cfg   UpgradeConfig
	index *machineIndex
}

// NewTalosUpgradeStatusController returns the controller.
func NewTalosUpgradeStatusController(cfg UpgradeConfig) *TalosUpgradeStatusController {
	return &TalosUpgradeStatusController{cfg: cfg, index: newMachineIndex()}
}

// Name implements controller.QController.
func (ctrl *TalosUpgradeStatusController) Name() string { return "TalosUpgradeStatusController" }

// Settings implements controller.QController.
func (ctrl *TalosUpgradeStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs: qInputs(cluster.ClusterType, cluster.MachineType, cluster.MachineLockType, observe.MachineStatusType,
			observe.EtcdStatusType, upgrade.MachineUpgradeStatusType),
		Outputs:     []controller.Output{{Type: upgrade.TalosUpgradeStatusType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
	}
}

// MapInput implements controller.QController.
func (ctrl *TalosUpgradeStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	return ctrl.index.clusters(ctx, r, ptr)
}

// Reconcile implements controller.QController.
func (ctrl *TalosUpgradeStatusController) Reconcile(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	c, err := safe.ReaderGetByID[*cluster.Cluster](ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return destroyIfExists(ctx, r, upgrade.NewTalosUpgradeStatus(id).Metadata())
		}

		return fmt.Errorf("reading cluster %q: %w", id, err)
	}

	ids, err := ctrl.index.machines(ctx, r, id)
	if err != nil {
		return err
	}

	machines, err := readClusterView(ctx, r, id, ids)
	if err != nil {
		return err
	}

	var etcd *observe.EtcdStatusSpec

	if e, err := safe.ReaderGetByID[*observe.EtcdStatus](ctx, r, id); err == nil {
		etcd = e.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return fmt.Errorf("reading etcd status of cluster %q: %w", id, err)
	}

	if err = safe.WriterModify(ctx, r, upgrade.NewTalosUpgradeStatus(id), func(s *upgrade.TalosUpgradeStatus) error {
		*s.TypedSpec() = Decide(ctrl.cfg.Catalogue, c.TypedSpec(), machines, etcd, s.TypedSpec().DeepCopy())

		return nil
	}); err != nil {
		return fmt.Errorf("writing Talos upgrade status of cluster %q: %w", id, err)
	}

	return nil
}

// MachineView is what the rollout knows of one machine of the cluster.
type MachineView struct {
	ID     string
	Role   cluster.Role
	Locked bool
	// SkipVersion is the value of the machine's upgrade.SkipAnnotation.
	SkipVersion string
	// Status is the last observation; nil before the first.
	Status *observe.MachineStatusSpec
	// Upgrade is the machine's current or last upgrade; nil when it never had one.
	Upgrade *upgrade.MachineUpgradeStatusSpec
}

// Version is the Talos version the machine runs: the one its finished upgrade verified, else the observed one.
func (m MachineView) Version() string {
	if m.Upgrade != nil && m.Upgrade.Phase == upgrade.MachineDone {
		return m.Upgrade.ToVersion
	}

	if m.Status != nil {
		return m.Status.TalosVersion
	}

	return ""
}

// readClusterView reads the machines ids of clusterID with their lock, observation and upgrade.
func readClusterView(ctx context.Context, r controller.Reader, clusterID string, ids []string) ([]MachineView, error) {
	out := make([]MachineView, 0, len(ids))

	for _, id := range ids {
		m, err := safe.ReaderGetByID[*cluster.Machine](ctx, r, id)
		if state.IsNotFoundError(err) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("reading machine %q: %w", id, err)
		}

		if m.TypedSpec().Cluster != clusterID {
			continue
		}

		skip, _ := m.Metadata().Annotations().Get(upgrade.SkipAnnotation)
		view := MachineView{ID: id, Role: m.TypedSpec().Role, SkipVersion: skip}

		if _, err = safe.ReaderGetByID[*cluster.MachineLock](ctx, r, id); err == nil {
			view.Locked = true
		} else if !state.IsNotFoundError(err) {
			return nil, fmt.Errorf("reading lock of machine %q: %w", id, err)
		}

		if st, err := safe.ReaderGetByID[*observe.MachineStatus](ctx, r, id); err == nil {
			view.Status = st.TypedSpec()
		} else if !state.IsNotFoundError(err) {
			return nil, fmt.Errorf("reading status of machine %q: %w", id, err)
		}

		if u, err := safe.ReaderGetByID[*upgrade.MachineUpgradeStatus](ctx, r, id); err == nil {
			view.Upgrade = u.TypedSpec()
		} else if !state.IsNotFoundError(err) {
			return nil, fmt.Errorf("reading upgrade of machine %q: %w", id, err)
		}

		out = append(out, view)
	}

	return out, nil
}

// Decide computes a cluster's TalosUpgradeStatus from what the rollout knows, given the previous one (whose Plan,
// Admitted and revert state it carries on). It is pure: no I/O, no clock.
func Decide(catalogue *versions.Catalogue, c *cluster.ClusterSpec, machines []MachineView, etcd *observe.EtcdStatusSpec, prev upgrade.TalosUpgradeStatusSpec) upgrade.TalosUpgradeStatusSpec {
	next := prev
	target := c.TalosVersion

	hosts, unobserved := make([]string, 0, len(machines)), []string(nil)

	for _, m := range machines {
		if v := m.Version(); v != "" {
			hosts = append(hosts, v)
		} else {
			unobserved = append(unobserved, m.ID)
		}
	}

	if len(machines) == 0 || len(unobserved) > 0 {
		next.Phase, next.ToVersion = upgrade.PhasePending, target
		next.Reason = "waiting for the machines to be observed: " + strings.Join(unobserved, ", ")

		if len(machines) == 0 {
			next.Reason = "the cluster has no observed machine yet"
		}

		return next
	}

	next.AvailableVersions = availableVersions(catalogue, hosts, c.KubernetesVersion)

	if !sameVersion(prev.ToVersion, target) || len(prev.Plan) == 0 || prev.Phase == upgrade.PhaseDone {
		plan, err := catalogue.Plan(hosts, c.KubernetesVersion, target)
		if err != nil {
			next.Phase, next.ToVersion, next.Error, next.Reason = upgrade.PhaseBlocked, target, err.Error(), ""
			next.Plan, next.Target, next.Admitted, next.Current, next.FailedMachine = nil, "", nil, nil, ""

			return next
		}

		next.Reverting = !sameVersion(prev.ToVersion, target) && prev.Phase != upgrade.PhaseDone && prev.ToVersion != "" &&
			sameVersion(prev.FromVersion, target)

		next.FromVersion = joinReleases(plan.From)
		if next.Reverting {
			next.FromVersion = prev.ToVersion
		}

		next.ToVersion, next.Direction, next.Plan = target, plan.Direction.String(), nil
		for _, hop := range plan.Hops {
			next.Plan = append(next.Plan, hop.Version.Tag())
		}
	}

	hop := currentHop(next.Plan, machines, target)
	if !sameVersion(hop, next.Target) {
		next.Admitted = nil // pending starts were toward the previous hop
	}

	next.Target = hop

	return schedule(c, machines, etcd, next)
}

// schedule runs the rollout rules for the current hop and fills in the phase and progress.
func schedule(c *cluster.ClusterSpec, machines []MachineView, etcd *observe.EtcdStatusSpec, next upgrade.TalosUpgradeStatusSpec) upgrade.TalosUpgradeStatusSpec {
	hop := next.Target
	leader := ""

	if etcd != nil {
		for _, m := range etcd.Members {
			if m.ID == etcd.Leader {
				leader = m.Machine
			}
		}
	}

	var (
		in       = rollout.Input{Target: hop, Paused: c.Paused}
		admitted []string
		blocked  string
		started  bool
	)

	if p, err := cluster.ParseParallelism(c.Parallelism); err == nil {
		in.Parallelism = p
	}

	for _, m := range machines {
		rm := rollout.Machine{
			ID: m.ID, Role: rollout.Worker, Locked: m.Locked, EtcdLeader: m.ID == leader, Version: m.Version(),
			Skipped: m.SkipVersion != "" && sameVersion(m.SkipVersion, next.ToVersion),
		}

		if m.Role == cluster.RoleControlPlane {
			rm.Role = rollout.ControlPlane
		}

		if u := m.Upgrade; u != nil {
			rm.Phase, rm.PhaseTarget = rollout.Phase(u.Phase), u.ToVersion
			started = started || sameVersion(u.ToVersion, hop)

			if u.Phase == upgrade.MachineCheckingEtcd && u.Waiting != "" {
				blocked = m.ID + ": " + u.Waiting
			}
		}

		if slices.Contains(next.Admitted, m.ID) && pendingStart(m, hop) {
			// Admitted but not yet taken up by its controller: it holds its slot already.
			rm.Phase, rm.PhaseTarget = rollout.PhasePullingImage, hop
			admitted = append(admitted, m.ID)
		}

		in.Machines = append(in.Machines, rm)
	}

	d := rollout.Schedule(in)

	for _, id := range d.Start {
		if i := slices.IndexFunc(machines, func(m MachineView) bool { return m.ID == id }); machines[i].Role == cluster.RoleControlPlane {
			if ok, reason := controlPlaneMayLeave(etcd, id); !ok {
				blocked = fmt.Sprintf("control plane %s waits for etcd: %s", id, reason)

				continue
			}
		}

		admitted = append(admitted, id)
	}

	slices.Sort(admitted)

	current := append(slices.Clone(d.InFlight), admitted...)
	slices.Sort(current)

	next.Admitted, next.Current = admitted, slices.Compact(current)
	next.Done, next.Total, next.WaitingOnLock, next.Reason = d.Finished, d.Total, d.WaitingOnLock, d.Reason
	next.Error, next.FailedMachine = "", ""

	switch {
	case d.Done && (len(next.Plan) == 0 || sameVersion(hop, next.Plan[len(next.Plan)-1])):
		next.Phase, next.Admitted, next.Current, next.Reason, next.Reverting = upgrade.PhaseDone, nil, nil, "", false
	case len(d.Failed) > 0:
		next.Phase, next.FailedMachine = upgrade.PhaseFailed, d.Failed[0]
		next.Error = d.Failed[0] + ": " + failure(machines, d.Failed[0])
	case c.Paused:
		next.Phase = upgrade.PhasePaused
	case blocked != "":
		next.Phase, next.Error = upgrade.PhaseBlocked, blocked
	case next.Reverting:
		next.Phase = upgrade.PhaseReverting
	case len(next.Current) == 0 && !started && d.Finished < d.Total:
		next.Phase = upgrade.PhasePending
	default:
		next.Phase = upgrade.PhaseUpgrading
	}

	return next
}

// pendingStart reports whether an admitted machine has not been taken up toward hop yet.
func pendingStart(m MachineView, hop string) bool {
	if m.Locked || sameVersion(m.Version(), hop) {
		return false
	}

	u := m.Upgrade

	switch {
	case u == nil, u.Phase == upgrade.MachineQueued:
		return true
	case u.Phase == upgrade.MachineDone, u.Phase == upgrade.MachineFailed:
		return !sameVersion(u.ToVersion, hop)
	default:
		return false
	}
}

func controlPlaneMayLeave(etcd *observe.EtcdStatusSpec, machine string) (bool, string) {
	if etcd == nil {
		return false, "etcd has not been observed yet"
	}

	return etcdGate(*etcd, machine)
}

func failure(machines []MachineView, id string) string {
	for _, m := range machines {
		if m.ID == id && m.Upgrade != nil {
			return m.Upgrade.Error
		}
	}

	return "failed"
}

// currentHop is the first hop of plan that some machine (not skipped) has not reached yet; the last hop once all
// have; target when there is no plan.
func currentHop(plan []string, machines []MachineView, target string) string {
	if len(plan) == 0 {
		return target
	}

	hop := len(plan) - 1

	for _, m := range machines {
		if m.SkipVersion != "" && sameVersion(m.SkipVersion, target) {
			continue
		}

		reached := slices.IndexFunc(plan, func(v string) bool { return sameVersion(v, m.Version()) })
		hop = min(hop, reached+1)
	}

	return plan[hop]
}

func availableVersions(catalogue *versions.Catalogue, hosts []string, kubernetes string) []string {
	choices, err := catalogue.Choices(hosts, kubernetes)
	if err != nil {
		return nil
	}

	out := make([]string, 0, len(choices))
	for _, choice := range choices {
		out = append(out, choice.Release.Version.Tag())
	}

	return out
}

func joinReleases(vs []versions.Version) string {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		out = append(out, v.Tag())
	}

	return strings.Join(out, ",")
}

// sameVersion compares versions as Talos writes them, with or without the leading "v".
func sameVersion(a, b string) bool {
	return strings.TrimPrefix(a, "v") == strings.TrimPrefix(b, "v")
}
