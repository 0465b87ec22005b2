package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// benchClustersEnv sets the largest fleet BenchmarkRollout runs (clusters of 10 machines).
const benchClustersEnv = "UPSHIFT_BENCH_CLUSTERS"

// BenchmarkRollout upgrades every cluster of a lite fleet (3 control planes + 7 workers each, every worker at once,
// no reboot downtime) with the engine as a child process, and reports wall time and engine CPU per machine and the
// engine's peak memory. Sizes grow tenfold from 10 clusters up to $UPSHIFT_BENCH_CLUSTERS (default 1,000, a
// 10,000-machine fleet: 6 to 10 minutes here, most of it starting and registering the fleet), so the smaller
// sizes are the baseline the largest is compared with in the same run.
func BenchmarkRollout(b *testing.B) {
	largest := 1000

	if s := os.Getenv(benchClustersEnv); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(b, err, benchClustersEnv)

		largest = n
	}

	for clusters := 10; clusters <= largest; clusters *= 10 {
		b.Run(fmt.Sprintf("clusters=%d", clusters), func(b *testing.B) { benchRollout(b, clusters) })
	}
}

func benchRollout(b *testing.B, clusters int) {
	const machinesPerCluster = 10

	for range b.N {
		b.StopTimer()

		bed, err := testbed.Start(b.Context(), testbed.WithDir(b.TempDir()), testbed.WithLite(),
			testbed.WithEngineProcess(testbed.SelfCommand()),
			testbed.WithFleetOptions(talosemu.WithClusters(clusters), talosemu.WithControlPlanes(3),
				talosemu.WithWorkers(machinesPerCluster-3), talosemu.WithTalosVersion("1.13.4"), talosemu.WithRebootDowntime(0)))
		require.NoError(b, err)

		st := bed.State()
		ids := bed.Fleet.Clusters()

		require.NoError(b, waitPhase(b.Context(), st, ids, func(s *upgrade.TalosUpgradeStatusSpec) bool { return s.Phase == upgrade.PhaseDone }))

		rollout := measureEngine(b, bed, func() {
			for _, id := range ids {
				_, err = safeUpdateCluster(b.Context(), st, id, func(s *cluster.ClusterSpec) {
					s.Parallelism = "100%"
					s.TalosVersion = "v1.14.1"
				})
				require.NoError(b, err)
			}

			require.NoError(b, waitPhase(b.Context(), st, ids, phaseIs(upgrade.PhaseDone, "1.14.1")))
		})

		machines := float64(clusters * machinesPerCluster)
		b.ReportMetric(float64(rollout.wall.Microseconds())/machines, "wall-µs/machine")
		b.ReportMetric(float64(rollout.cpu.Microseconds())/machines, "engine-cpu-µs/machine")
		b.ReportMetric(float64(rollout.peakRSS)/(1<<20), "engine-peak-MiB")

		require.NoError(b, bed.Close())
	}
}

// engineSpan is what a measured span of a benchmark took: wall time, and the child engine's CPU time and peak
// resident memory.
type engineSpan struct {
	wall, cpu time.Duration
	peakRSS   uint64
}

func (s *engineSpan) add(o engineSpan) {
	s.wall, s.cpu, s.peakRSS = s.wall+o.wall, s.cpu+o.cpu, max(s.peakRSS, o.peakRSS)
}

// measureEngine runs span with the benchmark timer on and reports its wall time and the child engine's CPU time
// over it (read from /proc, in clock ticks of 10 ms), and the engine's peak memory at its end.
func measureEngine(b *testing.B, bed *testbed.Bed, span func()) engineSpan {
	b.Helper()

	before, err := bed.EngineUsage()
	require.NoError(b, err)

	b.StartTimer()

	start := time.Now()

	span()

	elapsed := time.Since(start)

	b.StopTimer()

	after, err := bed.EngineUsage()
	require.NoError(b, err)

	return engineSpan{wall: elapsed, cpu: after.CPU - before.CPU, peakRSS: after.PeakRSS}
}

// safeUpdateCluster changes a Cluster, retrying on conflicts.
func safeUpdateCluster(ctx context.Context, st state.State, id string, set func(*cluster.ClusterSpec)) (*cluster.Cluster, error) {
	r, err := st.UpdateWithConflicts(ctx, cluster.NewCluster(id).Metadata(), func(r resource.Resource) error {
		set(r.(*cluster.Cluster).TypedSpec()) //nolint:forcetypeassert // the state holds Clusters of this type

		return nil
	})
	if err != nil {
		return nil, err
	}

	return r.(*cluster.Cluster), nil //nolint:forcetypeassert // as above
}

// waitPhase waits, on a watch of each cluster's TalosUpgradeStatus in turn, until every one of them matches.
func waitPhase(ctx context.Context, st state.State, ids []string, match func(*upgrade.TalosUpgradeStatusSpec) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()

	for _, id := range ids {
		if _, err := st.WatchFor(ctx, upgrade.NewTalosUpgradeStatus(id).Metadata(), state.WithCondition(func(r resource.Resource) (bool, error) {
			s, ok := r.(*upgrade.TalosUpgradeStatus)

			return ok && match(s.TypedSpec()), nil
		})); err != nil {
			return fmt.Errorf("waiting for cluster %q: %w", id, err)
		}
	}

	return nil
}
