package controllers_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func view(id string, role cluster.Role, version string) controllers.MachineView {
	return controllers.MachineView{ID: id, Role: role, Status: &observe.MachineStatusSpec{Cluster: "c1", TalosVersion: version, Reachable: true}}
}

func healthyEtcd(cps ...string) *observe.EtcdStatusSpec {
	spec := &observe.EtcdStatusSpec{Healthy: true, CanLoseMember: true}

	for i, cp := range cps {
		spec.Members = append(spec.Members, observe.EtcdMember{ID: string(rune('a' + i)), Machine: cp, Started: true, Healthy: true})
	}

	return spec
}

func TestDecide(t *testing.T) {
	t.Parallel()

	catalogue := versions.Shipped()
	fleet := []controllers.MachineView{
		view("cp-1", cluster.RoleControlPlane, "v1.10.0"), view("cp-2", cluster.RoleControlPlane, "v1.10.0"),
		view("cp-3", cluster.RoleControlPlane, "v1.10.0"), view("w-1", cluster.RoleWorker, "v1.10.0"),
	}
	etcd := healthyEtcd("cp-1", "cp-2", "cp-3")

	t.Run("intermediate hops, control planes first", func(t *testing.T) {
		t.Parallel()

		got := controllers.Decide(catalogue, &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}, fleet, etcd, upgrade.TalosUpgradeStatusSpec{})

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

		again := controllers.Decide(catalogue, &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.32.0"}, fleet, etcd, got)
		assert.Equal(t, []string{"cp-1"}, again.Admitted, "an admitted machine holds its slot until it is taken up")
	})

	t.Run("target cannot run the cluster's Kubernetes", func(t *testing.T) {
		t.Parallel()

		got := controllers.Decide(catalogue, &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.20.0"}, fleet, etcd, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhaseBlocked, got.Phase)
		assert.Contains(t, got.Error, "Kubernetes 1.20.0 is too old to be used with Talos 1.14.1")
		assert.Empty(t, got.Admitted)
	})

	t.Run("etcd gate holds the control planes", func(t *testing.T) {
		t.Parallel()

		sick := healthyEtcd("cp-1", "cp-2", "cp-3")
		sick.Members[1].Healthy = false

		got := controllers.Decide(catalogue, &cluster.ClusterSpec{TalosVersion: "v1.11.0", KubernetesVersion: "v1.32.0"}, fleet, sick, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhaseBlocked, got.Phase)
		assert.Contains(t, got.Error, "control plane cp-1 waits for etcd")
		assert.Contains(t, got.Error, "(cp-2) is not healthy")
		assert.Empty(t, got.Admitted)
	})

	t.Run("waits until every machine is observed", func(t *testing.T) {
		t.Parallel()

		unobserved := append([]controllers.MachineView{{ID: "w-2", Role: cluster.RoleWorker}}, fleet...)
		got := controllers.Decide(catalogue, &cluster.ClusterSpec{TalosVersion: "v1.11.0", KubernetesVersion: "v1.32.0"}, unobserved, etcd, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhasePending, got.Phase)
		assert.Contains(t, got.Reason, "w-2")
		assert.Empty(t, got.Admitted)
	})

	t.Run("setting the version back reverts", func(t *testing.T) {
		t.Parallel()

		half := []controllers.MachineView{
			view("cp-1", cluster.RoleControlPlane, "v1.11.0"), view("w-1", cluster.RoleWorker, "v1.10.0"),
		}
		prev := upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseUpgrading, FromVersion: "v1.10.0", ToVersion: "v1.11.0", Plan: []string{"v1.11.0"}, Target: "v1.11.0"}

		got := controllers.Decide(catalogue, &cluster.ClusterSpec{TalosVersion: "v1.10.0", KubernetesVersion: "v1.32.0"}, half, healthyEtcd("cp-1"), prev)

		assert.Equal(t, upgrade.PhaseReverting, got.Phase)
		assert.True(t, got.Reverting)
		assert.Equal(t, "v1.11.0", got.FromVersion)
		assert.Equal(t, "downgrade", got.Direction)
		assert.Equal(t, []string{"cp-1"}, got.Admitted)
	})

	t.Run("done", func(t *testing.T) {
		t.Parallel()

		got := controllers.Decide(catalogue, &cluster.ClusterSpec{TalosVersion: "v1.10.0", KubernetesVersion: "v1.32.0"}, fleet, etcd, upgrade.TalosUpgradeStatusSpec{})

		assert.Equal(t, upgrade.PhaseDone, got.Phase)
		assert.Equal(t, 4, got.Done)
		assert.Empty(t, got.Current)
	})
}
