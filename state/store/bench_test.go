package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	cosistore "github.com/cosi-project/runtime/pkg/state/impl/store"
	"github.com/cosi-project/runtime/pkg/state/impl/store/bolt"
	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"

	"github.com/upshift-io/upshift/state/store"
)

// writesPerBurst is one measured burst; each benchmark iteration alternates bursts on the two stores, so
// `-benchtime 1x` (make bench) still compares rounds×1,024 durable writes per store, interleaved in time.
const (
	writesPerBurst = 1024
	rounds         = 3
)

// benchStore is a state under benchmark and how to close it.
type benchStore struct {
	st    state.State
	close func()
}

func openUpshift(b *testing.B, path string) benchStore {
	s, err := store.Open(path)
	require.NoError(b, err)

	return benchStore{st: state.WrapCore(s.State()), close: func() {
		stats := s.Stats()
		b.ReportMetric(float64(stats.Writes)/float64(stats.Commits), "writes/commit")
		require.NoError(b, s.Close())
	}}
}

// openStockBolt is COSI's stock composition: inmem per namespace over the bbolt backing store, default (fsync)
// options.
func openStockBolt(b *testing.B, path string) benchStore {
	bs, err := bolt.NewBackingStore(func() (*bbolt.DB, error) {
		return bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	}, cosistore.ProtobufMarshaler{})
	require.NoError(b, err)

	st := state.WrapCore(namespaced.NewState(func(ns resource.Namespace) state.CoreState {
		return inmem.NewStateWithOptions(inmem.WithBackingStore(bs.WithNamespace(ns)), inmem.WithHistoryMaxCapacity(10000))(ns)
	}))

	return benchStore{st: st, close: func() { require.NoError(b, bs.Close()) }}
}

// BenchmarkDurableWrites measures fsynced updates per second through the COSI state API, all writers updating
// their own resource of ONE type in ONE namespace (a fleet's MachineUpgradeStatus updates): our store against
// COSI's stock bolt store, in bursts that alternate between the two so that both see the same disk. It reports
// both rates and their ratio.
func BenchmarkDurableWrites(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			ours := openUpshift(b, filepath.Join(b.TempDir(), "upshift.db"))
			defer ours.close()

			stock := openStockBolt(b, filepath.Join(b.TempDir(), "stock.db"))
			defer stock.close()

			oursRes, stockRes := createWriters(b, ours.st, writers), createWriters(b, stock.st, writers)

			var oursTime, stockTime time.Duration

			b.ResetTimer()

			for range b.N {
				for range rounds {
					oursTime += burst(b, ours.st, oursRes)
					stockTime += burst(b, stock.st, stockRes)
				}
			}

			writes := float64(b.N * rounds * writesPerBurst)
			b.ReportMetric(writes/oursTime.Seconds(), "upshift-writes/s")
			b.ReportMetric(writes/stockTime.Seconds(), "stock-writes/s")
			b.ReportMetric(stockTime.Seconds()/oursTime.Seconds(), "x-stock")
		})
	}
}

func createWriters(b *testing.B, st state.State, writers int) []*status {
	resources := make([]*status, writers)

	for w := range resources {
		resources[w] = newStatus("default", fmt.Sprintf("m%03d", w))
		require.NoError(b, st.Create(context.Background(), resources[w]))
	}

	return resources
}

// burst runs writesPerBurst updates spread over one goroutine per resource and returns how long they took.
func burst(b *testing.B, st state.State, resources []*status) time.Duration {
	var (
		next atomic.Int64
		g    errgroup.Group
	)

	start := time.Now()

	for _, r := range resources {
		g.Go(func() error {
			for next.Add(1) <= writesPerBurst {
				r.TypedSpec().Attempt++
				if err := st.Update(context.Background(), r); err != nil {
					return err
				}
			}

			return nil
		})
	}

	require.NoError(b, g.Wait())

	return time.Since(start)
}

// BenchmarkOpen measures Open (replay of snapshot + log, unmarshaling of every live resource) of a file holding
// 100k resources and 1M events, built directly in bbolt.
func BenchmarkOpen(b *testing.B) {
	const resources, events = 100_000, 1_000_000

	path := filepath.Join(b.TempDir(), "state.db")

	require.NoError(b, store.BuildLog(path, resources, events, func(i int, version uint64) resource.Resource {
		r := newStatus("default", fmt.Sprintf("m%06d", i))
		r.Metadata().SetVersion(resource.VersionUndefined)

		for range version {
			r.Metadata().SetVersion(r.Metadata().Version().Next())
		}

		r.TypedSpec().Attempt = int(version)

		return r
	}))

	b.ResetTimer()

	for range b.N {
		s, err := store.Open(path)
		require.NoError(b, err)

		b.StopTimer()

		list, err := s.State().List(context.Background(), resource.NewMetadata("default", statusType, "", resource.VersionUndefined))
		require.NoError(b, err)
		require.Len(b, list.Items, resources)
		require.NoError(b, s.Close())

		b.StartTimer()
	}

	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/open")
}
