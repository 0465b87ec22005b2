package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	cosistore "github.com/cosi-project/runtime/pkg/state/impl/store"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Errors callers can test with errors.Is; the messages they are wrapped in name the file.
var (
	// ErrLocked: another process (or another Store in this process) holds the file.
	ErrLocked = errors.New("state file is locked by another process")
	// ErrForeign: the file is a valid bbolt database but not an upshift state; it is left untouched.
	ErrForeign = errors.New("not an upshift state file")
	// ErrCorrupt: the file or its log cannot be read back consistently; it is left untouched.
	ErrCorrupt = errors.New("state file is corrupt")
	// ErrClosed: the store was closed; writes are refused.
	ErrClosed = errors.New("state store is closed")
	// ErrFailed: a commit failed, so memory is ahead of the disk; the store refuses writes, and reads of what did
	// not reach the disk, until it is reopened from the file.
	ErrFailed = errors.New("state store failed")
	// ErrDiskFull: a commit found no space left on the file's device. The writes of that commit stay queued and
	// are committed once space is freed; new writes are refused until then, and reads of what is not yet on disk.
	ErrDiskFull = errors.New("no space left for the state file")
)

// marshaler is COSI's protobuf resource marshaling: registered types round-trip, others come back as
// *protobuf.Resource.
var marshaler cosistore.ProtobufMarshaler

// Store is a durable, event-sourced COSI state in one bbolt file. Use State for the COSI CoreState, History and
// Events for the log, Close to release the file.
type Store struct {
	db    *bbolt.DB
	path  string
	opts  options
	codec codec // how resources are stored: sealed when sensitive
	state *durableState

	// group commit, see commit.go
	mu        sync.Mutex
	queue     []*record
	spare     []*record     // the previous batch's slice, reused by the next queue; owned by the commit holder
	lastSeq   uint64        // last sequence number handed out; guarded by mu
	durableCh chan struct{} // closed and replaced whenever a commit or compaction ends; guarded by mu
	failure   error         // set once a commit fails; guarded by mu
	full      error         // set while the device is full and a batch waits to be committed again; guarded by mu
	closed    bool          // guarded by mu
	busy      bool          // a commit or compaction is in flight; guarded by mu
	durable   atomic.Uint64 // highest sequence number known to be on disk
	writers   atomic.Int64  // Create/Update/Destroy calls in progress
	compactCh chan struct{} // a commit happened: count-based retention may be due
	stop      chan struct{}
	done      chan struct{} // the compactor ended

	pending sync.Map // collectionKey -> *atomic.Uint64: last sequence number enqueued for that (namespace, type)

	loadMu sync.Mutex
	loaded map[resource.Namespace][]resource.Resource // replayed at Open, handed to inmem on first use of a namespace

	snapshotSeq uint64 // owned by whoever holds busy after Open

	commits atomic.Uint64 // statistics for benchmarks and logs
	writes  atomic.Uint64
}

// Open opens (or creates) the state file at path, replays snapshot and log into memory, and starts the
// background compaction (if a retention is set).
// It fails with ErrLocked if another process holds the file past the open timeout, and with ErrForeign or
// ErrCorrupt, without modifying the file, if it is not a readable upshift state.
func Open(path string, opts ...Option) (*Store, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}

	codec, err := newCodec(o.key)
	if err != nil {
		return nil, fmt.Errorf("opening state %q: %w", path, err)
	}

	db, err := openDB(path, o.openTimeout, false)
	if err != nil {
		return nil, err
	}

	s := &Store{
		codec:     codec,
		db:        db,
		path:      path,
		opts:      o,
		durableCh: make(chan struct{}),
		compactCh: make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}

	start := time.Now()

	if err = s.initialize(); err == nil {
		err = s.checkKey()
	}

	if err == nil {
		err = s.load()
	}

	if err != nil {
		return nil, errors.Join(err, db.Close())
	}

	o.logger.Info("state opened", zap.String("path", path), zap.Uint64("last_seq", s.lastSeq),
		zap.Uint64("snapshot_seq", s.snapshotSeq), zap.Duration("took", time.Since(start)))

	s.durable.Store(s.lastSeq)
	s.state = newDurableState(s)

	go s.compactor()

	return s, nil
}

// openDB opens the bbolt file with a lock timeout and turns bbolt's errors into ones that name the file.
func openDB(path string, timeout time.Duration, readOnly bool) (*bbolt.DB, error) {
	if readOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("opening state %q: %w", path, err)
		}
	}

	if !readOnly {
		// bbolt rebuilds the free list at a read-write open by walking every page in a goroutine of its own, where
		// a corrupt page is a panic no caller can recover: the process would die with a stack trace instead of
		// refusing the file. Reading every page first, here, turns that into ErrCorrupt.
		if err := checkPages(path, timeout); err != nil {
			return nil, err
		}
	}

	db, err := openBolt(path, &bbolt.Options{Timeout: timeout, ReadOnly: readOnly, FreelistType: bbolt.FreelistMapType, NoFreelistSync: !readOnly})

	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("opening state %q: %w (still held after %s; is another upshift serving this data dir?)", path, ErrLocked, timeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return nil, fmt.Errorf("opening state %q: %w: %w", path, ErrCorrupt, err)
	default:
		return nil, fmt.Errorf("opening state %q: %w", path, err)
	}
}

// initialize creates the buckets in a brand-new (empty) file, and otherwise checks magic and schema.
func (s *Store) initialize() error {
	var empty bool

	if err := s.db.View(func(tx *bbolt.Tx) error {
		empty = tx.ForEach(func([]byte, *bbolt.Bucket) error { return errStop }) == nil

		return nil
	}); err != nil {
		return fmt.Errorf("reading state %q: %w", s.path, err)
	}

	if !empty {
		return s.db.View(func(tx *bbolt.Tx) error { return checkSchema(tx, s.path) })
	}

	return s.db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketState, bucketLog, bucketIndex, bucketSnapshot} {
			if _, err := tx.CreateBucket(name); err != nil {
				return fmt.Errorf("initializing state %q: %w", s.path, err)
			}
		}

		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyMagic, magic); err != nil {
			return err
		}

		return meta.Put(keySchema, encodeUint64(schemaVersion))
	})
}

var errStop = errors.New("stop")

// checkSchema refuses files that are not ours or are newer than this code.
func checkSchema(tx *bbolt.Tx, path string) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil || !bytes.Equal(meta.Get(keyMagic), magic) {
		return fmt.Errorf("opening state %q: %w (no upshift meta bucket; refusing to touch it)", path, ErrForeign)
	}

	schema, err := decodeUint64(meta.Get(keySchema))
	if err != nil || schema == 0 {
		return fmt.Errorf("opening state %q: %w: bad schema version", path, ErrCorrupt)
	}

	if schema > schemaVersion {
		return fmt.Errorf("opening state %q: schema version %d is newer than this upshift supports (%d)", path, schema, schemaVersion)
	}

	for _, name := range [][]byte{bucketState, bucketLog, bucketIndex, bucketSnapshot} {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("opening state %q: %w: bucket %q missing", path, ErrCorrupt, name)
		}
	}

	return nil
}

// load replays snapshot and log and unmarshals the resulting resources, grouped by namespace.
func (s *Store) load() error {
	return s.db.View(func(tx *bbolt.Tx) error {
		r, err := replay(tx)
		if err != nil {
			return fmt.Errorf("replaying state %q: %w", s.path, err)
		}

		if len(r.problems) > 0 {
			return fmt.Errorf("replaying state %q: %w: %s (run `upshift state verify`)", s.path, ErrCorrupt, r.problems[0])
		}

		s.lastSeq, s.snapshotSeq = r.lastSeq, r.snapshotSeq

		resources, inClear, err := s.unmarshalLive(r.live)
		if err != nil {
			return fmt.Errorf("replaying state %q: %w", s.path, err)
		}

		if inClear > 0 {
			s.opts.logger.Warn("state holds resources of sensitive types in clear, written before encryption at rest: "+
				"each is encrypted on its next write, and the event log keeps the clear copies until retention compacts "+
				"them; rotate those credentials", zap.String("path", s.path), zap.Int("resources", inClear))
		}

		s.loaded = map[resource.Namespace][]resource.Resource{}

		for _, res := range resources {
			ns := res.Metadata().Namespace()
			s.loaded[ns] = append(s.loaded[ns], res)
		}

		return nil
	})
}

// unmarshalLive unmarshals the replayed resources on every CPU (at open it is half the time), and counts those of
// sensitive types that are stored in clear.
func (s *Store) unmarshalLive(live map[string]*liveResource) ([]resource.Resource, int, error) {
	keys := make([]string, 0, len(live))
	for key := range live {
		keys = append(keys, key)
	}

	resources := make([]resource.Resource, len(keys))
	workers := runtime.GOMAXPROCS(0)
	chunk := (len(keys) + workers - 1) / workers

	var (
		g       errgroup.Group
		inClear atomic.Int64
	)

	for start := 0; start < len(keys); start += chunk {
		g.Go(func() error {
			for i := start; i < min(start+chunk, len(keys)); i++ {
				data := live[keys[i]].data

				res, err := s.codec.unmarshal(data)
				if err != nil {
					return fmt.Errorf("%w: %s: %w", ErrCorrupt, describeKey([]byte(keys[i])), err)
				}

				if Sensitive(res) && !sealed(data) {
					inClear.Add(1)
				}

				resources[i] = res
			}

			return nil
		})
	}

	err := g.Wait()

	return resources, int(inClear.Load()), err
}

// takeLoaded hands the replayed resources of one namespace over to its in-memory state, once.
func (s *Store) takeLoaded(ns resource.Namespace) []resource.Resource {
	s.loadMu.Lock()
	defer s.loadMu.Unlock()

	res := s.loaded[ns]
	delete(s.loaded, ns)

	return res
}

// State returns the durable COSI state. Wrap it with state.WrapCore for the full state.State API.
//
// The `meta` namespace (resource definitions, namespaces) is served from memory and never persisted: COSI's
// registries re-create those on every start and would fail with "already exists" if they survived. An engine
// that composes namespaces itself should likewise route `meta` to an inmem state.
func (s *Store) State() state.CoreState {
	return s.state
}

// Path returns the file the store was opened on.
func (s *Store) Path() string {
	return s.path
}

// Close commits everything already queued, stops compaction and releases the file. Writes after Close fail
// with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()

		return nil
	}

	s.closed = true
	s.mu.Unlock()

	close(s.stop)
	<-s.done

	// Writes enqueued before closed was set are committed (their writers may be waiting for a leader), and the
	// commit right is kept so that nothing touches the file after it is closed.
	if s.acquire() {
		s.commitQueued()
		s.acquire()
	}

	// Writes still waiting for space are lost with the close: their writers get the error, never an ack.
	s.mu.Lock()
	if s.full != nil && s.failure == nil {
		s.failure = fmt.Errorf("%w (closed before space was freed)", s.full)
		close(s.durableCh)
		s.durableCh = make(chan struct{})
	}
	s.mu.Unlock()

	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing state %q: %w", s.path, err)
	}

	return nil
}
