package rollout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Machines unlocked after waiting on a lock start before every machine that never waited, in the order they were
// unlocked, not in ID order; they still go after the control planes and take no more than the free slots.
func TestScheduleStartsUnlockedMachinesFirstInUnlockOrder(t *testing.T) {
	t.Parallel()

	unlockedAt := func(at time.Time) func(*rollout.Machine) {
		return func(m *rollout.Machine) { m.UnlockedAt = at }
	}

	in := rollout.Input{Target: newV, Parallelism: par("1"), Machines: []rollout.Machine{
		with(cp("cp-1"), upgraded), wk("w-1"), wk("w-2"),
		with(wk("w-3"), unlockedAt(now.Add(2*time.Second))), with(wk("w-4"), unlockedAt(now.Add(time.Second))),
	}}

	d := rollout.Schedule(in)
	assert.Equal(t, []string{"w-4"}, d.Start, "the first unlocked goes first, before w-1 which never waited")
	assert.Equal(t, []string{"w-3"}, d.Unlocked, "w-3 waits for the slot, remembered as unlocked")

	in.Parallelism = par("3")
	d = rollout.Schedule(in)
	assert.Equal(t, []string{"w-4", "w-3", "w-1"}, d.Start)
	assert.Empty(t, d.Unlocked, "both started")

	in.Machines[0] = cp("cp-1") // a control plane still needs the target: it goes first, the unlocked wait
	d = rollout.Schedule(in)
	assert.Equal(t, []string{"cp-1"}, d.Start)
	assert.Equal(t, []string{"w-4", "w-3"}, d.Unlocked)
}

// The Talos rollout remembers who waited on a lock in its status (WaitingOnLock, then Unlocked), so two machines
// unlocked between two decisions, or before a restart, still go in unlock order; one unlocked before the rollout
// ever waited on it takes its usual place.
func TestDecideGivesUnlockedMachinesTheirTurnInUnlockOrder(t *testing.T) {
	t.Parallel()

	spec := &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0", Parallelism: "1"}
	doneCP := view("cp-1", cluster.RoleControlPlane, "v1.14.1")
	doneCP.Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDone, FromVersion: "v1.13.4", ToVersion: "v1.14.1"}

	w1, w2, w3 := view("w-1", cluster.RoleWorker, "v1.13.4"), view("w-2", cluster.RoleWorker, "v1.13.4"), view("w-3", cluster.RoleWorker, "v1.13.4")
	w2.Locked, w3.Locked = true, true

	// A worker upgrades while w-2 and w-3 are locked: they are listed as waiting.
	w1.Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDraining, FromVersion: "v1.13.4", ToVersion: "v1.14.1"}
	first := decide(spec, []rollout.MachineView{doneCP, w1, w2, w3}, healthyEtcd("cp-1"), upgrade.TalosUpgradeStatusSpec{})
	assert.Equal(t, []string{"w-2", "w-3"}, first.WaitingOnLock)

	// w-3 is unlocked, then w-2, while w-1 still holds the only slot: both are remembered, w-3 first.
	w3.Locked, w3.UnlockedAt = false, now.Add(time.Second)
	w2.Locked, w2.UnlockedAt = false, now.Add(2*time.Second)
	second := decide(spec, []rollout.MachineView{doneCP, w1, w2, w3}, healthyEtcd("cp-1"), first)
	assert.Empty(t, second.Admitted)
	assert.Equal(t, []string{"w-3", "w-2"}, second.Unlocked)
	assert.Empty(t, second.WaitingOnLock)

	// w-1 finishes: w-3 starts next, from the memory in the status alone (as after a restart).
	w1.Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDone, FromVersion: "v1.13.4", ToVersion: "v1.14.1"}
	w1.Status.TalosVersion = "v1.14.1"
	third := decide(spec, []rollout.MachineView{doneCP, w1, w2, w3}, healthyEtcd("cp-1"), second)
	assert.Equal(t, []string{"w-3"}, third.Admitted)
	assert.Equal(t, []string{"w-2"}, third.Unlocked)

	// Without the memory (never listed as waiting), an unlock stamp alone changes nothing: natural order.
	fresh := decide(spec, []rollout.MachineView{doneCP, w1, w2, w3}, healthyEtcd("cp-1"), upgrade.TalosUpgradeStatusSpec{})
	assert.Equal(t, []string{"w-2"}, fresh.Admitted)
	assert.Empty(t, fresh.Unlocked)
}
