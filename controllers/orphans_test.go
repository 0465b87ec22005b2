package controllers_test

import (
	"context"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/validate"
)

// A Cluster and a Machine deleted while the controller runtime is stopped (as between two runs of a restarting
// Runtime) leave outputs no reconcile of the next run would visit; the next run removes them, and leaves the
// outputs of what still exists alone.
func TestOrphanedOutputsAreRemovedWhenTheRuntimeStartsAgain(t *testing.T) {
	t.Parallel()

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	f := newFakeFleet(v13, 1, 2)
	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	ns := rtestutils.WithNamespace(resources.Namespace)

	firstRun, stop := context.WithCancel(ctx)
	done := runAllControllers(firstRun, t, st, f)

	createAndUpgrade(ctx, t, st, f, nil)
	assertDone(ctx, t, st, v14)

	gone := cluster.NewCluster("gone")
	*gone.TypedSpec() = cluster.ClusterSpec{TalosVersion: v13, KubernetesVersion: "v1.33.7"}
	require.NoError(t, st.Create(ctx, gone))

	for _, id := range []string{"c1", "gone"} {
		rtestutils.AssertResources(ctx, t, st, []string{id}, func(*observe.ClusterSummary, *assert.Assertions) {}, ns)
		rtestutils.AssertResources(ctx, t, st, []string{id}, func(*observe.EtcdStatus, *assert.Assertions) {}, ns)
		rtestutils.AssertResources(ctx, t, st, []string{id}, func(*upgrade.TalosUpgradeStatus, *assert.Assertions) {}, ns)
	}

	rtestutils.AssertResources(ctx, t, st, []string{"cp-1", "w-1", "w-2"}, func(*observe.MachineStatus, *assert.Assertions) {}, ns)
	rtestutils.AssertResources(ctx, t, st, []string{"cp-1", "w-1", "w-2"}, func(*upgrade.MachineUpgradeStatus, *assert.Assertions) {}, ns)

	stop()
	require.NoError(t, <-done)

	require.NoError(t, st.Destroy(ctx, cluster.NewMachine("w-1").Metadata()))
	require.NoError(t, st.Destroy(ctx, gone.Metadata()))

	second := runAllControllers(ctx, t, st, f)

	defer func() {
		cancel()
		require.NoError(t, <-second)
	}()

	// Bounded well below the test's deadline, so that without the sweep the test fails here, not on its timeout.
	orphansCtx, orphansCancel := context.WithTimeout(ctx, 15*time.Second)
	defer orphansCancel()

	rtestutils.AssertNoResource[*observe.ClusterSummary](orphansCtx, t, st, "gone", ns)
	rtestutils.AssertNoResource[*observe.EtcdStatus](orphansCtx, t, st, "gone", ns)
	rtestutils.AssertNoResource[*upgrade.TalosUpgradeStatus](orphansCtx, t, st, "gone", ns)
	rtestutils.AssertNoResource[*observe.MachineStatus](orphansCtx, t, st, "w-1", ns)
	rtestutils.AssertNoResource[*upgrade.MachineUpgradeStatus](orphansCtx, t, st, "w-1", ns)

	// A finished MachineUpgradeStatus is never written again, so had the sweep removed it, it would not come back.
	rtestutils.AssertResource(ctx, t, st, "w-2", func(s *upgrade.MachineUpgradeStatus, a *assert.Assertions) {
		a.Equal(upgrade.MachineDone, s.TypedSpec().Phase)
	}, ns)
	rtestutils.AssertResources(ctx, t, st, []string{"cp-1", "w-2"}, func(*observe.MachineStatus, *assert.Assertions) {}, ns)
	rtestutils.AssertResources(ctx, t, st, []string{"c1"}, func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Equal(2, s.TypedSpec().Machines)
	}, ns)
}

// runAllControllers runs the engine's controllers (the built-in ones and the rollout's) over st until ctx ends; the
// returned channel reports how Run ended.
func runAllControllers(ctx context.Context, t *testing.T, st state.State, f *fakeFleet) <-chan error {
	t.Helper()

	logger := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	rt := controllers.NewRuntime(st, logger,
		controllers.WithRegistrars(controllers.Builtin, controllers.Upgrades(f, fastUpgrades()...)))
	done := make(chan error, 1)

	go func() { done <- rt.Run(ctx) }()

	return done
}
