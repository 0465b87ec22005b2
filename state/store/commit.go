package store

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// enqueue hands one write to the committer and returns its sequence number. It is called by the in-memory
// collection while it holds its mutex, so it must not block on the disk: it only appends to the queue. Sequence
// numbers are handed out in queue order, and one collection's writes are enqueued in the order they are applied in
// memory, so replaying the log reproduces every collection's history.
func (s *Store) enqueue(rec *record, collection *atomic.Uint64) (uint64, error) {
	s.mu.Lock()

	if s.failure != nil {
		s.mu.Unlock()

		return 0, s.failure
	}

	if s.closed {
		s.mu.Unlock()

		return 0, fmt.Errorf("writing to state %q: %w", s.path, ErrClosed)
	}

	s.lastSeq++
	seq := s.lastSeq
	rec.seq, rec.time = seq, time.Now()
	s.queue = append(s.queue, rec)
	collection.Store(seq)
	s.mu.Unlock()

	select {
	case s.wake <- struct{}{}:
	default:
	}

	return seq, nil
}

// run is the committer: whenever no commit is in flight it takes everything queued so far and commits it in one
// bbolt transaction (one pair of fsyncs), so the batch size follows the disk's latency instead of a timer.
func (s *Store) run() {
	defer close(s.done)

	var ticker <-chan time.Time

	if s.opts.retention.MaxAge > 0 {
		t := time.NewTicker(s.opts.compactionInterval)
		defer t.Stop()

		ticker = t.C
	}

	s.compact(time.Now())

	for {
		select {
		case <-s.wake:
		case <-ticker:
			s.compact(time.Now())

			continue
		case <-s.stop:
			s.commitQueued() // Close: everything enqueued before closed was set gets committed

			return
		}

		// Writers woken by the previous commit are runnable now; yielding once (microseconds, no timer) lets them
		// join this commit instead of waiting a whole fsync for the next one.
		runtime.Gosched()

		if s.commitQueued() > 0 || s.compactMore {
			s.compact(time.Now())
		}
	}
}

// commitQueued commits the current queue and publishes the outcome; it returns how many writes it committed.
func (s *Store) commitQueued() int {
	s.mu.Lock()
	batch := s.queue
	s.queue, s.spare = s.spare[:0], nil
	failed := s.failure != nil
	s.mu.Unlock()

	// After a failed commit memory is ahead of the disk; committing later writes that depend on the lost ones
	// would make the log lie, so they are dropped and their writers get the failure.
	if len(batch) == 0 || failed {
		s.spare = batch

		return 0
	}

	err := s.db.Update(func(tx *bbolt.Tx) error { return applyBatch(tx, batch) })

	s.mu.Lock()

	if err != nil {
		s.failure = fmt.Errorf("committing to state %q: %w (the store is unusable until reopened)", s.path, err)
		s.opts.logger.Error("commit failed", zap.Error(err))
	} else {
		s.commits.Add(1)
		s.writes.Add(uint64(len(batch)))
		s.durable.Store(s.lastSeqOf(batch))
	}

	close(s.durableCh)
	s.durableCh = make(chan struct{})

	n := len(batch)
	clear(batch)
	s.spare = batch[:0]
	s.mu.Unlock()

	return n
}

func (s *Store) lastSeqOf(batch []*record) uint64 {
	return batch[len(batch)-1].seq
}

// applyBatch writes a batch: for every record the log entry, its index entry and the new current state.
func applyBatch(tx *bbolt.Tx, batch []*record) error {
	stateB, logB, indexB := tx.Bucket(bucketState), tx.Bucket(bucketLog), tx.Bucket(bucketIndex)
	logB.FillPercent = 1 // append-only: pack pages full

	for _, rec := range batch {
		if rec.kind == KindDestroyed {
			last := stateB.Get(rec.key)
			if last == nil {
				return fmt.Errorf("destroying %s: not in the stored state", describeKey(rec.key))
			}

			rec.data = append([]byte(nil), last...)

			res, err := marshaler.UnmarshalResource(rec.data)
			if err != nil {
				return fmt.Errorf("destroying %s: reading its last state: %w", describeKey(rec.key), err)
			}

			rec.version = res.Metadata().Version().Value()
		}

		if err := logB.Put(seqKey(rec.seq), encodeRecord(rec)); err != nil {
			return fmt.Errorf("appending event %d: %w", rec.seq, err)
		}

		if err := indexB.Put(indexKey(rec.key, rec.seq), nil); err != nil {
			return fmt.Errorf("indexing event %d: %w", rec.seq, err)
		}

		var err error

		if rec.kind == KindDestroyed {
			err = stateB.Delete(rec.key)
		} else {
			err = stateB.Put(rec.key, rec.data)
		}

		if err != nil {
			return fmt.Errorf("storing %s: %w", describeKey(rec.key), err)
		}
	}

	return nil
}

// waitDurable blocks until seq is on disk, the store failed, or ctx ends.
func (s *Store) waitDurable(ctx context.Context, seq uint64) error {
	for s.durable.Load() < seq {
		s.mu.Lock()
		failure, ch := s.failure, s.durableCh
		s.mu.Unlock()

		if failure != nil {
			return failure
		}

		if s.durable.Load() >= seq {
			return nil
		}

		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for event %d to be durable: %w", seq, ctx.Err())
		}
	}

	return nil
}

// Stats counts commits and the writes they carried since Open; Writes/Commits is the mean group size.
type Stats struct {
	Commits uint64
	Writes  uint64
}

// Stats reports the group-commit counters, for benchmarks and logs.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Writes: s.writes.Load()}
}
