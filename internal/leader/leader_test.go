package leader_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/internal/etcdcluster"
	"github.com/upshift-io/upshift/internal/leader"
	"github.com/upshift-io/upshift/state/store"
)

// term is one leadership term as lead saw it.
type term struct {
	replica string
	fence   store.Fence
}

// run starts an elector for replica that reports each term it gets on terms and holds it until the term's context
// ends; stop ends the elector and waits for it.
func run(t *testing.T, cli *clientv3.Client, replica string, terms chan<- term) (*leader.Elector, func()) {
	t.Helper()

	e := leader.New(cli, replica, time.Second, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})

	go func() {
		defer close(done)

		e.Run(ctx, func(ctx context.Context, f store.Fence) {
			terms <- term{replica: replica, fence: f}
			<-ctx.Done()
		})
	}()

	return e, func() { cancel(); <-done }
}

// One of two replicas leads; Status says which on both; when the leader stops it resigns and the other leads at
// once, under a new fence; a lease revoked under the leader (as when it expires) ends its term.
func TestElection(t *testing.T) {
	cluster, err := etcdcluster.Start(t.TempDir(), 1, nil)
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, cluster.Close()) })

	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second})
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, cli.Close()) })

	terms := make(chan term, 4)

	a, stopA := run(t, cli, "a", terms)
	first := <-terms
	require.Equal(t, "a", first.replica, "the only candidate leads")

	b, stopB := run(t, cli, "b", terms)
	defer stopB()

	assert.Equal(t, leader.Status{Replica: "a", Leader: "a", Leading: true}, a.Status(t.Context()))
	assert.Equal(t, leader.Status{Replica: "b", Leader: "a"}, b.Status(t.Context()))

	stopA()

	second := <-terms
	assert.Equal(t, "b", second.replica)
	assert.Greater(t, second.fence.Revision, first.fence.Revision)

	// The lease behind b's term is revoked: b's term ends and it campaigns again, winning a new term.
	resp, err := cli.Get(t.Context(), second.fence.Key)
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)

	_, err = cli.Revoke(t.Context(), clientv3.LeaseID(resp.Kvs[0].Lease))
	require.NoError(t, err)

	third := <-terms
	assert.Equal(t, "b", third.replica)
	assert.NotEqual(t, second.fence, third.fence)
}
