package rollout_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func TestTurn(t *testing.T) {
	t.Parallel()

	type claims = map[rollout.Rollout]rollout.Claim

	wants, busy := rollout.Claim{Wants: true}, rollout.Claim{Busy: true, Wants: true}

	for _, tc := range []struct {
		name   string
		prev   rollout.Rollout
		claims claims
		want   rollout.Rollout
	}{
		{"nobody wants it", rollout.RolloutTalos, claims{}, ""},
		{"the order when several ask at once", "", claims{rollout.RolloutConfig: wants, rollout.RolloutKubernetes: wants, rollout.RolloutTalos: wants}, rollout.RolloutTalos},
		{"work in flight keeps it", rollout.RolloutTalos, claims{rollout.RolloutTalos: wants, rollout.RolloutConfig: busy}, rollout.RolloutConfig},
		{"a started rollout is not interrupted by one asked for later", rollout.RolloutKubernetes, claims{rollout.RolloutTalos: wants, rollout.RolloutKubernetes: wants}, rollout.RolloutKubernetes},
		{"one at rest leaves it", rollout.RolloutTalos, claims{rollout.RolloutConfig: wants}, rollout.RolloutConfig},
	} {
		assert.Equal(t, tc.want, rollout.Turn(tc.prev, tc.claims), tc.name)
	}
}

func TestDecideCluster(t *testing.T) {
	t.Parallel()

	policy := rollout.Policy{Catalogue: versions.Shipped()}
	noKube := rollout.Claim{}

	// Two workers with a pending config change, on a Talos version older than the cluster's.
	machines := func() []rollout.MachineView {
		ms := []rollout.MachineView{configView("w-1", cluster.RoleWorker, true, false), configView("w-2", cluster.RoleWorker, true, false)}
		for i := range ms {
			ms[i].Status.TalosVersion = "v1.13.4"
		}

		return ms
	}

	clusterView := func(ms []rollout.MachineView) rollout.ClusterView {
		v := configCluster(ms)
		v.Observed = []string{"w-1", "w-2"}

		return v
	}

	t.Run("the Talos upgrade goes first; the config rollout waits and says for what", func(t *testing.T) {
		t.Parallel()

		d := rollout.DecideCluster(policy, clusterView(machines()), upgrade.TalosUpgradeStatusSpec{}, upgrade.ConfigRolloutStatusSpec{}, noKube, "")
		assert.Equal(t, string(rollout.RolloutTalos), d.Talos.Turn)
		assert.NotEmpty(t, d.Talos.Admitted)
		assert.Empty(t, d.Config.Admitted, "no config change starts while the Talos upgrade has the turn")
		assert.Equal(t, upgrade.PhasePending, d.Config.Phase)
		assert.Contains(t, d.Config.Reason, "Talos upgrade")
	})

	t.Run("config changes in flight keep the turn from the Talos upgrade", func(t *testing.T) {
		t.Parallel()

		ms := machines()
		ms[0].Config.Phase = upgrade.MachineApplyingConfig

		d := rollout.DecideCluster(policy, clusterView(ms), upgrade.TalosUpgradeStatusSpec{}, upgrade.ConfigRolloutStatusSpec{}, noKube, "")
		assert.Equal(t, string(rollout.RolloutConfig), d.Talos.Turn)
		assert.Empty(t, d.Talos.Admitted, "no Talos upgrade starts while a config change is in flight")
		assert.Contains(t, d.Talos.Reason, "config rollout")
	})

	t.Run("a Talos upgrade blocked on locks leaves the turn to the config rollout", func(t *testing.T) {
		t.Parallel()

		ms := machines()
		for i := range ms {
			ms[i].Locked = i == 0
		}

		ms[1].Status.TalosVersion = "v1.14.1" // only the locked machine is left for the Talos upgrade

		d := rollout.DecideCluster(policy, clusterView(ms), upgrade.TalosUpgradeStatusSpec{}, upgrade.ConfigRolloutStatusSpec{}, noKube, "")
		assert.Equal(t, upgrade.PhaseBlocked, d.Talos.Phase)
		assert.Equal(t, string(rollout.RolloutConfig), d.Talos.Turn)
		assert.Equal(t, []string{"w-2"}, d.Config.Admitted)
	})

	t.Run("the Kubernetes upgrade gets the turn with its target, and keeps it", func(t *testing.T) {
		t.Parallel()

		ms := machines()
		for i := range ms {
			ms[i].Config.Pending, ms[i].Config.TargetVersion = false, ms[i].Config.AppliedVersion
			ms[i].Status.TalosVersion = "v1.14.1"
		}

		kube := rollout.Claim{Wants: true}
		d := rollout.DecideCluster(policy, clusterView(ms), upgrade.TalosUpgradeStatusSpec{}, upgrade.ConfigRolloutStatusSpec{}, kube, "1.36.2")
		assert.Equal(t, string(rollout.RolloutKubernetes), d.Talos.Turn)
		assert.Equal(t, "1.36.2", d.Talos.YieldsTo)

		// A Talos upgrade asked for now waits for the Kubernetes upgrade, which started first.
		for i := range ms {
			ms[i].Status.TalosVersion = "v1.13.4"
		}

		d = rollout.DecideCluster(policy, clusterView(ms), d.Talos, d.Config, kube, "1.36.2")
		assert.Equal(t, string(rollout.RolloutKubernetes), d.Talos.Turn)
		assert.Empty(t, d.Talos.Admitted)
		assert.Equal(t, upgrade.PhasePending, d.Talos.Phase)
		assert.Contains(t, d.Talos.Reason, "Kubernetes upgrade")

		d = rollout.DecideCluster(policy, clusterView(ms), d.Talos, d.Config, noKube, "1.36.2") // the Kubernetes upgrade is Done
		assert.Equal(t, string(rollout.RolloutTalos), d.Talos.Turn)
		assert.Empty(t, d.Talos.YieldsTo)
		assert.NotEmpty(t, d.Talos.Admitted)
	})

	t.Run("a Kubernetes upgrade at rest gives the turn back in two steps", func(t *testing.T) {
		t.Parallel()

		ms := machines() // the Talos upgrade wants the cluster
		for i := range ms {
			ms[i].Config.Pending, ms[i].Config.TargetVersion = false, ms[i].Config.AppliedVersion
		}

		prev := upgrade.TalosUpgradeStatusSpec{Turn: string(rollout.RolloutKubernetes), YieldsTo: "1.36.2"}

		// Blocked on a locked kubelet, last decided with the turn: the grant is taken back, nothing else starts.
		atRest := rollout.Claim{Busy: true}
		d := rollout.DecideCluster(policy, clusterView(ms), prev, upgrade.ConfigRolloutStatusSpec{}, atRest, "1.36.2")
		assert.Equal(t, string(rollout.RolloutKubernetes), d.Talos.Turn)
		assert.Empty(t, d.Talos.YieldsTo, "the grant is taken back")
		assert.Empty(t, d.Talos.Admitted, "no Talos machine starts while the Kubernetes upgrade may act on its grant")
		assert.Contains(t, d.Talos.Reason, "release the cluster")

		// The Kubernetes upgrade decided from the empty grant: the Talos upgrade starts.
		d = rollout.DecideCluster(policy, clusterView(ms), d.Talos, d.Config, rollout.Claim{}, "1.36.2")
		assert.Equal(t, string(rollout.RolloutTalos), d.Talos.Turn)
		assert.NotEmpty(t, d.Talos.Admitted)
	})
}
