package rollout_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// configView is a machine on the target Talos version whose config change is pending or not.
func configView(id string, role cluster.Role, pending, locked bool) rollout.MachineView {
	m := view(id, role, "v1.14.1")
	m.Locked = locked
	m.Config = &upgrade.MachineConfigStatusSpec{AppliedVersion: "a", TargetVersion: "a"}

	if pending {
		m.Config.TargetVersion, m.Config.Pending = "b", true
	}

	return m
}

func configCluster(machines []rollout.MachineView) rollout.ClusterView {
	return rollout.ClusterView{Cluster: &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0", Parallelism: "2"}, Machines: machines, Etcd: healthyEtcd("cp-1", "cp-2", "cp-3"), Now: now}
}

func TestDecideConfig(t *testing.T) {
	t.Parallel()

	t.Run("control planes first, one at a time", func(t *testing.T) {
		t.Parallel()

		v := configCluster([]rollout.MachineView{
			configView("cp-1", cluster.RoleControlPlane, true, false), configView("cp-2", cluster.RoleControlPlane, true, false),
			configView("cp-3", cluster.RoleControlPlane, true, false),
			configView("w-1", cluster.RoleWorker, true, false),
		})

		got := rollout.DecideConfig(v, upgrade.ConfigRolloutStatusSpec{})
		assert.Equal(t, []string{"cp-1"}, got.Admitted)
		assert.Equal(t, upgrade.PhaseUpgrading, got.Phase)
	})

	t.Run("locked workers hold no slot; Blocked only on locks", func(t *testing.T) {
		t.Parallel()

		machines := []rollout.MachineView{
			configView("w-1", cluster.RoleWorker, true, true), configView("w-2", cluster.RoleWorker, true, true),
			configView("w-3", cluster.RoleWorker, true, false), configView("w-4", cluster.RoleWorker, true, false),
			configView("w-5", cluster.RoleWorker, true, false), configView("w-6", cluster.RoleWorker, true, false),
		}

		got := rollout.DecideConfig(configCluster(machines), upgrade.ConfigRolloutStatusSpec{})
		assert.Equal(t, []string{"w-3", "w-4"}, got.Admitted, "parallelism 2: two unlocked workers at once")
		assert.Equal(t, []string{"w-1", "w-2"}, got.WaitingOnLock)

		for _, m := range machines[2:] {
			m.Config.AppliedVersion, m.Config.Pending, m.Config.Phase = "b", false, upgrade.MachineDone
		}

		got = rollout.DecideConfig(configCluster(machines), got)
		assert.Equal(t, upgrade.PhaseBlocked, got.Phase)
		assert.Contains(t, got.Error, "waiting on locked machines: w-1, w-2")
		assert.Empty(t, got.Admitted)
	})

	t.Run("a failure halts the rollout; skipped, the machine counts as finished and is listed", func(t *testing.T) {
		t.Parallel()

		machines := []rollout.MachineView{configView("w-1", cluster.RoleWorker, true, false), configView("w-2", cluster.RoleWorker, false, false)}
		machines[0].Config.Phase, machines[0].Config.ChangeVersion, machines[0].Config.Error = upgrade.MachineFailed, "b", "config: refused"

		got := rollout.DecideConfig(configCluster(machines), upgrade.ConfigRolloutStatusSpec{})
		assert.Equal(t, upgrade.PhaseFailed, got.Phase)
		assert.Equal(t, "w-1", got.FailedMachine)

		machines[0].SkipVersion = machines[0].Config.SkipValue()

		got = rollout.DecideConfig(configCluster(machines), got)
		assert.Equal(t, upgrade.PhaseDone, got.Phase)
		assert.Equal(t, []string{"w-1"}, got.Skipped)
		assert.Equal(t, 2, got.Done)

		machines[0].Config.TargetVersion = "c" // a new effective config: the skip was for the old one

		got = rollout.DecideConfig(configCluster(machines), got)
		assert.Equal(t, []string{"w-1"}, got.Admitted)
		assert.Empty(t, got.Skipped)
	})

	t.Run("no decision from a status computed from other patches than the cluster's now", func(t *testing.T) {
		t.Parallel()

		machines := []rollout.MachineView{configView("w-1", cluster.RoleWorker, false, false), configView("w-2", cluster.RoleWorker, true, true)}
		v := configCluster(machines)
		v.PatchSet = "sysctl@1" // w-1's status was computed before the patch was written

		got := rollout.DecideConfig(v, upgrade.ConfigRolloutStatusSpec{})
		assert.Equal(t, upgrade.PhasePending, got.Phase, "not Blocked on w-2's lock: w-1 may have the patch to apply")
		assert.Contains(t, got.Reason, "w-1")
	})

	t.Run("a failed change halts the rollout until its config changes", func(t *testing.T) {
		t.Parallel()

		machines := []rollout.MachineView{configView("w-1", cluster.RoleWorker, true, false), configView("w-2", cluster.RoleWorker, true, false)}
		machines[0].Config.Phase, machines[0].Config.ChangeVersion, machines[0].Config.Error = upgrade.MachineFailed, "b", "config: refused"

		got := rollout.DecideConfig(configCluster(machines), upgrade.ConfigRolloutStatusSpec{})
		assert.Equal(t, upgrade.PhaseFailed, got.Phase)
		assert.Equal(t, "w-1", got.FailedMachine)
		assert.Empty(t, got.Admitted)

		machines[0].Config.TargetVersion = "c" // the patch was changed: the failure is stale
		got = rollout.DecideConfig(configCluster(machines), upgrade.ConfigRolloutStatusSpec{})
		assert.Equal(t, []string{"w-1", "w-2"}, got.Admitted)
	})
}
