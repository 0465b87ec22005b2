package controllers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
)

// EtcdStatusController observes the etcd of every Cluster through its control planes' Talos API: the member list,
// each member's own health, the leader, and whether one member may leave without losing quorum (the etcd gate of
// rollout.EtcdGate). It polls like MachineStatusController; the rollout reads it before starting a control plane,
// and a control plane's upgrade checks etcd afresh before it leaves.
type EtcdStatusController struct {
	conn Connector
	cfg  UpgradeConfig
}

// NewEtcdStatusController returns the controller; conn reaches the control planes.
func NewEtcdStatusController(conn Connector, cfg UpgradeConfig) *EtcdStatusController {
	return &EtcdStatusController{conn: conn, cfg: cfg}
}

// Name implements controller.QController.
func (ctrl *EtcdStatusController) Name() string { return "EtcdStatusController" }

// Settings implements controller.QController.
func (ctrl *EtcdStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs:      qInputs(cluster.ClusterType, cluster.MachineType, cluster.CredentialsType),
		Outputs:     []controller.Output{{Type: observe.EtcdStatusType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
	}
}

// MapInput implements controller.QController.
func (ctrl *EtcdStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	return mapToCluster(ctx, r, ptr)
}

// Reconcile implements controller.QController.
func (ctrl *EtcdStatusController) Reconcile(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	if _, err := safe.ReaderGetByID[*cluster.Cluster](ctx, r, id); err != nil {
		if state.IsNotFoundError(err) {
			return destroyIfExists(ctx, r, observe.NewEtcdStatus(id).Metadata())
		}

		return fmt.Errorf("reading cluster %q: %w", id, err)
	}

	cps, endpoint, err := controlPlanes(ctx, r, id)
	if err != nil {
		return err
	}

	var spec observe.EtcdStatusSpec

	if len(cps) == 0 {
		spec.Error = "the cluster has no control-plane machine"
	} else {
		spec = ctrl.observe(ctx, r, id, endpoint, cps)
	}

	if err = safe.WriterModify(ctx, r, observe.NewEtcdStatus(id), func(s *observe.EtcdStatus) error {
		*s.TypedSpec() = spec

		return nil
	}); err != nil {
		return fmt.Errorf("writing etcd status of cluster %q: %w", id, err)
	}

	return controller.NewRequeueInterval(ctrl.cfg.PollInterval)
}

func (ctrl *EtcdStatusController) observe(ctx context.Context, r controller.Reader, clusterID, endpoint string, cps []string) observe.EtcdStatusSpec {
	ctx, cancel := context.WithTimeout(ctx, ctrl.cfg.ObserveTimeout)
	defer cancel()

	access, err := readAccess(ctx, r, clusterID, endpoint)
	if err != nil {
		return observe.EtcdStatusSpec{Error: err.Error()}
	}

	api, err := ctrl.conn.Talos(ctx, access)
	if err != nil {
		return observe.EtcdStatusSpec{Error: err.Error()}
	}

	return observeEtcd(ctx, api, cps)
}

// observeEtcd asks every control plane of cps (machine IDs, which are their Talos node names) for its member's
// status, and the first that answers for the member list.
func observeEtcd(ctx context.Context, api talos.Etcd, cps []string) observe.EtcdStatusSpec {
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		statuses = map[uint64]talos.EtcdMemberStatus{}
	)

	for _, cp := range cps {
		wg.Go(func() {
			st, err := api.EtcdMemberStatus(ctx, cp)
			if err != nil {
				return // an unanswered status makes the member unhealthy below
			}

			mu.Lock()
			statuses[st.MemberID] = st
			mu.Unlock()
		})
	}

	var (
		list []talos.EtcdMember
		errs []error
	)

	for _, cp := range cps {
		members, err := api.EtcdMembers(ctx, cp)
		if err == nil {
			list = members

			break
		}

		errs = append(errs, err)
	}

	wg.Wait()

	if list == nil {
		return observe.EtcdStatusSpec{Error: fmt.Sprintf("no control plane listed the etcd members: %v", errors.Join(errs...))}
	}

	var spec observe.EtcdStatusSpec

	spec.Healthy = len(list) > 0

	for _, m := range list {
		st, answered := statuses[m.ID]
		member := observe.EtcdMember{
			ID:      talos.MemberID(m.ID),
			Started: m.Hostname != "",
			Healthy: answered && len(st.Errors) == 0,
			Learner: m.Learner,
		}

		if slices.Contains(cps, m.Hostname) {
			member.Machine = m.Hostname
		}

		spec.Members = append(spec.Members, member)
		spec.Healthy = spec.Healthy && member.Started && member.Healthy

		if answered && st.Leader != 0 {
			spec.Leader = talos.MemberID(st.Leader)
		}
	}

	slices.SortFunc(spec.Members, func(a, b observe.EtcdMember) int { return cmp.Compare(a.ID, b.ID) })

	spec.CanLoseMember, spec.Reason = rollout.ObservedCanLoseAny(spec)

	return spec
}

// controlPlanes lists the control-plane machines of clusterID, sorted, and the endpoint of the first one.
func controlPlanes(ctx context.Context, r controller.Reader, clusterID string) (ids []string, endpoint string, err error) {
	machines, err := clusterMachines(ctx, r, clusterID)
	if err != nil {
		return nil, "", err
	}

	for _, m := range machines {
		if m.TypedSpec().Role == cluster.RoleControlPlane {
			ids = append(ids, m.Metadata().ID())

			if endpoint == "" {
				endpoint = m.TypedSpec().Endpoint
			}
		}
	}

	return ids, endpoint, nil
}
