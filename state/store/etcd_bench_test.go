package store_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/upshift-io/upshift/internal/etcdcluster"
	"github.com/upshift-io/upshift/state/store"
)

// BenchmarkEtcdWrites measures durable transitions per second through the COSI state API on a three-member etcd
// cluster (embedded members on loopback, each syncing its WAL as in production, so a write is on the disks of a
// quorum when it returns) against the bbolt store on the same disk, in bursts that alternate between the two. Each
// write on etcd is the resource and its log record in one transaction, as every transition a leader writes.
func BenchmarkEtcdWrites(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			cluster, err := etcdcluster.Start(filepath.Join(b.TempDir(), "etcd"), 3, nil, etcdcluster.WithFsync())
			require.NoError(b, err)

			defer cluster.Close() //nolint:errcheck

			cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second})
			require.NoError(b, err)

			defer cli.Close() //nolint:errcheck

			bolt := openUpshift(b, filepath.Join(b.TempDir(), "upshift.db"))
			defer bolt.close()

			onEtcd, err := store.OpenEtcd(b.Context(), cli)
			require.NoError(b, err)

			etcdState := state.WrapCore(onEtcd.State())

			boltRes, etcdRes := createWriters(b, bolt.st, writers), createWriters(b, etcdState, writers)

			var boltTime, etcdTime time.Duration

			b.ResetTimer()

			for range b.N {
				for range rounds {
					boltTime += burst(b, bolt.st, boltRes)
					etcdTime += burst(b, etcdState, etcdRes)
				}
			}

			writes := float64(b.N * rounds * writesPerBurst)
			b.ReportMetric(writes/etcdTime.Seconds(), "etcd-writes/s")
			b.ReportMetric(writes/boltTime.Seconds(), "bbolt-writes/s")
			b.ReportMetric(boltTime.Seconds()/etcdTime.Seconds(), "x-bbolt")
		})
	}
}
