package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/upshift-io/upshift/state/store"
)

// TestWatchEventsFollowDurability checks the promise a controller relies on before taking a side effect: when a
// watch event for a write arrives, that write is already in the on-disk log. Several writers run concurrently so
// that events arrive while later commits are still in flight.
func TestWatchEventsFollowDurability(t *testing.T) {
	t.Parallel()

	s := openTestStore(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close() //nolint:errcheck

	st := state.WrapCore(s.State())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const writers, updates = 8, 20

	events := make(chan state.Event)
	require.NoError(t, st.WatchKind(ctx, resource.NewMetadata("default", statusType, "", resource.VersionUndefined), events))

	g := writeConcurrently(ctx, st, writers, updates)

	for range writers * (updates + 1) {
		var ev state.Event

		select {
		case ev = <-events:
		case <-ctx.Done():
			t.Fatal("timed out waiting for watch events")
		}

		md := ev.Resource.Metadata()

		h, err := s.History(ctx, md.Namespace(), md.Type(), md.ID())
		require.NoError(t, err)
		require.NotEmpty(t, h.Events)
		require.GreaterOrEqual(t, h.Events[len(h.Events)-1].Version, md.Version().Value(),
			"watch event for %s delivered before its write was durable", md)
	}

	require.NoError(t, g.Wait())
}

// writeConcurrently starts writers goroutines, each creating its resource m<w> and updating it updates times.
func writeConcurrently(ctx context.Context, st state.State, writers, updates int) *errgroup.Group {
	var g errgroup.Group

	for w := range writers {
		g.Go(func() error {
			r := newStatus("default", fmt.Sprintf("m%d", w))
			if err := st.Create(ctx, r); err != nil {
				return err
			}

			for range updates {
				r.TypedSpec().Attempt++
				if err := st.Update(ctx, r); err != nil {
					return err
				}
			}

			return nil
		})
	}

	return &g
}

// TestGroupCommitBatchesConcurrentWriters checks that concurrent writers of ONE collection share commits, which
// COSI's stock bolt store cannot do because it fsyncs under the collection mutex; the commit observer sees every
// commit with its writes.
func TestGroupCommitBatchesConcurrentWriters(t *testing.T) {
	t.Parallel()

	var observedCommits, observedWrites atomic.Uint64

	s := openTestStore(t, filepath.Join(t.TempDir(), "state.db"), store.WithCommitObserver(func(took time.Duration, writes int) {
		assert.Positive(t, took)
		observedCommits.Add(1)
		observedWrites.Add(uint64(writes))
	}))
	defer s.Close() //nolint:errcheck

	st := state.WrapCore(s.State())
	ctx := context.Background()

	const writers, updates = 16, 30

	g := writeConcurrently(ctx, st, writers, updates)

	require.NoError(t, g.Wait())

	stats := s.Stats()
	require.Equal(t, uint64(writers*(updates+1)), stats.Writes)
	require.Less(t, stats.Commits, stats.Writes/2, "concurrent writers must share commits: %+v", stats)
	assert.Equal(t, stats.Commits, observedCommits.Load())
	assert.Equal(t, stats.Writes, observedWrites.Load())
}

func TestWritesAfterCloseFail(t *testing.T) {
	t.Parallel()

	s := openTestStore(t, filepath.Join(t.TempDir(), "state.db"))
	require.NoError(t, s.Close())

	err := s.State().Create(context.Background(), newStatus("default", "late"))
	require.ErrorIs(t, err, store.ErrClosed)
}

// TestCloseDuringWrites closes the store under concurrent writers: every write either fails with ErrClosed or
// was acknowledged and is there after reopening.
func TestCloseDuringWrites(t *testing.T) {
	t.Parallel()

	path, s, st := newTestStore(t)
	ctx := context.Background()

	const writers = 8

	acked := make([]int, writers)
	started := make(chan struct{}, writers)

	var g errgroup.Group

	for w := range writers {
		g.Go(func() error {
			for i := 0; ; i++ {
				err := st.Create(ctx, newStatus("default", fmt.Sprintf("w%d-%d", w, i)))
				if errors.Is(err, store.ErrClosed) {
					return nil
				}

				if err != nil {
					return err
				}

				acked[w] = i + 1

				if i == 0 {
					started <- struct{}{}
				}
			}
		})
	}

	for range writers {
		<-started
	}

	require.NoError(t, s.Close())
	require.NoError(t, g.Wait())

	s = openTestStore(t, path)
	defer s.Close() //nolint:errcheck

	for w, n := range acked {
		for i := range n {
			_, err := s.State().Get(ctx, resource.NewMetadata("default", statusType, fmt.Sprintf("w%d-%d", w, i), resource.VersionUndefined))
			require.NoError(t, err, "acknowledged write w%d-%d lost at Close", w, i)
		}
	}
}
