package store

import (
	"time"

	"go.uber.org/zap"
)

// Defaults chosen for a management plane: fail fast on a held lock, and keep enough watch history that a burst
// of a fleet's status updates does not overrun a controller's watch (a lapped watch stops the COSI controller
// runtime; docs/architecture.md, "The store: durable write path").
const (
	DefaultOpenTimeout     = 5 * time.Second
	DefaultHistoryCapacity = 10000
)

// Retention bounds the event log. Events beyond the bounds are folded into the snapshot, so replay still rebuilds
// the state while the file stops growing. A zero field means no bound on that axis; the zero Retention keeps
// every event.
type Retention struct {
	// MaxEvents keeps at most this many of the newest events.
	MaxEvents uint64
	// MaxAge keeps only events younger than this.
	MaxAge time.Duration
}

func (r Retention) enabled() bool {
	return r.MaxEvents > 0 || r.MaxAge > 0
}

type options struct {
	logger             *zap.Logger
	retention          Retention
	openTimeout        time.Duration
	historyCapacity    int
	compactionInterval time.Duration
	fullRetryInterval  time.Duration
	key                []byte
	commitObserver     func(took time.Duration, writes int)
}

// Option configures Open and Verify.
type Option func(*options)

func defaultOptions() options {
	return options{
		logger:             zap.NewNop(),
		openTimeout:        DefaultOpenTimeout,
		historyCapacity:    DefaultHistoryCapacity,
		compactionInterval: time.Minute,
		fullRetryInterval:  DefaultFullRetryInterval,
	}
}

// DefaultFullRetryInterval is how often a store whose device is full tries its kept commit again: each try costs
// one failed write, and writes resume at most this long after space is freed.
const DefaultFullRetryInterval = time.Second

// WithFullRetryInterval sets how often a store whose device is full tries again (DefaultFullRetryInterval).
func WithFullRetryInterval(d time.Duration) Option {
	return func(o *options) {
		o.fullRetryInterval = d
	}
}

// WithOpenTimeout bounds how long Open waits for another process to release the file lock before failing with
// ErrLocked (bbolt would otherwise wait forever).
func WithOpenTimeout(d time.Duration) Option {
	return func(o *options) {
		o.openTimeout = d
	}
}

// WithRetention enables log compaction; see Retention.
func WithRetention(r Retention) Option {
	return func(o *options) {
		o.retention = r
	}
}

// WithCompactionInterval sets how often an age-based retention is checked while the store is idle
// (count-based retention is checked after every commit). Default: one minute.
func WithCompactionInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.compactionInterval = d
		}
	}
}

// WithHistoryCapacity sets how many watch events each (namespace, type) keeps in memory for watchers that lag or
// resume from a bookmark. A watcher lapped by more than this gets an error and its watch ends, which stops a COSI
// controller runtime, so size it for the largest burst a fleet produces.
func WithHistoryCapacity(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.historyCapacity = n
		}
	}
}

// WithLogger sets the logger for commits, compaction and open statistics.
func WithLogger(l *zap.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithEncryptionKey gives the store the AES-256 key (KeySize bytes) that encrypts the resources of sensitive types
// (see Sensitive) before they reach the file. The first Open with a key binds the file to it; the file is then
// refused without it (ErrNoKey) or with another one (ErrWrongKey). Without a key, writes of sensitive resources
// fail: the store never keeps a secret in clear.
func WithEncryptionKey(key []byte) Option {
	return func(o *options) {
		o.key = key
	}
}

// WithCommitObserver has observe called after every commit that reached the disk, with how long the transaction
// took (fsync included) and how many writes it carried: the engine's metrics (internal/metrics) measure the store
// through it without the store knowing of them. observe runs on the commit path and must return at once.
func WithCommitObserver(observe func(took time.Duration, writes int)) Option {
	return func(o *options) {
		o.commitObserver = observe
	}
}
