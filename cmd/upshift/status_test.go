package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// A worker polled while it rebooted (unreachable, on the old version) whose upgrade finished since is shown on the
// version its upgrade confirmed, without the older observation's "unreachable".
func TestStatusPairsAFinishedUpgradeWithAnOlderObservation(t *testing.T) {
	t.Parallel()

	t0 := time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC)

	c := cluster.NewCluster("c1")
	c.TypedSpec().TalosVersion = "v1.14.1"

	m := cluster.NewMachine("c1-w-2")
	m.TypedSpec().Cluster, m.TypedSpec().Role = "c1", cluster.RoleWorker

	s := observe.NewMachineStatus("c1-w-2")
	*s.TypedSpec() = observe.MachineStatusSpec{Cluster: "c1", TalosVersion: "v1.13.4", Error: "unreachable", ObservedAt: t0}

	u := upgrade.NewMachineUpgradeStatus("c1-w-2")
	*u.TypedSpec() = upgrade.MachineUpgradeStatusSpec{
		Cluster: "c1", Phase: upgrade.MachineDone, FromVersion: "v1.13.4", ToVersion: "v1.14.1", PhaseChangedAt: t0.Add(time.Second),
	}

	v := &clusterView{
		cluster: c, machines: []*cluster.Machine{m},
		statuses: map[string]*observe.MachineStatus{"c1-w-2": s},
		upgrades: map[string]*upgrade.MachineUpgradeStatus{"c1-w-2": u},
	}

	var b strings.Builder
	require.NoError(t, v.printTree(&b))

	assert.Contains(t, b.String(), "└─ c1-w-2         worker v1.14.1                Done -> v1.14.1\n")
	assert.NotContains(t, b.String(), "unreachable")
}

// The Talos status lists only releases newer than the cluster's (the catalogue's choices include older ones), and
// a long list of choices goes on over lines that keep to 80 columns.
func TestStatusListsNewerReleasesWithin80Columns(t *testing.T) {
	t.Parallel()

	c := cluster.NewCluster("c1")
	c.TypedSpec().TalosVersion, c.TypedSpec().KubernetesVersion = "v1.12.0", "v1.33.7"

	tus := upgrade.NewTalosUpgradeStatus("c1")
	tus.TypedSpec().Phase = upgrade.PhaseDone
	tus.TypedSpec().AvailableVersions = []string{"v1.11.0", "v1.11.6", "v1.12.0", "v1.12.6", "v1.13.0", "v1.13.4", "v1.14.0", "v1.14.1"}

	kus := upgrade.NewKubernetesUpgradeStatus("c1")
	kus.TypedSpec().Phase = upgrade.PhaseDone
	kus.TypedSpec().AvailableVersions = []string{"1.33.7", "1.34.0", "1.34.1", "1.34.2", "1.34.3", "1.35.0", "1.35.1"}

	v := &clusterView{cluster: c, talos: tus, kube: kus}

	var b strings.Builder
	require.NoError(t, v.printTree(&b))

	out := b.String()
	t.Log(out)

	assert.Contains(t, out, "│  newer Talos available: v1.12.6, v1.13.0, v1.13.4, v1.14.0, v1.14.1\n")
	assert.NotContains(t, out, "v1.11.6", "an older release is no newer one")
	assert.Contains(t, out, "│  newer Kubernetes available: 1.33.7, 1.34.0, 1.34.1, 1.34.2, 1.34.3, 1.35.0,\n│    1.35.1\n")

	for line := range strings.Lines(out) {
		assert.LessOrEqual(t, len([]rune(strings.TrimSuffix(line, "\n"))), 80, line)
	}
}
