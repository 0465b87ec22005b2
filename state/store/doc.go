// Package store is upshift's durable COSI state: an event-sourced store in one bbolt file with group commit.
//
// # Write path: group commit outside the collection lock
//
// COSI's in-memory state (inmem) validates a write (version, owner, phase, finalizers) and calls its backing
// store's Put while holding the mutex of that (namespace, type) collection, which every read and write of the type
// also takes. A backing store that fsyncs inside Put therefore serializes all writers of a type on the disk, and a
// fleet's status updates, all of one type, commit one fsync at a time.
//
// Here inmem still does all of COSI's semantics, but its backing store only enqueues the marshaled write and
// returns; Store.State's Create, Update and Destroy then wait for the commit after inmem has released the mutex.
// Commits are led by the writers themselves, with no committer goroutine and no timer (unlike bbolt's db.Batch):
// a waiting writer that finds no commit in flight takes everything queued so far into one bbolt transaction,
// commits it and wakes the others, one of which leads the next commit with what queued meanwhile. A lone writer
// commits on its own goroutine as COSI's stock store does; 16 concurrent writers share one pair of fsyncs instead
// of queueing for 16, the batch size following the disk's latency. Nothing that is not durable is ever shown: a
// write returns only once committed, Get and List wait until the writes of their collection enqueued so far are
// committed, and watch events are held back until the writes behind them are. A failed commit fails the store
// (memory is then ahead of the disk): every later write, and every read or watch event that would show a write
// that did not reach the disk, gets the error until the store is reopened from the file.
//
// # Layout of the bbolt file
//
//	meta      magic "upshift-state", schema version, snapshot sequence and time, the sealed key check
//	state     resource key → marshaled resource: the current state
//	log       sequence number (8 bytes, big endian) → record: kind, time, version, writer, resource key, resource
//	index     resource key + sequence number → nothing: the per-resource history
//	snapshot  resource key → marshaled resource: the state as of the snapshot sequence (compaction)
//
// A resource key is the length-prefixed namespace, type and id. Resources are marshaled with COSI's protobuf
// marshaling (registered types round-trip; others load as *protobuf.Resource); those of types whose resource
// definition is meta.Sensitive are then sealed with AES-256-GCM (WithEncryptionKey, seal.go), so no secret reaches
// the state, log or snapshot bucket in clear. Every write puts its log record,
// index entry and new current state in the same transaction. Open rebuilds the state by replaying the snapshot and
// then the log, refusing a file whose log is not a legal sequence of transitions; Verify does the same read-only
// and also compares the result with the stored current state.
//
// # Retention
//
// WithRetention bounds the log by count and/or age. Compaction runs in the background between commits, in chunks,
// each one bbolt transaction that folds the oldest events into the snapshot, deletes them and their index entries,
// and advances the snapshot sequence, so a crash at any moment leaves a file that replays to the same state.
// History reports where the retained log begins.
//
// # The meta namespace
//
// The `meta` namespace (resource definitions and namespaces) is kept in memory only: COSI's registries create
// those resources on every start and would fail with "already exists" if they were persisted.
package store
