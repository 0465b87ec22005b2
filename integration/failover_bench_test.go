package integration

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
)

// BenchmarkFailover measures how long the replicas go without a leader: after the leader is killed with SIGKILL
// (its lease must expire first: replicaLease), and, as the baseline in the same run, after it is stopped gracefully
// (it resigns). A replica leads once etcd names it, which is when its controllers start. Three etcd members, three
// replicas, a lite fleet of one cluster; each iteration does one graceful stop and one kill.
func BenchmarkFailover(b *testing.B) {
	ctx, cancel := context.WithTimeout(b.Context(), 3*time.Minute)
	defer cancel()

	rs, err := testbed.StartReplicas(ctx, b.TempDir(), 3, 3, replicaLease, testbed.SelfCommand(),
		talosemu.WithControlPlanes(1), talosemu.WithWorkers(1))
	require.NoError(b, err)

	defer func() { require.NoError(b, rs.Close()) }()

	var graceful, killed time.Duration

	for range b.N {
		for _, crash := range []bool{false, true} {
			old := waitLeader(b, rs, 0, -1, takeoverBound)
			asked := other(old, -1)

			start := time.Now()

			if crash {
				require.NoError(b, rs.Kill(old))
			} else {
				require.NoError(b, rs.Stop(old))
			}

			waitLeader(b, rs, asked, old, takeoverBound)

			if crash {
				killed += time.Since(start)
			} else {
				graceful += time.Since(start)
			}

			require.NoError(b, rs.StartReplica(b.Context(), old))
		}
	}

	b.ReportMetric(killed.Seconds()/float64(b.N), "s/failover-after-kill")
	b.ReportMetric(graceful.Seconds()/float64(b.N), "s/handover-after-stop")
	b.ReportMetric(killed.Seconds()/graceful.Seconds(), "x-graceful")
	b.ReportMetric(replicaLease.Seconds(), "s-lease")
}
