package rollout_test

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func view(id string, role cluster.Role, version string) rollout.MachineView {
	return rollout.MachineView{ID: id, Role: role, Status: &observe.MachineStatusSpec{Cluster: "c1", TalosVersion: version, Reachable: true}}
}

func healthyEtcd(cps ...string) *observe.EtcdStatusSpec {
	spec := &observe.EtcdStatusSpec{Healthy: true, CanLoseMember: true}

	for i, cp := range cps {
		spec.Members = append(spec.Members, observe.EtcdMember{ID: string(rune('a' + i)), Machine: cp, Started: true, Healthy: true})
	}

	return spec
}

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

// decide runs rollout.Decide at now with the shipped catalogue, for a cluster whose machines are all observed.
func decide(c *cluster.ClusterSpec, machines []rollout.MachineView, etcd *observe.EtcdStatusSpec, prev upgrade.TalosUpgradeStatusSpec) upgrade.TalosUpgradeStatusSpec {
	got, _ := decideAt(now, c, machines, etcd, prev)

	return got
}

func decideAt(at time.Time, c *cluster.ClusterSpec, machines []rollout.MachineView, etcd *observe.EtcdStatusSpec, prev upgrade.TalosUpgradeStatusSpec) (upgrade.TalosUpgradeStatusSpec, time.Duration) {
	view := rollout.ClusterView{Cluster: c, Machines: machines, Etcd: etcd, Now: at}
	for _, m := range machines {
		if m.Status != nil {
			view.Observed = append(view.Observed, m.ID)
		}
	}

	return rollout.Decide(rollout.Policy{Catalogue: versions.Shipped(), EtcdGrace: time.Minute}, view, prev)
}

func TestDecide(t *testing.T) {
	t.Parallel()

	fleet := []rollout.MachineView{
		view("cp-1", cluster.RoleControlPlane, "v1.10.0"), view("cp-2", cluster.RoleControlPlane, "v1.10.0"),
		view("cp-3", cluster.RoleControlPlane, "v1.10.0"), view("w-1", cluster.RoleWorker, "v1.10.0"),
	}
	etcd := healthyEtcd("cp-1", "cp-2", "cp-3")

	t.Run("intermediate hops, control planes first", func(t *testing.T) {
		t.Parallel()

		got := decide(&cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}, fleet, etcd, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhaseUpgrading, got.Phase)
		assert.Greater(t, len(got.Plan), 1, "%v", got.Plan)
		assert.Equal(t, "v1.14.1", got.Plan[len(got.Plan)-1])
		assert.Equal(t, got.Plan[0], got.Target)
		assert.Equal(t, "upgrade", got.Direction)
		assert.Equal(t, "v1.10.0", got.FromVersion)
		assert.Equal(t, []string{"cp-1"}, got.Admitted)
		assert.Equal(t, []string{"cp-1"}, got.Current)
		assert.Equal(t, 0, got.Done)
		assert.Equal(t, 4, got.Total)
		assert.Contains(t, got.AvailableVersions, "v1.14.1")

		again := decide(&cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}, fleet, etcd, got)
		assert.Equal(t, []string{"cp-1"}, again.Admitted, "an admitted machine holds its slot until it is taken up")
	})

	t.Run("target cannot run the cluster's Kubernetes", func(t *testing.T) {
		t.Parallel()

		got := decide(&cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.20.0"}, fleet, etcd, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhaseBlocked, got.Phase)
		assert.Contains(t, got.Error, "Kubernetes 1.20.0 is too old to be used with Talos 1.14.1")
		assert.Empty(t, got.Admitted)
	})

	t.Run("the etcd gate holds the control planes: a routine wait, then Blocked past the grace period", func(t *testing.T) {
		t.Parallel()

		sick := healthyEtcd("cp-1", "cp-2", "cp-3")
		sick.Members[1].Healthy = false
		spec := &cluster.ClusterSpec{TalosVersion: "v1.11.0", KubernetesVersion: "v1.32.0"}

		got, recheck := decideAt(now, spec, fleet, sick, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhasePending, got.Phase, "a member rejoining after a reboot is no reason to page anyone")
		assert.Contains(t, got.Reason, "control plane cp-1 waits for etcd")
		assert.Contains(t, got.Reason, "(cp-2) is not healthy")
		assert.Empty(t, got.Error)
		assert.Empty(t, got.Admitted)
		assert.Equal(t, now, got.EtcdWaitSince)
		assert.Equal(t, time.Minute, recheck, "decided again when the grace period ends")

		later, _ := decideAt(now.Add(30*time.Second), spec, fleet, sick, got)
		assert.Equal(t, upgrade.PhasePending, later.Phase)
		assert.Equal(t, now, later.EtcdWaitSince, "the wait keeps its start")

		blocked, recheck := decideAt(now.Add(time.Minute), spec, fleet, sick, later)
		assert.Equal(t, upgrade.PhaseBlocked, blocked.Phase)
		assert.Contains(t, blocked.Error, "control plane cp-1 waits for etcd")
		assert.Contains(t, blocked.Error, "for 1m0s")
		assert.Zero(t, recheck)

		healed, _ := decideAt(now.Add(2*time.Minute), spec, fleet, etcd, blocked)
		assert.Equal(t, upgrade.PhaseUpgrading, healed.Phase)
		assert.Equal(t, []string{"cp-1"}, healed.Admitted)
		assert.Zero(t, healed.EtcdWaitSince)
	})

	t.Run("a partial view of the cluster's machines decides nothing", func(t *testing.T) {
		t.Parallel()

		// The workers were read but not the control planes, whose observations exist: a decision from this view
		// would start the workers first.
		workers := []rollout.MachineView{view("w-1", cluster.RoleWorker, "v1.10.0"), view("w-2", cluster.RoleWorker, "v1.10.0")}
		v := rollout.ClusterView{
			Cluster:  &cluster.ClusterSpec{TalosVersion: "v1.11.0", KubernetesVersion: "v1.32.0"},
			Machines: workers, Observed: []string{"cp-1", "cp-2", "cp-3", "w-1", "w-2"}, Etcd: etcd, Now: now,
		}

		got, _ := rollout.Decide(rollout.Policy{Catalogue: versions.Shipped()}, v, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhasePending, got.Phase)
		assert.Contains(t, got.Reason, "cp-1, cp-2, cp-3")
		assert.Empty(t, got.Admitted)
		assert.NotEqual(t, upgrade.PhaseDone, got.Phase)
	})

	t.Run("only locked machines left: Blocked on the locks", func(t *testing.T) {
		t.Parallel()

		machines := []rollout.MachineView{
			view("cp-1", cluster.RoleControlPlane, "v1.11.0"), view("w-1", cluster.RoleWorker, "v1.11.0"),
			view("w-2", cluster.RoleWorker, "v1.10.0"),
		}
		machines[2].Locked = true

		got := decide(&cluster.ClusterSpec{TalosVersion: "v1.11.0", KubernetesVersion: "v1.32.0"}, machines, healthyEtcd("cp-1"), upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhaseBlocked, got.Phase)
		assert.Equal(t, []string{"w-2"}, got.WaitingOnLock)
		assert.Contains(t, got.Error, "waiting for locked machines to be unlocked: w-2")
	})

	t.Run("a machine skipped for the target is listed and the upgrade finishes without it", func(t *testing.T) {
		t.Parallel()

		machines := []rollout.MachineView{
			view("cp-1", cluster.RoleControlPlane, "v1.14.1"), view("w-1", cluster.RoleWorker, "v1.14.1"),
			view("w-2", cluster.RoleWorker, "v1.13.4"),
		}
		machines[2].SkipVersion = "v1.14.1"
		machines[2].Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineFailed, FromVersion: "v1.11.6", ToVersion: "v1.13.4"}
		prev := upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseFailed, ToVersion: "v1.14.1", Plan: []string{"v1.13.4", "v1.14.1"}}

		got := decide(&cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}, machines, healthyEtcd("cp-1"), prev)

		assert.Equal(t, upgrade.PhaseDone, got.Phase)
		assert.Equal(t, []string{"w-2"}, got.Skipped)
		assert.Equal(t, 3, got.Done)
	})

	t.Run("waits until every machine is observed", func(t *testing.T) {
		t.Parallel()

		unobserved := append([]rollout.MachineView{{ID: "w-2", Role: cluster.RoleWorker}}, fleet...)
		got := decide(&cluster.ClusterSpec{TalosVersion: "v1.11.0", KubernetesVersion: "v1.32.0"}, unobserved, etcd, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhasePending, got.Phase)
		assert.Contains(t, got.Reason, "w-2")
		assert.Empty(t, got.Admitted)
	})

	t.Run("setting the version back reverts", func(t *testing.T) {
		t.Parallel()

		half := []rollout.MachineView{
			view("cp-1", cluster.RoleControlPlane, "v1.11.0"), view("w-1", cluster.RoleWorker, "v1.10.0"),
		}
		prev := upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseUpgrading, FromVersion: "v1.10.0", ToVersion: "v1.11.0", Plan: []string{"v1.11.0"}, Target: "v1.11.0"}

		got := decide(&cluster.ClusterSpec{TalosVersion: "v1.10.0", KubernetesVersion: "v1.32.0"}, half, healthyEtcd("cp-1"), prev)

		assert.Equal(t, upgrade.PhaseReverting, got.Phase)
		assert.True(t, got.Reverting)
		assert.Equal(t, "v1.11.0", got.FromVersion)
		assert.Equal(t, "downgrade", got.Direction)
		assert.Equal(t, []string{"cp-1"}, got.Admitted)
	})

	t.Run("a finished upgrade decided again with nothing new keeps its plan", func(t *testing.T) {
		t.Parallel()

		// Any input may wake the controller after the upgrade finished (a Kubernetes upgrade's status, an
		// observation): a decision that finds the cluster unchanged must not rewrite what the upgrade shows.
		spec := &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}
		upgraded := []rollout.MachineView{
			view("cp-1", cluster.RoleControlPlane, "v1.14.1"), view("w-1", cluster.RoleWorker, "v1.14.1"),
		}
		done := upgrade.TalosUpgradeStatusSpec{
			Phase: upgrade.PhaseDone, FromVersion: "v1.11.6", ToVersion: "v1.14.1", Direction: "upgrade",
			Plan: []string{"v1.12.6", "v1.13.4", "v1.14.1"}, Target: "v1.14.1", Done: 2, Total: 2,
		}

		got := decide(spec, upgraded, healthyEtcd("cp-1"), done)

		assert.Equal(t, upgrade.PhaseDone, got.Phase)
		assert.Equal(t, done.Plan, got.Plan)
		assert.Equal(t, "v1.11.6", got.FromVersion)
		assert.Equal(t, "upgrade", got.Direction)
		assert.Equal(t, "v1.14.1", got.Target)

		// A machine left out of the target runs another version, and is nothing new either.
		skipped := append(slices.Clone(upgraded), view("w-2", cluster.RoleWorker, "v1.13.4"))
		skipped[2].SkipVersion = "v1.14.1"

		got = decide(spec, skipped, healthyEtcd("cp-1"), done)

		assert.Equal(t, upgrade.PhaseDone, got.Phase)
		assert.Equal(t, []string{"w-2"}, got.Skipped)
		assert.Equal(t, done.Plan, got.Plan)
		assert.Equal(t, "v1.11.6", got.FromVersion)
	})

	t.Run("a finished upgrade is planned anew when a machine is off the target", func(t *testing.T) {
		t.Parallel()

		spec := &cluster.ClusterSpec{TalosVersion: "v1.11.0", KubernetesVersion: "v1.32.0"}
		done := upgrade.TalosUpgradeStatusSpec{
			Phase: upgrade.PhaseDone, FromVersion: "v1.10.0", ToVersion: "v1.11.0", Direction: "upgrade",
			Plan: []string{"v1.11.0"}, Target: "v1.11.0", Done: 2, Total: 2,
		}
		// A machine reinstalled at the old version (or added) after the upgrade finished.
		drifted := []rollout.MachineView{
			view("cp-1", cluster.RoleControlPlane, "v1.11.0"), view("w-1", cluster.RoleWorker, "v1.10.0"),
		}

		got := decide(spec, drifted, healthyEtcd("cp-1"), done)

		assert.Equal(t, upgrade.PhaseUpgrading, got.Phase)
		assert.Equal(t, "v1.10.0", got.FromVersion)
		assert.Equal(t, []string{"v1.11.0"}, got.Plan)
		assert.Equal(t, []string{"w-1"}, got.Admitted)
	})

	t.Run("done", func(t *testing.T) {
		t.Parallel()

		got := decide(&cluster.ClusterSpec{TalosVersion: "v1.10.0", KubernetesVersion: "v1.32.0"}, fleet, etcd, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhaseDone, got.Phase)
		assert.Equal(t, 4, got.Done)
		assert.Empty(t, got.Current)
	})
}

// The control plane that goes last is the etcd leader when the plan was made, for every hop: leadership moves
// during a rollout to a member no one can predict, and the dry run shows the order the engine keeps.
func TestDecideKeepsTheLastControlPlaneOfThePlan(t *testing.T) {
	t.Parallel()

	spec := &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}
	fleet := []rollout.MachineView{
		view("cp-1", cluster.RoleControlPlane, "v1.10.0"), view("cp-2", cluster.RoleControlPlane, "v1.10.0"),
		view("cp-3", cluster.RoleControlPlane, "v1.10.0"),
	}

	etcd := healthyEtcd("cp-1", "cp-2", "cp-3")
	etcd.Leader = etcd.Members[0].ID // cp-1 leads when the plan is made

	planned := decide(spec, fleet, etcd, upgrade.TalosUpgradeStatusSpec{})
	assert.Equal(t, "cp-1", planned.LastControlPlane)
	assert.Equal(t, []string{"cp-2"}, planned.Admitted, "the leader goes last")

	// cp-2 and cp-3 finished the first hop; leadership moved to cp-3 meanwhile.
	hop := planned.Plan[0]
	for i := range 2 {
		m := &fleet[i+1]
		m.Status = &observe.MachineStatusSpec{Cluster: "c1", TalosVersion: hop, Reachable: true}
		m.Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDone, FromVersion: "v1.10.0", ToVersion: hop}
	}

	etcd.Leader = etcd.Members[2].ID

	next := decide(spec, fleet, etcd, planned)
	assert.Equal(t, "cp-1", next.LastControlPlane, "the plan keeps its last control plane")
	assert.Equal(t, []string{"cp-1"}, next.Admitted, "cp-1 is the one left on the first hop")

	// Every control plane on the first hop: the second hop still ends with cp-1, not with the new leader cp-3.
	fleet[0].Status = &observe.MachineStatusSpec{Cluster: "c1", TalosVersion: hop, Reachable: true}
	fleet[0].Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDone, FromVersion: "v1.10.0", ToVersion: hop}

	second := decide(spec, fleet, etcd, next)
	assert.Equal(t, []string{"cp-2"}, second.Admitted, "the second hop starts with the first control plane that is not last")
}

// A machine admitted toward a hop but not yet taken up by its controller holds its worker slot; when another
// machine then needs a later hop, the admission must not turn into a slot held for a machine no controller will
// start (seen on the emulated fleet: "all 1 worker slots are in use", c1-w-4 current but admitted nowhere, forever).
func TestDecideNeverHoldsASlotForAMachineItDoesNotAdmit(t *testing.T) {
	t.Parallel()

	done := func(id string, role cluster.Role, from, to string) rollout.MachineView {
		m := view(id, role, to)
		m.Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDone, FromVersion: from, ToVersion: to}

		return m
	}

	spec := &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}
	fleet := []rollout.MachineView{
		done("cp-1", cluster.RoleControlPlane, "v1.13.4", "v1.14.1"), done("w-1", cluster.RoleWorker, "v1.13.4", "v1.14.1"),
		done("w-2", cluster.RoleWorker, "v1.11.6", "v1.13.4"), // finished the first hop, needs the second
		view("w-4", cluster.RoleWorker, "v1.11.6"),            // admitted toward the first hop by the last decision
	}
	prev := upgrade.TalosUpgradeStatusSpec{
		Phase: upgrade.PhaseUpgrading, FromVersion: "v1.11.6", ToVersion: "v1.14.1", Plan: []string{"v1.13.4", "v1.14.1"},
		Direction: "upgrade", Target: "v1.13.4", Admitted: []string{"w-4"}, Current: []string{"w-4"},
	}

	got := decide(spec, fleet, healthyEtcd("cp-1"), prev)

	assert.Equal(t, []string{"w-4"}, got.Admitted, "w-4 still needs the first hop and keeps its admission")
	assert.Equal(t, "v1.13.4", got.Target)
	assert.Equal(t, []string{"w-4"}, got.Current)

	for _, id := range got.Current {
		assert.True(t, slices.Contains(got.Admitted, id) || slices.ContainsFunc(fleet, func(m rollout.MachineView) bool {
			return m.ID == id && m.Upgrade != nil && m.Upgrade.Phase.InFlight()
		}), "%s is current but neither admitted nor in flight", id)
	}
}
