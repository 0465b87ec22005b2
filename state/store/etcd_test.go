package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/protobuf"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/conformance"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/stretchr/testify/suite"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/upshift-io/upshift/internal/etcdcluster"
	"github.com/upshift-io/upshift/state/store"
)

func init() {
	// The conformance suite's resources must round-trip through etcd as themselves.
	if err := protobuf.RegisterResource(conformance.PathResourceType, &conformance.PathResource{}); err != nil {
		panic(err)
	}
}

// startEtcd starts a one-member etcd and returns a client of it; both end with the test.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()

	c, err := etcdcluster.Start(t.TempDir(), 1, nil)
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, c.Close()) })

	return newClient(t, c.Endpoints())
}

func newClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()

	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, cli.Close()) })

	return cli
}

func openEtcd(t *testing.T, cli *clientv3.Client, opts ...store.Option) *store.EtcdStore {
	t.Helper()

	s, err := store.OpenEtcd(t.Context(), cli, opts...)
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, s.Close()) })

	return s
}

func TestEtcdConformance(t *testing.T) {
	s := openEtcd(t, startEtcd(t))

	suite.Run(t, &conformance.StateSuite{
		State:      state.WrapCore(s.State()),
		Namespaces: []resource.Namespace{"default", "controller", "system", "runtime"},
	})
}

// TestEtcdHistory: every write's log record is committed in the write's own etcd transaction (same revision), and
// History reads created, updated, destroyed with their versions, writers and resources, as on bbolt.
func TestEtcdHistory(t *testing.T) {
	cli := startEtcd(t)
	st := state.WrapCore(openEtcd(t, cli, store.WithEncryptionKey(testKey(1))).State())
	s := openEtcd(t, cli, store.WithEncryptionKey(testKey(1)))
	ctx := store.WithWriter(t.Context(), "user:alice")

	sec := newSecret("s1", "first")
	require.NoError(t, st.Create(ctx, sec))

	sec.TypedSpec().Key = "second"
	require.NoError(t, st.Update(ctx, sec))

	got, err := st.Get(ctx, sec.Metadata())
	require.NoError(t, err)
	assert.Equal(t, "second", got.(*secret).TypedSpec().Key) //nolint:forcetypeassert
	assert.Equal(t, uint64(2), got.Metadata().Version().Value())

	require.NoError(t, st.Destroy(ctx, sec.Metadata()))

	h, err := s.History(t.Context(), "default", secretType, "s1")
	require.NoError(t, err)
	require.Len(t, h.Events, 3)

	for i, want := range []struct {
		kind    store.EventKind
		key     string
		version uint64
	}{{store.KindCreated, "first", 1}, {store.KindUpdated, "second", 2}, {store.KindDestroyed, "second", 2}} {
		ev := h.Events[i]
		assert.Equal(t, want.kind, ev.Kind, "event %d", i)
		assert.Equal(t, want.version, ev.Version, "event %d", i)
		assert.Equal(t, want.version, ev.Resource.Metadata().Version().Value(), "event %d", i)
		assert.Equal(t, "user:alice", ev.Writer, "event %d", i)
		assert.Equal(t, want.key, ev.Resource.(*secret).TypedSpec().Key, "event %d", i) //nolint:forcetypeassert

		if i > 0 {
			assert.Greater(t, ev.Seq, h.Events[i-1].Seq, "events in commit order")
		}
	}

	// The log record and the resource share the transaction: the resource's last write has the record's revision.
	require.NoError(t, st.Create(ctx, newSecret("s2", "k")))

	resources, err := cli.Get(t.Context(), store.DefaultEtcdPrefix+"/state/", clientv3.WithPrefix())
	require.NoError(t, err)
	require.Len(t, resources.Kvs, 1)

	h, err = s.History(t.Context(), "default", secretType, "s2")
	require.NoError(t, err)
	require.Len(t, h.Events, 1)
	assert.Equal(t, uint64(resources.Kvs[0].ModRevision), h.Events[0].Seq)

	// Secrets are sealed in etcd, in the state and in the log.
	all, err := cli.Get(t.Context(), store.DefaultEtcdPrefix, clientv3.WithPrefix())
	require.NoError(t, err)

	for _, kv := range all.Kvs {
		for _, secret := range []string{"first", "second"} {
			assert.NotContains(t, string(kv.Value), secret, "%s holds a secret in clear", kv.Key)
		}
	}
}

// TestEtcdKeyCheck: replicas must share the key; one with another key, or none, is refused.
func TestEtcdKeyCheck(t *testing.T) {
	cli := startEtcd(t)
	openEtcd(t, cli, store.WithEncryptionKey(testKey(1)))

	_, err := store.OpenEtcd(t.Context(), cli, store.WithEncryptionKey(testKey(2)))
	require.ErrorIs(t, err, store.ErrWrongKey)

	_, err = store.OpenEtcd(t.Context(), cli)
	require.ErrorIs(t, err, store.ErrNoKey)

	openEtcd(t, cli, store.WithEncryptionKey(testKey(1)))
}

// TestEtcdFence: a write under a leadership commits while it holds and fails with ErrNotLeader, writing nothing
// (no resource, no log record), once its lease is gone and another replica leads; writes without a fence go on.
func TestEtcdFence(t *testing.T) {
	cli := startEtcd(t)
	s := openEtcd(t, cli)
	st := state.WrapCore(s.State())

	session, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	require.NoError(t, err)

	election := concurrency.NewElection(session, store.DefaultEtcdPrefix+"/leader")
	require.NoError(t, election.Campaign(t.Context(), "old"))

	fenced := store.WithFence(t.Context(), store.Fence{Key: election.Key(), Revision: election.Rev()})
	require.NoError(t, st.Create(fenced, newStatus("default", "a")))

	// The lease ends (as when it expires) and another replica takes over.
	require.NoError(t, session.Close())

	other, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	require.NoError(t, err)

	t.Cleanup(func() { _ = other.Close() }) //nolint:errcheck

	require.NoError(t, concurrency.NewElection(other, store.DefaultEtcdPrefix+"/leader").Campaign(t.Context(), "new"))

	before, err := cli.Get(t.Context(), store.DefaultEtcdPrefix+"/log/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)

	res, err := st.Get(t.Context(), newStatus("default", "a").Metadata())
	require.NoError(t, err)

	err = st.Update(fenced, res)
	require.ErrorIs(t, err, store.ErrNotLeader)
	require.ErrorIs(t, st.Create(fenced, newStatus("default", "b")), store.ErrNotLeader)
	require.ErrorIs(t, st.Destroy(fenced, res.Metadata()), store.ErrNotLeader)

	after, err := cli.Get(t.Context(), store.DefaultEtcdPrefix+"/log/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Equal(t, before.Count, after.Count, "no log record of a refused write")

	_, err = st.Get(t.Context(), newStatus("default", "b").Metadata())
	require.True(t, state.IsNotFoundError(err), "b not created: %v", err)

	// A user's write is not fenced.
	require.NoError(t, st.Update(t.Context(), res))
}

// TestEtcdReplicasSeeEachOther: a watch on one replica's store sees a write made through another.
func TestEtcdReplicasSeeEachOther(t *testing.T) {
	cli := startEtcd(t)
	a, b := state.WrapCore(openEtcd(t, cli).State()), state.WrapCore(openEtcd(t, cli).State())

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	// A watch with the initial contents starts at the revision it listed, so no write after it can be missed (one
	// without starts whenever etcd registers it).
	ch := make(chan state.Event)
	require.NoError(t, b.WatchKind(ctx, newStatus("default", "x").Metadata(), ch, state.WithBootstrapContents(true)))

	require.NoError(t, a.Create(t.Context(), newStatus("default", "x")))

	for {
		var ev state.Event

		select {
		case ev = <-ch:
		case <-ctx.Done():
			require.FailNow(t, "no event")
		}

		if ev.Type == state.Bootstrapped {
			continue
		}

		assert.Equal(t, state.Created, ev.Type)
		assert.Equal(t, "x", ev.Resource.Metadata().ID())

		break
	}

	list, err := b.List(t.Context(), newStatus("default", "x").Metadata())
	require.NoError(t, err)
	require.Len(t, list.Items, 1)
	assert.Equal(t, "x", list.Items[0].Metadata().ID())
}

// TestEtcdRetention: the log in etcd keeps the newest events by the retention, as on bbolt: the history begins after
// a snapshot of the resource's last folded state, and a destroyed resource's snapshot goes with it. A compaction
// under a fence that no longer holds folds nothing.
func TestEtcdRetention(t *testing.T) {
	cli := startEtcd(t)
	s := openEtcd(t, cli, store.WithRetention(store.Retention{MaxEvents: 5}), store.WithCompactionInterval(time.Hour))
	st := state.WrapCore(s.State())

	res := newStatus("default", "m1")
	require.NoError(t, st.Create(t.Context(), res))

	for i := range 11 {
		res.TypedSpec().Attempt = i + 1
		require.NoError(t, st.Update(t.Context(), res))
	}

	gone := newStatus("default", "gone")
	require.NoError(t, st.Create(t.Context(), gone))
	require.NoError(t, st.Destroy(t.Context(), gone.Metadata()))

	// 14 events: m1 versions 1 to 12, gone created and destroyed. The newest 5 are m1's 10 to 12 and gone's two.
	// Under a fence that does not hold (no such election key), a round of compaction folds nothing.
	stale, cancelStale := context.WithTimeout(store.WithFence(t.Context(), store.Fence{Key: "/upshift/leader/none", Revision: 1}), time.Second)
	s.RunRetention(stale) // one round at once, then waits for the interval until the context ends
	cancelStale()

	h, err := s.History(t.Context(), "default", statusType, "m1")
	require.NoError(t, err)
	require.Len(t, h.Events, 12, "nothing folded under a stale fence")
	assert.Equal(t, uint64(1), h.RetainedFrom)

	ctx, cancel := context.WithCancel(t.Context())

	done := make(chan struct{})

	go func() {
		defer close(done)

		s.RunRetention(ctx)
	}()

	require.Eventually(t, func() bool {
		h, err := s.History(t.Context(), "default", statusType, "m1")

		return err == nil && len(h.Events) == 3
	}, 10*time.Second, 10*time.Millisecond, "the compaction folds m1's oldest events")

	cancel()
	<-done

	h, err = s.History(t.Context(), "default", statusType, "m1")
	require.NoError(t, err)
	require.NotNil(t, h.Snapshot)
	assert.Equal(t, uint64(9), h.Snapshot.Metadata().Version().Value())
	assert.Equal(t, 8, h.Snapshot.(*status).TypedSpec().Attempt) //nolint:forcetypeassert
	assert.Equal(t, uint64(10), h.Events[0].Version)
	assert.Equal(t, h.Events[0].Seq, h.RetainedFrom, "the log begins right after the newest folded event")
	assert.False(t, h.RetainedSince.IsZero())

	g, err := s.History(t.Context(), "default", statusType, "gone")
	require.NoError(t, err)
	assert.Len(t, g.Events, 2)
	assert.Nil(t, g.Snapshot)

	// The resource itself is whole.
	got, err := st.Get(t.Context(), res.Metadata())
	require.NoError(t, err)
	assert.Equal(t, uint64(12), got.Metadata().Version().Value())
}
