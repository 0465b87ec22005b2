package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/state/store"
)

// newTestStore opens a store on a fresh file and returns the file, the store and its full state API.
func newTestStore(t *testing.T, opts ...store.Option) (string, *store.Store, state.State) {
	t.Helper()

	path := filepath.Join(t.TempDir(), "state.db")
	s := openTestStore(t, path, opts...)

	return path, s, state.WrapCore(s.State())
}

func openTestStore(t *testing.T, path string, opts ...store.Option) *store.Store {
	t.Helper()

	s, err := store.Open(path, opts...)
	require.NoError(t, err)

	return s
}

func TestHistoryRecordsKindsVersionsAndWriters(t *testing.T) {
	t.Parallel()

	path, s, st := newTestStore(t)
	ctx := context.Background()

	r := newStatus("default", "m1")
	require.NoError(t, st.Create(store.WithWriter(ctx, "alice"), r))

	r.TypedSpec().Phase = "Installing"
	require.NoError(t, st.Update(ctx, r)) // no writer in the context, no owner: "api"

	owned := newStatus("default", "m2")
	require.NoError(t, st.Create(ctx, owned, state.WithCreateOwner("MachineUpgradeController")))
	require.NoError(t, st.Destroy(ctx, owned.Metadata(), state.WithDestroyOwner("MachineUpgradeController")))
	require.NoError(t, st.Destroy(store.WithWriter(ctx, "bob"), r.Metadata()))

	require.NoError(t, s.Close())

	// The history is read back from the file, after a restart.
	s = openTestStore(t, path)
	defer s.Close() //nolint:errcheck

	h, err := s.History(ctx, "default", statusType, "m1")
	require.NoError(t, err)
	require.Equal(t, uint64(1), h.RetainedFrom)
	require.Nil(t, h.Snapshot)
	require.Len(t, h.Events, 3)

	type row struct {
		kind    store.EventKind
		version uint64
		writer  string
		phase   string
	}

	var got []row

	for _, ev := range h.Events {
		spec := ev.Resource.(*status).TypedSpec() //nolint:forcetypeassert,errcheck // typed, the type is registered
		got = append(got, row{ev.Kind, ev.Version, ev.Writer, spec.Phase})

		require.Equal(t, "m1", ev.ID)
		require.False(t, ev.Time.IsZero())
	}

	require.Equal(t, []row{
		{store.KindCreated, 1, "alice", "Queued"},
		{store.KindUpdated, 2, store.DefaultWriter, "Installing"},
		{store.KindDestroyed, 2, "bob", "Installing"},
	}, got)

	h, err = s.History(ctx, "default", statusType, "m2")
	require.NoError(t, err)
	require.Len(t, h.Events, 2)
	require.Equal(t, "MachineUpgradeController", h.Events[0].Writer)
	require.Equal(t, "MachineUpgradeController", h.Events[1].Writer)

	all, err := s.Events(ctx, 0, 0)
	require.NoError(t, err)
	require.Len(t, all, 5)

	for i, ev := range all {
		require.Equal(t, uint64(i+1), ev.Seq)
	}

	tail, err := s.Events(ctx, 4, 1)
	require.NoError(t, err)
	require.Len(t, tail, 1)
	require.Equal(t, uint64(4), tail[0].Seq)
}

func TestReopenRestoresStateExactly(t *testing.T) {
	t.Parallel()

	path, s, st := newTestStore(t)
	ctx := context.Background()

	for i := range 50 {
		r := newStatus("default", fmt.Sprintf("m%02d", i))
		r.Metadata().Labels().Set("cluster", fmt.Sprintf("c%d", i%3))
		require.NoError(t, st.Create(ctx, r, state.WithCreateOwner("ctrl")))

		for range i % 4 {
			r.TypedSpec().Attempt++
			require.NoError(t, st.Update(ctx, r, state.WithUpdateOwner("ctrl")))
		}
	}

	other := newStatus("cluster-c1", "m00")
	require.NoError(t, st.Create(ctx, other))
	require.NoError(t, st.AddFinalizer(ctx, other.Metadata(), "upgrade"))
	_, err := st.Teardown(ctx, other.Metadata())
	require.NoError(t, err)
	require.NoError(t, st.Destroy(ctx, resource.NewMetadata("default", statusType, "m07", resource.VersionUndefined), state.WithDestroyOwner("ctrl")))

	before := listAll(t, st, "default", "cluster-c1")

	require.NoError(t, s.Close())

	s = openTestStore(t, path)
	defer s.Close() //nolint:errcheck

	after := listAll(t, state.WrapCore(s.State()), "default", "cluster-c1")
	require.Equal(t, before, after)
	require.Len(t, after, 50)

	// Versions continue where they were: the reopened state accepts an update of the restored version.
	r, err := safe.StateGet[*status](ctx, s.State(), resource.NewMetadata("default", statusType, "m03", resource.VersionUndefined))
	require.NoError(t, err)
	require.Equal(t, uint64(4), r.Metadata().Version().Value())
	require.Equal(t, "c0", must(r.Metadata().Labels().Get("cluster")))
	r.TypedSpec().Phase = "Done"
	require.NoError(t, s.State().Update(ctx, r, state.WithUpdateOwner("ctrl")))
	require.Equal(t, uint64(5), r.Metadata().Version().Value())
}

// listAll renders every resource of the test type in the namespaces, metadata and spec, for comparison.
func listAll(t *testing.T, st state.State, namespaces ...resource.Namespace) []string {
	t.Helper()

	var out []string

	for _, ns := range namespaces {
		list, err := st.List(context.Background(), resource.NewMetadata(ns, statusType, "", resource.VersionUndefined))
		require.NoError(t, err)

		for _, r := range list.Items {
			y, err := resource.MarshalYAML(r)
			require.NoError(t, err)

			text, err := yaml.Marshal(y)
			require.NoError(t, err)

			out = append(out, string(text))
		}
	}

	return out
}

func must(v string, ok bool) string {
	if !ok {
		return "<missing>"
	}

	return v
}

func TestRetentionByCountCompactsIntoSnapshot(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")
	retention := store.Retention{MaxEvents: 40}
	s := openTestStore(t, path, store.WithRetention(retention))
	st := state.WrapCore(s.State())
	ctx := context.Background()

	for i := range 10 {
		r := newStatus("default", fmt.Sprintf("m%d", i))
		require.NoError(t, st.Create(ctx, r))

		for range 30 {
			r.TypedSpec().Attempt++
			require.NoError(t, st.Update(ctx, r))
		}
	}

	require.NoError(t, st.Destroy(ctx, resource.NewMetadata("default", statusType, "m0", resource.VersionUndefined)))

	before := listAll(t, st, "default")

	// 311 events were written; compaction (in the background, after commits) keeps 40 plus at most the 10% slack
	// before it runs again.
	var events []store.Event

	require.Eventually(t, func() bool {
		var err error

		events, err = s.Events(ctx, 0, 0)
		require.NoError(t, err)

		return len(events) <= 44
	}, 10*time.Second, 5*time.Millisecond)
	require.GreaterOrEqual(t, len(events), 40)
	require.Equal(t, uint64(311), events[len(events)-1].Seq)

	// m8's 31 events are 249..279: the oldest were compacted, the newest retained.
	h, err := s.History(ctx, "default", statusType, "m8")
	require.NoError(t, err)
	require.Equal(t, events[0].Seq, h.RetainedFrom, "history must say where the retained log begins")
	require.False(t, h.RetainedSince.IsZero())
	require.NotNil(t, h.Snapshot, "m8's older events were compacted into the snapshot")
	require.NotEmpty(t, h.Events)
	require.Equal(t, h.Snapshot.Metadata().Version().Value()+1, h.Events[0].Version)

	require.NoError(t, s.Close())

	report, err := store.Verify(path)
	require.NoError(t, err)
	require.True(t, report.Consistent(), "%s", report)
	require.Equal(t, h.RetainedFrom, report.FirstSeq)
	require.Equal(t, 9, report.Resources)

	s = openTestStore(t, path, store.WithRetention(retention))
	defer s.Close() //nolint:errcheck

	require.Equal(t, before, listAll(t, state.WrapCore(s.State()), "default"), "snapshot + log must replay to the same state")
}

func TestRetentionByAge(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")
	s := openTestStore(t, path,
		store.WithRetention(store.Retention{MaxAge: 50 * time.Millisecond}),
		store.WithCompactionInterval(10*time.Millisecond))
	st := state.WrapCore(s.State())
	ctx := context.Background()

	for i := range 20 {
		require.NoError(t, st.Create(ctx, newStatus("default", fmt.Sprintf("m%d", i))))
	}

	before := listAll(t, st, "default")

	require.Eventually(t, func() bool {
		events, err := s.Events(ctx, 0, 0)
		require.NoError(t, err)

		return len(events) == 0
	}, 10*time.Second, 10*time.Millisecond, "events older than the retention age must be compacted")

	h, err := s.History(ctx, "default", statusType, "m3")
	require.NoError(t, err)
	require.Empty(t, h.Events)
	require.NotNil(t, h.Snapshot)
	require.Equal(t, uint64(21), h.RetainedFrom)

	require.NoError(t, s.Close())

	report, err := store.Verify(path)
	require.NoError(t, err)
	require.True(t, report.Consistent(), "%s", report)

	s = openTestStore(t, path)
	defer s.Close() //nolint:errcheck

	require.Equal(t, before, listAll(t, state.WrapCore(s.State()), "default"))
}

// TestMetaNamespaceIsNotPersisted: COSI's registries re-create resource definitions and namespaces on every start,
// so the meta namespace lives in memory only.
func TestMetaNamespaceIsNotPersisted(t *testing.T) {
	t.Parallel()

	path, s, st := newTestStore(t)
	ctx := context.Background()

	require.NoError(t, st.Create(ctx, newStatus(meta.NamespaceName, "in-memory")))
	require.NoError(t, st.Create(ctx, newStatus("default", "on-disk")))

	_, err := st.Get(ctx, resource.NewMetadata(meta.NamespaceName, statusType, "in-memory", resource.VersionUndefined))
	require.NoError(t, err)
	require.NoError(t, s.Close())

	report, err := store.Verify(path)
	require.NoError(t, err)
	require.Equal(t, 1, report.Resources)
	require.Equal(t, 1, report.Events)

	s = openTestStore(t, path)
	defer s.Close() //nolint:errcheck

	_, err = s.State().Get(ctx, resource.NewMetadata(meta.NamespaceName, statusType, "in-memory", resource.VersionUndefined))
	require.True(t, state.IsNotFoundError(err), "meta must not survive a restart: %v", err)

	_, err = s.State().Get(ctx, resource.NewMetadata("default", statusType, "on-disk", resource.VersionUndefined))
	require.NoError(t, err)
}
