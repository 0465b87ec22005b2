package controllers_test

import (
	"context"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/state/validate"
)

// startRuntime runs a supervised runtime over a validating in-memory state until the test ends.
func startRuntime(t *testing.T, opts ...controllers.RuntimeOption) (context.Context, state.State) {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	rt := controllers.NewRuntime(st, zaptest.NewLogger(t), opts...)

	done := make(chan error, 1)

	go func() { done <- rt.Run(ctx) }()

	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	return ctx, st
}

func createFleet(ctx context.Context, t *testing.T, st state.State) {
	t.Helper()

	c := cluster.NewCluster("prod")
	*c.TypedSpec() = cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.37.2"}
	require.NoError(t, st.Create(ctx, c))

	for id, role := range map[string]cluster.Role{"cp-1": cluster.RoleControlPlane, "w-1": cluster.RoleWorker, "w-2": cluster.RoleWorker} {
		m := cluster.NewMachine(id)
		*m.TypedSpec() = cluster.MachineSpec{Cluster: "prod", Role: role, Endpoint: "127.0.0.1:50000"}
		require.NoError(t, st.Create(ctx, m))
	}
}

func TestClusterSummary(t *testing.T) {
	t.Parallel()

	ctx, st := startRuntime(t, controllers.WithRegistrars(controllers.Builtin))
	createFleet(ctx, t, st)
	require.NoError(t, st.Create(ctx, cluster.NewMachineLock("w-2")))

	rtestutils.AssertResource(ctx, t, st, "prod", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Equal(observe.ClusterSummarySpec{
			TalosVersion: "v1.14.1", KubernetesVersion: "v1.37.2",
			Machines: 3, ControlPlanes: 1, Workers: 2, Locked: []string{"w-2"},
		}, *s.TypedSpec())
		a.Equal("ClusterSummaryController", s.Metadata().Owner())
	}, rtestutils.WithNamespace(resources.Namespace))

	require.NoError(t, st.Destroy(ctx, cluster.NewMachineLock("w-2").Metadata()))

	rtestutils.AssertResource(ctx, t, st, "prod", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Empty(s.TypedSpec().Locked)
	}, rtestutils.WithNamespace(resources.Namespace))

	// A machine never moves to another cluster: it is deleted, then created there, and counts there only.
	dev := cluster.NewCluster("dev")
	*dev.TypedSpec() = cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.37.2"}
	require.NoError(t, st.Create(ctx, dev))

	_, err := st.UpdateWithConflicts(ctx, cluster.NewMachine("w-1").Metadata(), func(r resource.Resource) error {
		r.(*cluster.Machine).TypedSpec().Cluster = "dev" //nolint:forcetypeassert // the state holds Machines

		return nil
	})
	require.ErrorContains(t, err, `spec.cluster: cannot change from "prod" to "dev"`)

	require.NoError(t, st.Destroy(ctx, cluster.NewMachine("w-1").Metadata()))
	rtestutils.AssertResource(ctx, t, st, "prod", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Equal(1, s.TypedSpec().Workers)
	}, rtestutils.WithNamespace(resources.Namespace))

	moved := cluster.NewMachine("w-1")
	*moved.TypedSpec() = cluster.MachineSpec{Cluster: "dev", Role: cluster.RoleWorker, Endpoint: "127.0.0.1:50000"}
	require.NoError(t, st.Create(ctx, moved))

	rtestutils.AssertResource(ctx, t, st, "prod", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Equal(1, s.TypedSpec().Workers)
	}, rtestutils.WithNamespace(resources.Namespace))
	rtestutils.AssertResource(ctx, t, st, "dev", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Equal(1, s.TypedSpec().Workers)
	}, rtestutils.WithNamespace(resources.Namespace))

	require.NoError(t, st.Destroy(ctx, cluster.NewMachine("w-1").Metadata()))
	rtestutils.AssertResource(ctx, t, st, "dev", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Zero(s.TypedSpec().Machines)
	}, rtestutils.WithNamespace(resources.Namespace))

	destroyCluster(ctx, t, st, "prod")
	rtestutils.AssertNoResource[*observe.ClusterSummary](ctx, t, st, "prod", rtestutils.WithNamespace(resources.Namespace))
}
