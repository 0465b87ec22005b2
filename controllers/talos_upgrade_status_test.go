package controllers_test

import (
	"context"
	"testing"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/validate"
)

// TestTalosUpgradeStatusController runs the controller alone, its inputs written by the test as the other
// controllers would: Cluster, Machines, their observations and the cluster's etcd in, TalosUpgradeStatus out.
func TestTalosUpgradeStatusController(t *testing.T) {
	t.Parallel()

	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	cfg := controllers.NewUpgradeConfig()
	ctx := startEngine(t, st, zaptest.NewLogger(t), func(engine controller.Engine) error {
		return engine.RegisterQController(controllers.NewTalosUpgradeStatusController(cfg))
	})

	c := cluster.NewCluster("c1")
	*c.TypedSpec() = cluster.ClusterSpec{TalosVersion: v13, KubernetesVersion: "v1.33.7"}
	require.NoError(t, st.Create(ctx, c))

	for id, role := range map[string]cluster.Role{"cp-1": cluster.RoleControlPlane, "w-1": cluster.RoleWorker} {
		m := cluster.NewMachine(id)
		*m.TypedSpec() = cluster.MachineSpec{Cluster: "c1", Role: role, Endpoint: "127.0.0.1:50000"}
		require.NoError(t, st.Create(ctx, m))
		observed(ctx, t, st, id, v13)
	}

	etcd := observe.NewEtcdStatus("c1")
	*etcd.TypedSpec() = observe.EtcdStatusSpec{
		Members: []observe.EtcdMember{{ID: "1", Machine: "cp-1", Started: true, Healthy: true}}, Leader: "1", Healthy: true, CanLoseMember: true,
	}
	require.NoError(t, st.Create(ctx, etcd, state.WithCreateOwner("EtcdStatusController")))

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseDone, s.Phase, "%+v", s)
		a.Equal(2, s.Done)
	})

	_, err := safeUpdateCluster(ctx, st, func(s *cluster.ClusterSpec) { s.TalosVersion = v14 })
	require.NoError(t, err)

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal([]string{"cp-1"}, s.Admitted, "the control plane first")
		a.Equal([]string{v14}, s.Plan)
		a.Equal(v14, s.Target)
	})

	// An observation of the cluster whose Machine the read does not have (here: never created) is a partial view:
	// nothing is decided from it, so the worker cannot be started as if the cluster had no more control planes.
	observed(ctx, t, st, "cp-2", v13)

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhasePending, s.Phase)
		a.Contains(s.Reason, "observed but not read: cp-2")
	})

	require.NoError(t, st.Destroy(ctx, observe.NewMachineStatus("cp-2").Metadata(), state.WithDestroyOwner("MachineStatusController")))
	destroyCluster(ctx, t, st, "c1")
	rtestutils.AssertNoResource[*upgrade.TalosUpgradeStatus](ctx, t, st, "c1", rtestutils.WithNamespace(resources.Namespace))
}

// observed writes machine id's observation on version, as MachineStatusController does.
func observed(ctx context.Context, t *testing.T, st state.State, id, version string) {
	t.Helper()

	ms := observe.NewMachineStatus(id)
	ms.Metadata().Labels().Set(cluster.LabelCluster, "c1")
	*ms.TypedSpec() = observe.MachineStatusSpec{Cluster: "c1", TalosVersion: version, Reachable: true}
	require.NoError(t, st.Create(ctx, ms, state.WithCreateOwner("MachineStatusController")))
}

func safeUpdateCluster(ctx context.Context, st state.State, set func(*cluster.ClusterSpec)) (resource.Resource, error) {
	return st.UpdateWithConflicts(ctx, cluster.NewCluster("c1").Metadata(), func(r resource.Resource) error {
		set(r.(*cluster.Cluster).TypedSpec()) //nolint:forcetypeassert // the state holds Clusters

		return nil
	})
}

// TestTalosReleasesController: the engine's catalogue is published for clients, and reads back as the same one.
func TestTalosReleasesController(t *testing.T) {
	t.Parallel()

	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	catalogue := versions.NewCatalogue()
	require.NoError(t, catalogue.Add("v1.14.1", "v1.14.1-custom"))
	require.NoError(t, catalogue.Add("v1.13.4", ""))

	ctx := startEngine(t, st, zaptest.NewLogger(t), func(engine controller.Engine) error {
		return engine.RegisterController(controllers.NewTalosReleasesController(catalogue))
	})

	rtestutils.AssertResource(ctx, t, st, upgrade.TalosReleasesID, func(r *upgrade.TalosReleases, a *assert.Assertions) {
		a.Equal([]upgrade.TalosRelease{{Version: "v1.13.4", InstallerTag: "v1.13.4"}, {Version: "v1.14.1", InstallerTag: "v1.14.1-custom"}}, r.TypedSpec().Releases)

		back, err := controllers.CatalogueOf(r.TypedSpec())
		a.NoError(err)
		a.Equal(catalogue.Releases(), back.Releases())
	}, rtestutils.WithNamespace(resources.Namespace))
}

// destroyCluster deletes a cluster the way a user must: its machines first (the validating state refuses to delete
// a Cluster that still has Machines).
func destroyCluster(ctx context.Context, t *testing.T, st state.State, id string) {
	t.Helper()

	machines, err := st.List(ctx, cluster.NewMachine("").Metadata(), state.WithLabelQuery(resource.LabelEqual(cluster.LabelCluster, id)))
	require.NoError(t, err)

	for _, m := range machines.Items {
		require.NoError(t, st.Destroy(ctx, m.Metadata()))
	}

	require.NoError(t, st.Destroy(ctx, cluster.NewCluster(id).Metadata()))
}
