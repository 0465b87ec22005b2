package integration

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// TestRollingUpgrade rolls 3 control planes and 4 workers (parallelism 2) running a workload with a PDB from the
// emulator's oldest Talos version to its newest, through the hops the plan needs, and proves the rollout rules
// from the fleet's journal and the Kubernetes API.
func TestRollingUpgrade(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	bed := startBed(t, testbed.WithFleetOptions(
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(4), talosemu.WithTalosVersion(oldest),
		talosemu.WithRebootDowntime(rebootDowntime),
	))
	st := bed.State()
	client := kubeClient(t, bed, "c1")

	deployWorkload(t, client)
	waitObserved(t, bed, oldest)

	kube := recordKube(t, client)

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) {
		s.Parallelism = "2"
		s.TalosVersion = "v" + newest
	})

	done := waitTalos(t, st, "c1", 5*time.Minute, "the rollout to finish", phaseIs(upgrade.PhaseDone, newest))
	assert.Equal(t, 7, done.TypedSpec().Done)
	assert.Equal(t, 7, done.TypedSpec().Total)
	assert.Greater(t, len(done.TypedSpec().Plan), 1, "no direct path from %s to %s: the plan has hops", oldest, newest)

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, newest, n.Version(), n.Name())
	}

	r := readRollout(bed.Fleet)

	require.NoError(t, r.controlPlanesFirst(), "control planes before workers, on every hop")
	assert.Equal(t, 1, r.controlPlanesDownAtOnce(), "never two control planes down at once")
	require.NoError(t, r.forfeitBeforeReboots(), "leadership forfeited before a control plane reboots")
	assert.Empty(t, r.legacyWithoutPreserve(), "preserve=true on every legacy upgrade")
	assert.Empty(t, r.duplicates(), "no install or reboot sent twice for a step")

	workers := func(iv interval) bool { return !r.controlPlanes[iv.node] }
	assert.Equal(t, 2, maxConcurrent(r.installs(), workers), "at most 2 workers in flight, and at some moment exactly 2")

	assert.Empty(t, kube.checkDrainedReboots(r.rebootDowns()), "per node: cordon, drain, reboot, uncordon")

	for node, downs := range r.rebootDowns() {
		assert.GreaterOrEqual(t, kube.cordonCycles()[node], len(downs), "%s was cordoned and uncordoned around each of its %d reboots", node, len(downs))
	}

	assert.GreaterOrEqual(t, kube.lowestAvailable(), int32(workloadMinAvail), "the PDB (minAvailable %d) was never violated", workloadMinAvail)
}
