package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// TestFleetStatus runs `upshift status` over three clusters: c3 Failed on a rolled-back worker, c2 upgrading (its
// worker never comes back from its reboot, within a reboot timeout longer than the test), c1 idle with a worker
// whose API is down. The Failed one comes first with its failed machine, then the upgrading one with its phase and
// progress, then the idle one with its unreachable machine, each with the newest Talos release the engine offers it.
func TestFleetStatus(t *testing.T) {
	const from, to = "1.13.4", "1.14.1"

	bed := startBed(t, testbed.WithLite(), testbed.WithFleetOptions(
		talosemu.WithClusters(3), talosemu.WithControlPlanes(1), talosemu.WithWorkers(2),
		talosemu.WithTalosVersion(from), talosemu.WithRebootDowntime(0),
		talosemu.WithFault("c2-w-1", talosemu.FaultNoReturn), talosemu.WithFault("c3-w-1", talosemu.FaultRollback),
	), testbed.WithUpgradeOptions(controllers.WithRebootTimeout(time.Hour)))
	st := bed.State()

	waitObserved(t, bed, from)

	for _, id := range []string{"c2", "c3"} {
		setCluster(t, st, id, func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + to })
	}

	waitTalos(t, st, "c3", 3*time.Minute, "c3 failing on its rolled-back worker", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseFailed
	})
	waitFor(t, st, upgrade.NewMachineUpgradeStatus("c2-w-1").Metadata(), 3*time.Minute, "c2-w-1 waiting to come back",
		func(s *upgrade.MachineUpgradeStatus) bool { return s.TypedSpec().Phase == upgrade.MachineWaitingReady })
	idle := waitTalos(t, st, "c1", time.Minute, "c1 offering newer releases", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseDone && len(s.AvailableVersions) > 0
	})

	require.NoError(t, bed.Fleet.SetFault(t.Context(), "c1-w-2", talosemu.FaultAPIDown))
	waitFor(t, st, observe.NewMachineStatus("c1-w-2").Metadata(), time.Minute, "c1-w-2 unreachable",
		func(s *observe.MachineStatus) bool { return !s.TypedSpec().Reachable })

	c2 := waitTalos(t, st, "c2", time.Minute, "c2 upgrading", phaseIs(upgrade.PhaseUpgrading, to)).TypedSpec()

	out := mustCLI(t, bed, "status")
	t.Logf("upshift status:\n%s", out)

	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4, "a header and one line per cluster")
	assert.True(t, strings.HasPrefix(lines[0], "CLUSTER "), lines[0])

	failed, upgrading, quiet := fields(lines[1]), fields(lines[2]), fields(lines[3])

	assert.Equal(t, "c3", failed[0], "the Failed cluster first")
	assert.Contains(t, lines[1], "talos Failed ")
	assert.Contains(t, lines[1], "1 failed")

	assert.Equal(t, "c2", upgrading[0], "the upgrading cluster next")
	assert.Contains(t, lines[2], "v"+from+" -> v"+to, "the lowest version its machines run, and the target")
	assert.Contains(t, lines[2], fmt.Sprintf("talos Upgrading %d/%d", c2.Done, c2.Total))

	assert.Equal(t, "c1", quiet[0], "the idle cluster last")
	assert.Contains(t, lines[3], "3, 1 unreachable")

	// Each line offers the releases newer than its cluster's target, as the engine listed them.
	for _, c := range []struct {
		line, target string
	}{{lines[1], "v" + to}, {lines[2], "v" + to}, {lines[3], "v" + from}} {
		var newer []string

		for _, v := range idle.TypedSpec().AvailableVersions {
			if versions.MustParse(v).Compare(versions.MustParse(c.target)) > 0 {
				newer = append(newer, v)
			}
		}

		if len(newer) == 0 {
			assert.NotContains(t, c.line, "talos v", "nothing newer than %s to offer", c.target)

			continue
		}

		assert.Contains(t, c.line, "talos "+newer[len(newer)-1], "the newest release offered") // listed in order
	}
}

func fields(line string) []string { return strings.Fields(line) }
