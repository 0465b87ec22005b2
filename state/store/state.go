package store

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
)

// DefaultWriter is the writer recorded for API writes whose context names none and whose resource has no owner.
const DefaultWriter = "api"

type writerKey struct{}

// WithWriter names who is writing (an API user, a CLI identity) for the event log. The gRPC server sets it per
// call; controllers need not, their owner name is recorded instead.
func WithWriter(ctx context.Context, writer string) context.Context {
	return context.WithValue(ctx, writerKey{}, writer)
}

// Writer is who writes through ctx as the event log records it for an input: the context's writer, else
// DefaultWriter.
func Writer(ctx context.Context) string { return writerOf(ctx, "") }

// writerOf picks the writer recorded for an event: the context's writer, else the owner, else DefaultWriter.
func writerOf(ctx context.Context, owner string) string {
	if w, ok := ctx.Value(writerKey{}).(string); ok && w != "" {
		return w
	}

	if owner != "" {
		return owner
	}

	return DefaultWriter
}

// ticket travels in the context from durableState through inmem into the backing store and back, carrying the
// sequence number the write got (and, for a destroy, the owner the caller presented).
type ticket struct {
	seq   uint64
	owner string
}

type ticketKey struct{}

// collectionKey names one in-memory collection.
type collectionKey struct {
	ns  resource.Namespace
	typ resource.Type
}

// durableState is the CoreState handed out by Store.State. It runs COSI's own inmem state (versions, owners,
// phases, finalizers, watches, bookmarks, queries) on top of a backing store that only enqueues, and then waits
// for the commit outside inmem's per-collection lock. Reads and watch deliveries also wait until every write they
// might observe is durable, so nothing that could be lost in a crash is ever shown to anyone.
type durableState struct {
	store *Store
	inner state.CoreState
}

var _ state.CoreState = (*durableState)(nil)

func newDurableState(s *Store) *durableState {
	history := []inmem.StateOption{
		inmem.WithHistoryMaxCapacity(s.opts.historyCapacity),
		inmem.WithHistoryInitialCapacity(min(s.opts.historyCapacity, 1024)),
		inmem.WithHistoryGap(max(5, s.opts.historyCapacity/200)),
	}

	return &durableState{
		store: s,
		inner: namespaced.NewState(func(ns resource.Namespace) state.CoreState {
			if ns == meta.NamespaceName {
				return inmem.NewStateWithOptions(history...)(ns)
			}

			return inmem.NewStateWithOptions(append(history, inmem.WithBackingStore(&backingStore{store: s, ns: ns}))...)(ns)
		}),
	}
}

// collection returns the last sequence number enqueued for a collection, creating the counter on first use.
func (s *Store) collection(ns resource.Namespace, typ resource.Type) *atomic.Uint64 {
	key := collectionKey{ns: ns, typ: typ}

	if c, ok := s.pending.Load(key); ok {
		return c.(*atomic.Uint64) //nolint:forcetypeassert
	}

	c, _ := s.pending.LoadOrStore(key, new(atomic.Uint64))

	return c.(*atomic.Uint64) //nolint:forcetypeassert
}

// collectionOf resolves the collection counter of a kind. Watches resolve it once, when they start: the caller
// may reuse the pointer or kind it passed afterwards.
func (d *durableState) collectionOf(kind resource.Kind) *atomic.Uint64 {
	return d.store.collection(kind.Namespace(), kind.Type())
}

// settle waits until every write enqueued so far for a collection is durable; callers use it after reading
// in-memory state so that what they return has reached the disk.
func (d *durableState) settle(ctx context.Context, kind resource.Kind) error {
	seq := d.collectionOf(kind).Load()
	if err := d.store.readable(seq); err != nil {
		return err
	}

	return d.store.waitDurable(ctx, seq)
}

// Get implements state.CoreState.
func (d *durableState) Get(ctx context.Context, ptr resource.Pointer, opts ...state.GetOption) (resource.Resource, error) { //nolint:ireturn
	res, err := d.inner.Get(ctx, ptr, opts...)
	if settleErr := d.settle(ctx, ptr); settleErr != nil {
		return nil, settleErr
	}

	return res, err
}

// List implements state.CoreState.
func (d *durableState) List(ctx context.Context, kind resource.Kind, opts ...state.ListOption) (resource.List, error) {
	list, err := d.inner.List(ctx, kind, opts...)
	if settleErr := d.settle(ctx, kind); settleErr != nil {
		return resource.List{}, settleErr
	}

	return list, err
}

// write runs one inmem write with a ticket and waits, outside any lock, for its commit (leading it if no commit
// is in flight).
func (d *durableState) write(ctx context.Context, owner string, do func(context.Context) error) error {
	d.store.writers.Add(1)
	defer d.store.writers.Add(-1)

	t := &ticket{owner: owner}

	err := do(context.WithValue(ctx, ticketKey{}, t))

	// Once enqueued, a write becomes durable or fails the store within a commit or two, and this writer may have
	// to lead that commit; so wait even if ctx ends.
	if t.seq != 0 {
		if waitErr := d.store.waitDurable(context.Background(), t.seq); err == nil {
			err = waitErr
		}
	}

	return err
}

// Create implements state.CoreState.
func (d *durableState) Create(ctx context.Context, res resource.Resource, opts ...state.CreateOption) error {
	return d.write(ctx, "", func(ctx context.Context) error { return d.inner.Create(ctx, res, opts...) })
}

// Update implements state.CoreState.
func (d *durableState) Update(ctx context.Context, res resource.Resource, opts ...state.UpdateOption) error {
	return d.write(ctx, "", func(ctx context.Context) error { return d.inner.Update(ctx, res, opts...) })
}

// Destroy implements state.CoreState.
func (d *durableState) Destroy(ctx context.Context, ptr resource.Pointer, opts ...state.DestroyOption) error {
	var o state.DestroyOptions
	for _, opt := range opts {
		opt(&o)
	}

	return d.write(ctx, o.Owner, func(ctx context.Context) error { return d.inner.Destroy(ctx, ptr, opts...) })
}

// Watch implements state.CoreState.
func (d *durableState) Watch(ctx context.Context, ptr resource.Pointer, ch chan<- state.Event, opts ...state.WatchOption) error {
	in := make(chan state.Event)
	if err := d.inner.Watch(ctx, ptr, in, opts...); err != nil {
		return err
	}

	go forward(ctx, d.store, d.collectionOf(ptr), in, ch, errorEvent)

	return nil
}

// WatchKind implements state.CoreState.
func (d *durableState) WatchKind(ctx context.Context, kind resource.Kind, ch chan<- state.Event, opts ...state.WatchKindOption) error {
	in := make(chan state.Event)
	if err := d.inner.WatchKind(ctx, kind, in, opts...); err != nil {
		return err
	}

	go forward(ctx, d.store, d.collectionOf(kind), in, ch, errorEvent)

	return nil
}

// WatchKindAggregated implements state.CoreState.
func (d *durableState) WatchKindAggregated(ctx context.Context, kind resource.Kind, ch chan<- []state.Event, opts ...state.WatchKindOption) error {
	in := make(chan []state.Event)
	if err := d.inner.WatchKindAggregated(ctx, kind, in, opts...); err != nil {
		return err
	}

	go forward(ctx, d.store, d.collectionOf(kind), in, ch, func(err error) []state.Event { return []state.Event{errorEvent(err)} })

	return nil
}

func errorEvent(err error) state.Event {
	return state.Event{Type: state.Errored, Error: err}
}

// forward delivers inmem's watch events only once the writes behind them are durable: the collection's last
// enqueued sequence number, read after the event arrived, covers the event's own write. If the store fails, the
// watcher gets one Errored event and the watch ends, as with COSI's buffer overrun.
func forward[T any](ctx context.Context, s *Store, collection *atomic.Uint64, in <-chan T, out chan<- T, errEvent func(error) T) {
	for {
		var ev T

		select {
		case <-ctx.Done():
			return
		case ev = <-in:
		}

		failure := s.waitDurable(ctx, collection.Load())
		if failure != nil {
			if ctx.Err() != nil {
				return
			}

			ev = errEvent(failure)
		}

		select {
		case <-ctx.Done():
			return
		case out <- ev:
		}

		if failure != nil {
			return
		}
	}
}

// backingStore is the inmem.BackingStore of one namespace. Put and Destroy run under the collection's mutex and
// only enqueue; the write's durableState waits for (or leads) the commit after the mutex is released.
type backingStore struct {
	store *Store
	ns    resource.Namespace
}

// Load hands inmem the resources replayed at Open.
func (b *backingStore) Load(_ context.Context, handler inmem.LoadHandler) error {
	for _, res := range b.store.takeLoaded(b.ns) {
		if err := handler(res.Metadata().Type(), res); err != nil {
			return err
		}
	}

	return nil
}

// Put enqueues a created or updated resource.
func (b *backingStore) Put(ctx context.Context, typ resource.Type, res resource.Resource) error {
	data, err := b.store.codec.marshal(res)
	if err != nil {
		return fmt.Errorf("marshaling %s: %w", resource.String(res), err)
	}

	md := res.Metadata()
	kind := KindUpdated

	if md.Version().Value() == 1 {
		kind = KindCreated
	}

	return b.enqueue(ctx, &record{
		kind:    kind,
		version: md.Version().Value(),
		writer:  []byte(writerOf(ctx, md.Owner())),
		key:     resourceKey(b.ns, typ, md.ID()),
		data:    data,
	}, typ)
}

// Destroy enqueues a destroy; the commit records the resource's last stored state with it.
func (b *backingStore) Destroy(ctx context.Context, typ resource.Type, ptr resource.Pointer) error {
	t, _ := ctx.Value(ticketKey{}).(*ticket)

	var owner string
	if t != nil {
		owner = t.owner
	}

	return b.enqueue(ctx, &record{
		kind:   KindDestroyed,
		writer: []byte(writerOf(ctx, owner)),
		key:    resourceKey(b.ns, typ, ptr.ID()),
	}, typ)
}

func (b *backingStore) enqueue(ctx context.Context, rec *record, typ resource.Type) error {
	t, ok := ctx.Value(ticketKey{}).(*ticket)
	if !ok {
		return fmt.Errorf("writing %s: internal error: write did not come through the durable state", describeKey(rec.key))
	}

	seq, err := b.store.enqueue(rec, b.store.collection(b.ns, typ))
	t.seq = seq

	return err
}
