package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	stateetcd "github.com/cosi-project/state-etcd/pkg/state/impl/etcd"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultEtcdPrefix is where an EtcdStore keeps its keys in etcd: PREFIX/state (the resources), PREFIX/log (the
// event log), PREFIX/meta (the key check) and PREFIX/leader (the election, see the leader package).
const DefaultEtcdPrefix = "/upshift"

// ErrNotLeader: a write made on behalf of a leader (WithFence) was refused because the writer no longer holds the
// leadership it was made under: another replica leads now, or none does.
var ErrNotLeader = errors.New("this replica no longer leads")

// Fence names a leadership: the election key a replica holds and the revision that created it. A write whose
// context carries a Fence (WithFence) commits only while that key still exists with that create revision, in
// the same etcd transaction as the write itself; once the lease behind the key expired (a replica paused, cut off,
// or killed) the key is gone, and any write it still makes fails with ErrNotLeader before its side effects.
type Fence struct {
	Key      string
	Revision int64
}

type fenceKey struct{}

// WithFence makes every write through ctx on an EtcdStore conditional on the leadership f (see Fence). The
// bbolt store has a single writer and ignores it.
func WithFence(ctx context.Context, f Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

// EtcdStore is the COSI state on an etcd cluster, for engines that run as several replicas: every write puts the
// resource and its event-log record in one etcd transaction, every replica reads and watches etcd, so each sees
// every write whichever replica made it. Resources are marshaled and sealed as in the bbolt store (the same codec),
// and the log records are the bbolt store's records, so History reads the same.
//
// The resources and their reads, writes and watches are cosi-project/state-etcd's (COSI's semantics of versions,
// owners, phases and finalizers on etcd); EtcdStore hands it a client that extends each of its write transactions
// with the log record and, for a leader's writes, the fence (etcdKV).
type EtcdStore struct {
	cli    *clientv3.Client
	prefix string
	codec  codec
	state  state.CoreState
	opts   options
}

// OpenEtcd opens the state kept in etcd under DefaultEtcdPrefix through cli, binding it to the encryption key
// (WithEncryptionKey) as Open binds a file: the first replica stores the key check, every later one must have the
// same key. WithEncryptionKey, WithLogger, WithRetention, WithCompactionInterval (retention runs in RunRetention)
// and WithCommitObserver (one write per transaction) apply. The caller closes cli after the store.
func OpenEtcd(ctx context.Context, cli *clientv3.Client, opts ...Option) (*EtcdStore, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}

	c, err := newCodec(o.key)
	if err != nil {
		return nil, fmt.Errorf("opening the state in etcd: %w", err)
	}

	s := &EtcdStore{cli: cli, prefix: DefaultEtcdPrefix, codec: c, opts: o}

	if err = s.checkKey(ctx); err != nil {
		return nil, err
	}

	onEtcd := stateetcd.NewState(etcdKV{KV: cli.KV, Watcher: cli.Watcher, store: s}, codecMarshaler{c},
		stateetcd.WithKeyPrefix(s.prefix+"/state"))
	writes := &etcdState{State: onEtcd}

	// As in the bbolt store, the meta namespace lives in memory: COSI's registries create it on every start.
	s.state = namespaced.NewState(func(ns resource.Namespace) state.CoreState {
		if ns == meta.NamespaceName {
			return inmem.NewState(ns)
		}

		return writes
	})

	o.logger.Info("state opened in etcd", zap.Strings("endpoints", cli.Endpoints()), zap.String("prefix", s.prefix))

	return s, nil
}

// where names the state in errors.
func (s *EtcdStore) where() string { return "etcd:" + s.prefix }

// checkKey binds the state in etcd to the store's key, by the same rule as a file (codec.keyCheck); two replicas
// storing the first check at once are ordered by a transaction, and the one that lost checks the winner's.
func (s *EtcdStore) checkKey(ctx context.Context) error {
	key := s.prefix + "/meta/key-check"

	for {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("opening state %q: reading the key check: %w", s.where(), err)
		}

		var check []byte
		if len(resp.Kvs) > 0 {
			check = resp.Kvs[0].Value
		}

		sealed, err := s.codec.keyCheck(s.where(), check)
		if err != nil || sealed == nil {
			return err
		}

		txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).Then(clientv3.OpPut(key, string(sealed))).Commit()
		if err != nil {
			return fmt.Errorf("opening state %q: storing the key check: %w", s.where(), err)
		}

		if txn.Succeeded {
			return nil
		}
	}
}

// State returns the COSI state in etcd (meta namespace in memory, as Store.State).
func (s *EtcdStore) State() state.CoreState {
	return s.state
}

// Close releases nothing of its own: the caller owns the etcd client.
func (s *EtcdStore) Close() error {
	return nil
}

// logPrefix is where the log records of one resource live: PREFIX/log/HEX(resource key)/. The resource key is
// length-prefixed, so no resource's prefix is another's.
func (s *EtcdStore) logPrefix(resKey []byte) string {
	return s.prefix + "/log/" + hex.EncodeToString(resKey) + "/"
}

// History returns the retained events of one resource, oldest first, and where the retained log begins (with the
// resource's snapshot when older events of it were folded), as Store.History does. The sequence number of an event
// is the etcd revision of its transaction, which orders all writes of the cluster as the bbolt log's sequence does.
func (s *EtcdStore) History(ctx context.Context, ns resource.Namespace, typ resource.Type, id resource.ID) (History, error) {
	key := resourceKey(ns, typ, id)
	fail := func(err error) (History, error) {
		return History{}, fmt.Errorf("reading history of %s from %q: %w", describeKey(key), s.where(), err)
	}

	var (
		h   History
		err error
	)

	if h.RetainedFrom, h.RetainedSince, err = s.retained(ctx); err != nil {
		return fail(err)
	}

	snap, err := s.cli.Get(ctx, s.snapshotKey(key))
	if err != nil {
		return fail(err)
	}

	if len(snap.Kvs) > 0 {
		ev, err := s.event(snap.Kvs[0])
		if err != nil {
			return fail(fmt.Errorf("snapshot: %w", err))
		}

		h.Snapshot = ev.Resource
	}

	resp, err := s.cli.Get(ctx, s.logPrefix(key), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend))
	if err != nil {
		return fail(err)
	}

	for _, kv := range resp.Kvs {
		ev, err := s.event(kv)
		if err != nil {
			return fail(err)
		}

		h.Events = append(h.Events, ev)
	}

	return h, nil
}

// event decodes a log record stored in etcd (or folded into a snapshot); its sequence number is its revision.
func (s *EtcdStore) event(kv *mvccpb.KeyValue) (Event, error) {
	ev, err := s.codec.decodeEvent(seqKey(uint64(kv.ModRevision)), kv.Value)
	if err != nil {
		return Event{}, err
	}

	// state-etcd marshals a resource before etcd gives it its new version; the record holds that version.
	version, err := resource.ParseVersion(strconv.FormatUint(ev.Version, 10))
	if err != nil {
		return Event{}, fmt.Errorf("%w: event %d: version %d", ErrCorrupt, ev.Seq, ev.Version)
	}

	ev.Resource.Metadata().SetVersion(version)

	return ev, nil
}

// codecMarshaler is the store's codec as state-etcd's marshaler: sensitive resources sealed, as in a file.
type codecMarshaler struct{ c codec }

func (m codecMarshaler) MarshalResource(r resource.Resource) ([]byte, error) { return m.c.marshal(r) }

func (m codecMarshaler) UnmarshalResource(b []byte) (resource.Resource, error) { //nolint:ireturn
	return m.c.unmarshal(b)
}

// etcdWrite is one write of etcdState, in the context state-etcd passes on to its etcd calls, so that etcdKV can
// add the log record (and the fence) to the write's transaction.
type etcdWrite struct {
	fence   *Fence
	last    *mvccpb.KeyValue // a destroy's resource as state-etcd read it before its transaction
	writer  string
	resKey  []byte
	version uint64 // the version the write produces (a destroy: the last one)
	kind    EventKind
}

type etcdWriteKey struct{}

func writeOf(ctx context.Context) *etcdWrite {
	w, _ := ctx.Value(etcdWriteKey{}).(*etcdWrite)

	return w
}

// etcdState is state-etcd's state with each write described in its context for etcdKV.
type etcdState struct {
	*stateetcd.State
}

func (e *etcdState) write(ctx context.Context, w *etcdWrite, ptr resource.Pointer) context.Context {
	w.resKey = resourceKey(ptr.Namespace(), ptr.Type(), ptr.ID())

	if f, ok := ctx.Value(fenceKey{}).(Fence); ok {
		w.fence = &f
	}

	return context.WithValue(ctx, etcdWriteKey{}, w)
}

// Create implements state.CoreState.
func (e *etcdState) Create(ctx context.Context, res resource.Resource, opts ...state.CreateOption) error {
	var o state.CreateOptions
	for _, opt := range opts {
		opt(&o)
	}

	w := &etcdWrite{kind: KindCreated, version: 1, writer: writerOf(ctx, o.Owner)}

	return e.State.Create(e.write(ctx, w, res.Metadata()), res, opts...)
}

// Update implements state.CoreState.
func (e *etcdState) Update(ctx context.Context, res resource.Resource, opts ...state.UpdateOption) error {
	o := state.DefaultUpdateOptions()
	for _, opt := range opts {
		opt(&o)
	}

	// state-etcd commits only if the stored version is the one res carries; the write makes the next one.
	w := &etcdWrite{kind: KindUpdated, version: res.Metadata().Version().Value() + 1, writer: writerOf(ctx, o.Owner)}

	return e.State.Update(e.write(ctx, w, res.Metadata()), res, opts...)
}

// Destroy implements state.CoreState.
func (e *etcdState) Destroy(ctx context.Context, ptr resource.Pointer, opts ...state.DestroyOption) error {
	var o state.DestroyOptions
	for _, opt := range opts {
		opt(&o)
	}

	w := &etcdWrite{kind: KindDestroyed, writer: writerOf(ctx, o.Owner)}

	return e.State.Destroy(e.write(ctx, w, ptr), ptr, opts...)
}

// etcdKV is the etcd client state-etcd uses: reads and watches pass through; the write transaction of a write
// described by etcdState also puts the write's log record and, for a fenced write, requires the fence.
type etcdKV struct {
	clientv3.KV
	clientv3.Watcher

	store *EtcdStore
}

// Get remembers, for a destroy, the resource state-etcd reads before its transaction: its log record holds it,
// and the transaction commits only if that is still the stored version.
func (k etcdKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := k.KV.Get(ctx, key, opts...)

	if w := writeOf(ctx); err == nil && w != nil && w.kind == KindDestroyed && len(resp.Kvs) == 1 && string(resp.Kvs[0].Key) == key {
		w.last = resp.Kvs[0]
	}

	return resp, err
}

// Txn implements clientv3.KV.
func (k etcdKV) Txn(ctx context.Context) clientv3.Txn { //nolint:ireturn
	w := writeOf(ctx)
	if w == nil {
		return k.KV.Txn(ctx)
	}

	return &loggedTxn{ctx: ctx, kv: k.KV, store: k.store, w: w}
}

// loggedTxn collects state-etcd's transaction and commits it with the log record and the fence added.
type loggedTxn struct {
	ctx   context.Context //nolint:containedctx // a clientv3.Txn is built, then committed, with its context
	kv    clientv3.KV
	store *EtcdStore
	w     *etcdWrite

	cmps      []clientv3.Cmp
	then, els []clientv3.Op
}

func (t *loggedTxn) If(cs ...clientv3.Cmp) clientv3.Txn { //nolint:ireturn
	t.cmps = append(t.cmps, cs...)

	return t
}

func (t *loggedTxn) Then(ops ...clientv3.Op) clientv3.Txn { //nolint:ireturn
	t.then = append(t.then, ops...)

	return t
}

func (t *loggedTxn) Else(ops ...clientv3.Op) clientv3.Txn { //nolint:ireturn
	t.els = append(t.els, ops...)

	return t
}

// Commit commits the write, its log record and its fence in one transaction. When only the fence failed, the
// caller gets ErrNotLeader; otherwise state-etcd gets the response it expects (the added operations' results
// dropped).
func (t *loggedTxn) Commit() (*clientv3.TxnResponse, error) {
	rec := record{kind: t.w.kind, time: time.Now(), version: t.w.version, writer: []byte(t.w.writer), key: t.w.resKey}

	switch t.w.kind {
	case KindDestroyed:
		if t.w.last == nil {
			return nil, fmt.Errorf("destroying %s: internal error: the resource was not read before its transaction", describeKey(t.w.resKey))
		}

		rec.data, rec.version = t.w.last.Value, uint64(t.w.last.Version)
	default:
		for _, op := range t.then {
			if op.IsPut() {
				rec.data = op.ValueBytes()
			}
		}
	}

	id := make([]byte, 8)
	_, _ = rand.Read(id) //nolint:errcheck // crypto/rand never fails

	then := append(t.then, clientv3.OpPut(t.store.logPrefix(t.w.resKey)+hex.EncodeToString(id), string(encodeRecord(&rec))))
	cmps, els := t.cmps, t.els

	if f := t.w.fence; f != nil {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Revision))
		els = append(els, clientv3.OpGet(f.Key))
	}

	start := time.Now()

	resp, err := t.kv.Txn(t.ctx).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return nil, err
	}

	if resp.Succeeded {
		if observe := t.store.opts.commitObserver; observe != nil {
			observe(time.Since(start), 1)
		}

		resp.Responses = resp.Responses[:len(t.then)]

		return resp, nil
	}

	if f := t.w.fence; f != nil {
		held := resp.Responses[len(resp.Responses)-1].GetResponseRange().GetKvs()
		if len(held) == 0 || held[0].CreateRevision != f.Revision {
			return nil, fmt.Errorf("writing %s: %w (the election key %s is gone or taken)", describeKey(t.w.resKey), ErrNotLeader, f.Key)
		}

		resp.Responses = resp.Responses[:len(t.els)]
	}

	return resp, nil
}
