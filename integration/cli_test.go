package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// waitObserved waits until every machine of the bed has been observed on version.
func waitObserved(t *testing.T, bed *testbed.Bed, version string) {
	t.Helper()

	for _, n := range bed.Fleet.Nodes() {
		waitFor(t, bed.State(), observe.NewMachineStatus(n.Name()).Metadata(), time.Minute, n.Name()+" observed on "+version,
			func(s *observe.MachineStatus) bool { return sameVersion(s.TypedSpec().TalosVersion, version) })
	}
}

// TestUpgradeCLI drives a rollout the way a user does, on a lite fleet from the oldest supported version: the dry
// run shows the intermediate hop (no direct path) and changes nothing; an unsupported Kubernetes version is
// refused with the reason; the upgrade itself runs through the hops to Done; status shows it.
func TestUpgradeCLI(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	// Kubernetes 1.31, which Talos 1.14 no longer runs, is a release this engine is told about, so a Cluster may
	// ask for it.
	bed := startBed(t, testbed.WithLite(), testbed.WithFleetOptions(
		talosemu.WithControlPlanes(1), talosemu.WithWorkers(2), talosemu.WithTalosVersion(oldest),
		talosemu.WithRebootDowntime(0),
	), testbed.WithUpgradeOptions(controllers.WithKubernetesReleases(append([]string{"1.31.0"}, kuberollout.DefaultReleases...)...)))
	st := bed.State()

	waitObserved(t, bed, oldest)

	out := mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest, "--dry-run")
	t.Log(out)
	assert.Contains(t, out, "upgrade "+oldest+" -> ")
	assert.Contains(t, out, "no direct path")
	assert.Contains(t, out, "1. c1-cp-1")
	assert.Contains(t, out, "dry run: nothing changed")

	c, err := bed.State().Get(t.Context(), cluster.NewCluster("c1").Metadata())
	require.NoError(t, err)
	assert.Equal(t, "v"+oldest, c.(*cluster.Cluster).TypedSpec().TalosVersion, "a dry run changes nothing") //nolint:forcetypeassert

	// Talos 1.14 runs Kubernetes 1.32 and later only.
	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.KubernetesVersion = "v1.31.0" })

	_, errOut, err := cli(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest, "--dry-run")
	require.Error(t, err, "an unsupported Kubernetes version is refused")
	assert.Contains(t, errOut, "refusing to change cluster \"c1\" to Talos v"+newest)
	assert.Contains(t, errOut, "Kubernetes v1.31.0 must change first")

	_, errOut, err = cli(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)
	require.Error(t, err, "the request itself is refused too")
	assert.Contains(t, errOut, "must change first")

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.KubernetesVersion = "v" + talosemu.DefaultKubernetesVersion })

	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)
	done := waitTalos(t, st, "c1", 2*time.Minute, "the rollout to finish", phaseIs(upgrade.PhaseDone, newest))
	assert.Greater(t, len(done.TypedSpec().Plan), 1, "the rollout went through a hop")

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, newest, n.Version(), n.Name())

		// Attempt counts tries of one target: a clean rollout through two hops ends at attempt 1, not 2.
		mus, err := bed.State().Get(t.Context(), upgrade.NewMachineUpgradeStatus(n.Name()).Metadata())
		require.NoError(t, err)
		assert.Equal(t, 1, mus.(*upgrade.MachineUpgradeStatus).TypedSpec().Attempt, n.Name()) //nolint:forcetypeassert
	}

	status := mustCLI(t, bed, "status", "c1")
	t.Log(status)
	assert.Contains(t, status, "talos upgrade: Done 3/3")

	for line := range strings.Lines(status) {
		line = strings.TrimSuffix(line, "\n")
		assert.LessOrEqual(t, len([]rune(line)), 80, "status fits 80 columns: %q", line)
	}

	mustCLI(t, bed, "lock", "c1-w-1", "--reason", "payroll run")
	assert.Contains(t, mustCLI(t, bed, "status", "c1"), "locked: payroll run")

	_, errOut, err = cli(t, bed, "lock", "c1-w-1")
	require.Error(t, err)
	assert.Contains(t, errOut, "already locked")

	_, _, err = cli(t, bed, "lock", "c1-cp-1")
	require.Error(t, err, "a control plane cannot be locked")

	mustCLI(t, bed, "unlock", "c1-w-1")
	assert.NotContains(t, mustCLI(t, bed, "status", "c1"), "locked:")

	mustCLI(t, bed, "upgrade", "pause", "c1")
	assert.Contains(t, mustCLI(t, bed, "status", "c1"), "(paused)")
	mustCLI(t, bed, "upgrade", "resume", "c1")
	assert.NotContains(t, mustCLI(t, bed, "status", "c1"), "(paused)")

	_, errOut, err = cli(t, bed, "upgrade", "skip", "c1")
	require.Error(t, err)
	assert.Contains(t, errOut, "--machine M is required")

	_, errOut, err = cli(t, bed, "upgrade", "retry", "c1")
	require.Error(t, err)
	assert.Contains(t, errOut, "no failed machine upgrade")
}
