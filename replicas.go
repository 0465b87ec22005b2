package upshift

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/upshift-io/upshift/internal/leader"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/labelindex"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/store"
)

// backend is where the engine's state lives: a bbolt file (store.Store) or etcd (store.EtcdStore).
type backend interface {
	State() state.CoreState
	History(ctx context.Context, ns resource.Namespace, typ resource.Type, id resource.ID) (store.History, error)
	Close() error
}

type etcdOptions struct {
	client   *clientv3.Client
	replica  string
	leaseTTL time.Duration
}

// WithEtcd keeps the state in etcd through cli instead of the data dir's file, so that several engines (replicas)
// share it: each serves the API, and the one elected leader runs the controllers (docs/architecture.md, "Several
// replicas on etcd"). replica names this engine in the election and in `upshift status`; leaseTTL is how long a
// leader that stopped renewing its lease keeps the leadership (leader.DefaultLeaseTTL when 0). Every replica must
// have the same encryption key (the data dir's key file, or WithEncryptionKey). The caller closes cli after the
// engine.
func WithEtcd(cli *clientv3.Client, replica string, leaseTTL time.Duration) Option {
	return func(o *engineOptions) {
		if leaseTTL <= 0 {
			leaseTTL = leader.DefaultLeaseTTL
		}

		o.etcd = &etcdOptions{client: cli, replica: replica, leaseTTL: leaseTTL}
	}
}

// openBackend opens the state, and returns it with the state the engine validates writes into. On bbolt a
// cluster's machines are read with a label query (docs/architecture.md, "Reading a cluster") that an index kept on
// every write answers without a scan of the fleet; on etcd other replicas write too, so no replica's index would
// see every write, and state-etcd filters the type's keys itself.
func openBackend(o engineOptions) (backend, state.CoreState, error) {
	if o.etcd == nil {
		st, err := openStore(o)
		if err != nil {
			return nil, nil, err
		}

		return st, labelindex.New(st.State(), cluster.LabelCluster), nil
	}

	st, err := openEtcdStore(o)
	if err != nil {
		return nil, nil, err
	}

	return st, st.State(), nil
}

// fence is the leadership the controllers write under: the current term's, nil while this replica does not lead.
type fence = atomic.Pointer[store.Fence]

// fencedState is the state the controllers of a replica write through: each write is conditional on the term it is
// made in (store.WithFence), and refused outright between terms.
type fencedState struct {
	state.CoreState

	fence *fence
}

func (f *fencedState) fenced(ctx context.Context) (context.Context, error) {
	current := f.fence.Load()
	if current == nil {
		return nil, fmt.Errorf("controller write between leadership terms: %w", store.ErrNotLeader)
	}

	return store.WithFence(ctx, *current), nil
}

// Create implements state.CoreState.
func (f *fencedState) Create(ctx context.Context, res resource.Resource, opts ...state.CreateOption) error {
	ctx, err := f.fenced(ctx)
	if err != nil {
		return err
	}

	return f.CoreState.Create(ctx, res, opts...)
}

// Update implements state.CoreState.
func (f *fencedState) Update(ctx context.Context, res resource.Resource, opts ...state.UpdateOption) error {
	ctx, err := f.fenced(ctx)
	if err != nil {
		return err
	}

	return f.CoreState.Update(ctx, res, opts...)
}

// Destroy implements state.CoreState.
func (f *fencedState) Destroy(ctx context.Context, ptr resource.Pointer, opts ...state.DestroyOption) error {
	ctx, err := f.fenced(ctx)
	if err != nil {
		return err
	}

	return f.CoreState.Destroy(ctx, ptr, opts...)
}

// lead runs the controllers, the compaction of the log and the transition metrics and log lines for one leadership
// term: until ctx ends (the lease is lost or the engine stops); the runtime's stop waits for every executor, so
// nothing of the term acts after it. Only the leader counts and logs transitions, so that the replicas' metrics
// add up and a log search finds each transition once.
func (e *Engine) lead(ctx context.Context, f store.Fence) {
	e.fence.Store(&f)
	defer e.fence.Store(nil)

	var wg sync.WaitGroup
	defer wg.Wait()

	wg.Go(func() { e.compactLog(store.WithFence(ctx, f)) })
	wg.Go(func() { e.metrics.Run(ctx) })

	_ = e.runtime.Run(ctx) //nolint:errcheck // the supervised runtime returns only when ctx is done
}

// EngineStatus says how the engine runs: alone on its file, or as a replica on etcd and which replica leads.
func (e *Engine) EngineStatus(ctx context.Context) server.EngineStatus {
	if e.elector == nil {
		return server.EngineStatus{Backend: "bbolt", Leading: true}
	}

	st := e.elector.Status(ctx)

	return server.EngineStatus{Backend: "etcd", Replica: st.Replica, Leader: st.Leader, Leading: st.Leading, Problem: st.Problem,
		Unreadable: st.Unreadable}
}
