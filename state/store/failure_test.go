package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/conformance"
	"github.com/stretchr/testify/require"
)

// TestCommitFailureFailsTheStore pulls the database out from under the store so that the next commit fails:
// the write that needed it gets the error, so do later writes, a watch gets one Errored event, and a read
// that would show the lost write is refused rather than served from memory that is ahead of the disk.
func TestCommitFailureFailsTheStore(t *testing.T) {
	t.Parallel()

	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	require.NoError(t, err)

	t.Cleanup(func() { _ = s.Close() }) //nolint:errcheck // the database is already closed underneath

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	st := state.WrapCore(s.State())
	durable := conformance.NewPathResource("default", "durable")
	require.NoError(t, st.Create(ctx, durable))

	events := make(chan state.Event)
	require.NoError(t, st.WatchKind(ctx, durable.Metadata(), events))

	require.NoError(t, s.db.Close()) // every later bbolt transaction fails

	lost := conformance.NewPathResource("default", "lost")
	err = st.Create(ctx, lost)
	require.ErrorContains(t, err, "committing to state")
	require.ErrorIs(t, err, ErrFailed)

	require.ErrorContains(t, st.Create(ctx, conformance.NewPathResource("default", "later")), "unusable until reopened")

	_, err = st.Get(ctx, lost.Metadata())
	require.ErrorContains(t, err, "unusable until reopened")

	var ev state.Event

	select {
	case ev = <-events:
	case <-ctx.Done():
		t.Fatal("no event on the watch")
	}

	require.Equal(t, state.Errored, ev.Type, "the watch must not deliver the lost write: %v", ev)
	require.ErrorContains(t, ev.Error, "unusable until reopened")

	_, err = st.Get(ctx, resource.NewMetadata("other", "other", "x", resource.VersionUndefined))
	require.True(t, state.IsNotFoundError(err), "collections without lost writes still read: %v", err)
}
