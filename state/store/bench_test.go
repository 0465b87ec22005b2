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

// writesPerOp is the work of one benchmark iteration, so `-benchtime 1x` (make bench) still measures 1,024
// durable writes.
const writesPerOp = 1024

type benchState struct {
	open func(b *testing.B, path string) (state.State, func())
	name string
}

var benchStates = []benchState{
	{name: "upshift", open: func(b *testing.B, path string) (state.State, func()) {
		s, err := store.Open(path)
		require.NoError(b, err)

		return state.WrapCore(s.State()), func() {
			stats := s.Stats()
			b.ReportMetric(float64(stats.Writes)/float64(stats.Commits), "writes/commit")
			require.NoError(b, s.Close())
		}
	}},
	// COSI's stock composition: inmem per namespace over the bbolt backing store, default (fsync) options.
	{name: "cosi-bolt", open: func(b *testing.B, path string) (state.State, func()) {
		bs, err := bolt.NewBackingStore(func() (*bbolt.DB, error) {
			return bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
		}, cosistore.ProtobufMarshaler{})
		require.NoError(b, err)

		st := state.WrapCore(namespaced.NewState(func(ns resource.Namespace) state.CoreState {
			return inmem.NewStateWithOptions(inmem.WithBackingStore(bs.WithNamespace(ns)), inmem.WithHistoryMaxCapacity(10000))(ns)
		}))

		return st, func() { require.NoError(b, bs.Close()) }
	}},
}

// BenchmarkDurableWrites measures fsynced updates per second through the COSI state API, all writers updating
// their own resource of ONE type in ONE namespace (a fleet's MachineUpgradeStatus updates): our store against
// COSI's stock bolt store, in the same run.
func BenchmarkDurableWrites(b *testing.B) {
	for _, writers := range []int{1, 16} {
		for _, impl := range benchStates {
			b.Run(fmt.Sprintf("writers=%d/store=%s", writers, impl.name), func(b *testing.B) {
				st, closeFn := impl.open(b, filepath.Join(b.TempDir(), "state.db"))
				defer closeFn()

				ctx := context.Background()
				resources := make([]*status, writers)

				for w := range resources {
					resources[w] = newStatus("default", fmt.Sprintf("m%03d", w))
					require.NoError(b, st.Create(ctx, resources[w]))
				}

				b.ResetTimer()

				for range b.N {
					var (
						next atomic.Int64
						g    errgroup.Group
					)

					for _, r := range resources {
						g.Go(func() error {
							for next.Add(1) <= writesPerOp {
								r.TypedSpec().Attempt++
								if err := st.Update(ctx, r); err != nil {
									return err
								}
							}

							return nil
						})
					}

					require.NoError(b, g.Wait())
				}

				b.ReportMetric(float64(b.N*writesPerOp)/b.Elapsed().Seconds(), "writes/s")
			})
		}
	}
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
