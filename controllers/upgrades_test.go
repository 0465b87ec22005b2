package controllers_test

import (
	"testing"

	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/observe"
)

// An embedder's own Upgrades replaces the default one instead of clashing with it: its connector is the one used.
func TestOverridableUpgrades(t *testing.T) {
	t.Parallel()

	defaults, own := newFakeFleet(v13, 1, 0), newFakeFleet(v14, 1, 0)

	ctx, st := startRuntime(t, controllers.WithRegistrars(controllers.Overridable(
		controllers.Upgrades(defaults, fastUpgrades()...),
		controllers.Builtin, controllers.Upgrades(own, fastUpgrades()...),
	)))
	createUpgradeFleet(ctx, t, st, own, v14, nil)

	rtestutils.AssertResource(ctx, t, st, "cp-1", func(s *observe.MachineStatus, a *assert.Assertions) {
		a.Equal(v14, s.TypedSpec().TalosVersion)
	}, rtestutils.WithNamespace(resources.Namespace))
	rtestutils.AssertResource(ctx, t, st, "c1", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Equal(1, s.TypedSpec().Machines)
	}, rtestutils.WithNamespace(resources.Namespace))

	defaults.mu.Lock()
	defer defaults.mu.Unlock()

	assert.Empty(t, defaults.calls, "the default connector was used")
}
