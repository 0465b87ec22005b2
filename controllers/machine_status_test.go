package controllers_test

import (
	"testing"

	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/observe"
)

// Every machine is observed into its MachineStatus, Kubernetes and etcd included; an unreachable one is reported
// with the error and keeps its last known state, and is observed again once it answers.
func TestMachineStatus(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 3, 1)
	f.set("w-1", func(n *fakeNode) { n.cordoned = true })

	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, v13, nil)

	bootID := f.get("w-1").bootID

	rtestutils.AssertResource(ctx, t, st, "w-1", func(s *observe.MachineStatus, a *assert.Assertions) {
		a.Equal(observe.MachineStatusSpec{
			Cluster: "c1", TalosVersion: v13, Stage: "running", Ready: true, BootID: bootID, NodeName: "w-1",
			KubeletVersion: "v1.37.2", Reachable: true, Cordoned: true,
		}, *s.TypedSpec())

		label, _ := s.Metadata().Labels().Get(controllers.ClusterLabel)
		a.Equal("c1", label)
	}, rtestutils.WithNamespace(resources.Namespace))

	rtestutils.AssertResource(ctx, t, st, "cp-2", func(s *observe.MachineStatus, a *assert.Assertions) {
		a.Equal("0000000000000002", s.TypedSpec().EtcdMember)
	}, rtestutils.WithNamespace(resources.Namespace))

	f.set("w-1", func(n *fakeNode) { n.down = true })

	rtestutils.AssertResource(ctx, t, st, "w-1", func(s *observe.MachineStatus, a *assert.Assertions) {
		a.False(s.TypedSpec().Reachable)
		a.Contains(s.TypedSpec().Error, "unreachable")
		a.Equal(v13, s.TypedSpec().TalosVersion, "the last known version stays")
		a.Equal(bootID, s.TypedSpec().BootID)
	}, rtestutils.WithNamespace(resources.Namespace))

	f.set("w-1", func(n *fakeNode) { n.down, n.version = false, v14 })

	rtestutils.AssertResource(ctx, t, st, "w-1", func(s *observe.MachineStatus, a *assert.Assertions) {
		a.True(s.TypedSpec().Reachable)
		a.Empty(s.TypedSpec().Error)
		a.Equal(v14, s.TypedSpec().TalosVersion)
	}, rtestutils.WithNamespace(resources.Namespace))
}
