package controllers_test

import (
	"context"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
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
		a.NotZero(s.TypedSpec().ObservedAt)
		a.Equal(observe.MachineStatusSpec{
			Cluster: "c1", TalosVersion: v13, Stage: "running", Ready: true, BootID: bootID, NodeName: "w-1",
			KubeletVersion: "v" + fakeKubernetes, Reachable: true, Cordoned: true, ObservedAt: s.TypedSpec().ObservedAt,
		}, *s.TypedSpec())

		label, _ := s.Metadata().Labels().Get(cluster.LabelCluster)
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

// A machine is observed again as soon as its upgrade enters a new phase, not a poll interval later: once the
// upgrade is Done, the machines' statuses say the new version, reachable, observed after the upgrade finished.
func TestMachineStatusFollowsUpgrade(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 1, 1)
	ctx, st := startUpgrades(t, f, controllers.WithPollInterval(time.Hour))
	createAndUpgrade(ctx, t, st, f, nil)
	assertDone(ctx, t, st, v14)

	// Far less than the poll interval: only the upgrade's phase changes can bring the observation up to date.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	for _, id := range []string{"cp-1", "w-1"} {
		finished := machineUpgrade(ctx, t, st, id).PhaseChangedAt

		rtestutils.AssertResource(ctx, t, st, id, func(s *observe.MachineStatus, a *assert.Assertions) {
			a.Equal(v14, s.TypedSpec().TalosVersion)
			a.True(s.TypedSpec().Reachable)
			a.False(s.TypedSpec().ObservedAt.Before(finished), "observed at %s, before the upgrade finished at %s", s.TypedSpec().ObservedAt, finished)
		}, rtestutils.WithNamespace(resources.Namespace))
	}
}

// A machine that stops answering right after its upgrade finished keeps, as its last known version, the one the
// upgrade confirmed, not the one seen before its reboot.
func TestMachineStatusKeepsTheConfirmedVersionOfAnUnreachableMachine(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 1, 1)
	// Once w-1 is back on v14 and uncordoned (its upgrade's last side effect), it answers no more.
	f.hook(func(c fakeCall) {
		if c.Node == "w-1" && c.Method == "MachineStatus" {
			f.set("w-1", func(n *fakeNode) { n.down = n.down || (n.version == v14 && !n.cordoned) })
		}
	})

	ctx, st := startUpgrades(t, f, controllers.WithPollInterval(time.Hour))
	createAndUpgrade(ctx, t, st, f, nil)
	assertDone(ctx, t, st, v14)

	finished := machineUpgrade(ctx, t, st, "w-1").PhaseChangedAt

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	rtestutils.AssertResource(ctx, t, st, "w-1", func(s *observe.MachineStatus, a *assert.Assertions) {
		a.False(s.TypedSpec().Reachable)
		a.Equal(v14, s.TypedSpec().TalosVersion)
		a.False(s.TypedSpec().ObservedAt.Before(finished), "observed at %s, before the upgrade finished at %s", s.TypedSpec().ObservedAt, finished)
	}, rtestutils.WithNamespace(resources.Namespace))
}

// Machines are observed a cluster at a time, but an event between two polls observes only what it concerns: a
// Machine added to the cluster is observed at once and alone, and a deleted one loses its status at once.
func TestMachineStatusFollowsTheClustersMachines(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 1, 2)
	ctx, st := startUpgrades(t, f, controllers.WithPollInterval(time.Hour))
	createUpgradeFleet(ctx, t, st, f, v13, nil)

	ns := rtestutils.WithNamespace(resources.Namespace)
	rtestutils.AssertResources(ctx, t, st, []string{"cp-1", "w-1", "w-2"}, func(s *observe.MachineStatus, a *assert.Assertions) {
		a.True(s.TypedSpec().Reachable)
	}, ns)

	before := map[string]int{"cp-1": f.count("cp-1", "MachineStatus"), "w-1": f.count("w-1", "MachineStatus")}

	f.mu.Lock()
	f.nodes["w-3"] = &fakeNode{name: "w-3", version: v14, bootID: newID(), stage: "running"}
	f.mu.Unlock()

	m := cluster.NewMachine("w-3")
	*m.TypedSpec() = cluster.MachineSpec{Cluster: "c1", Role: cluster.RoleWorker, Endpoint: "127.0.0.1:50000"}
	require.NoError(t, st.Create(ctx, m))

	rtestutils.AssertResource(ctx, t, st, "w-3", func(s *observe.MachineStatus, a *assert.Assertions) {
		a.Equal(v14, s.TypedSpec().TalosVersion)
		a.True(s.TypedSpec().Reachable)
	}, ns)

	require.NoError(t, st.Destroy(ctx, cluster.NewMachine("w-2").Metadata()))
	rtestutils.AssertNoResource[*observe.MachineStatus](ctx, t, st, "w-2", ns)

	for id, n := range before {
		assert.Equal(t, n, f.count(id, "MachineStatus"), "%s was observed again for an event that did not concern it", id)
	}
}
