package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// enqueue hands one write to the commit queue and returns its sequence number. It is called by the in-memory
// collection while it holds its mutex, so it must not block on the disk: it only appends to the queue. Sequence
// numbers are handed out in queue order, and one collection's writes are enqueued in the order they are applied in
// memory, so replaying the log reproduces every collection's history.
func (s *Store) enqueue(rec *record, collection *atomic.Uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.failure != nil {
		return 0, s.failure
	}

	if s.full != nil {
		return 0, s.full
	}

	if s.closed {
		return 0, fmt.Errorf("writing to state %q: %w", s.path, ErrClosed)
	}

	s.lastSeq++
	rec.seq, rec.time = s.lastSeq, time.Now()
	s.queue = append(s.queue, rec)
	collection.Store(rec.seq)

	return rec.seq, nil
}

// waitDurable blocks until seq is on disk, the store failed, or ctx ends.
//
// Group commit without a committer goroutine or a timer: a waiter that finds no commit in flight becomes the
// leader and commits everything queued so far (its own write included) in one bbolt transaction, then wakes the
// others; one of those still waiting leads the next commit with everything queued meanwhile. A lone writer thus
// commits on its own goroutine like COSI's stock store, and concurrent writers share commits, the batch size
// following the disk's latency.
func (s *Store) waitDurable(ctx context.Context, seq uint64) error {
	for s.durable.Load() < seq {
		s.mu.Lock()

		if s.failure != nil {
			failure := s.failure
			s.mu.Unlock()

			return failure
		}

		// While the device is full, retryFull leads the commits, at its pace.
		if !s.busy && len(s.queue) > 0 && s.full == nil {
			s.busy = true
			s.mu.Unlock()

			s.commitQueued()

			continue
		}

		ch := s.durableCh
		s.mu.Unlock()

		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for event %d to be durable: %w", seq, ctx.Err())
		}
	}

	return nil
}

// acquire waits until no commit or compaction is in flight and takes the exclusive right to the next one; it
// returns false if the store failed meanwhile.
func (s *Store) acquire() bool {
	for {
		s.mu.Lock()

		if s.failure != nil {
			s.mu.Unlock()

			return false
		}

		if !s.busy {
			s.busy = true
			s.mu.Unlock()

			return true
		}

		ch := s.durableCh
		s.mu.Unlock()

		<-ch
	}
}

// release gives up the right taken by acquire (or by a leading waiter) and wakes everyone waiting, so that one
// of them can lead the next commit.
func (s *Store) release() {
	s.busy = false
	close(s.durableCh)
	s.durableCh = make(chan struct{})
}

// commitQueued commits the current queue in one transaction and publishes the outcome; the caller holds the right
// to commit (busy).
func (s *Store) commitQueued() {
	// With other writes in progress, writers woken by the previous commit are runnable now; yielding once (no
	// timer) lets them join this commit instead of waiting a whole fsync for the next one. A lone writer does not
	// yield: under CPU contention a yield costs milliseconds.
	if s.writers.Load() > 1 {
		runtime.Gosched()
	}

	s.mu.Lock()
	batch := s.queue
	s.queue, s.spare = s.spare[:0], nil
	s.mu.Unlock()

	var (
		err  error
		took time.Duration
	)

	if len(batch) > 0 {
		started := time.Now()
		err = s.db.Update(func(tx *bbolt.Tx) error { return s.codec.applyBatch(tx, batch) })
		took = time.Since(started)
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	switch {
	case err != nil && errors.Is(err, syscall.ENOSPC):
		// bbolt rolled the transaction back, so the file holds none of the batch and memory is ahead of it by
		// exactly this batch: keep it, in order, at the head of the queue for retryFull. Its writers keep waiting
		// (nothing is acknowledged before it is on disk) and new writes are refused, so nothing is built on it.
		if s.full == nil {
			s.full = fmt.Errorf("committing to state %q: %w: %w (writes are refused until space is freed; "+
				"nothing acknowledged is lost)", s.path, ErrDiskFull, err)
			s.opts.logger.Error("the state's device is full: refusing writes until space is freed", zap.Error(err))

			go s.retryFull()
		}

		s.queue = append(batch, s.queue...)
		s.release()

		return
	case err != nil:
		// Memory is now ahead of the disk; committing later writes that depend on the lost ones would make the
		// log lie, so the store fails as a whole.
		s.failure = fmt.Errorf("committing to state %q: %w: %w (the store is unusable until reopened)", s.path, ErrFailed, err)
		s.opts.logger.Error("commit failed", zap.Error(err))
	case len(batch) > 0:
		s.commits.Add(1)
		s.writes.Add(uint64(len(batch)))
		s.durable.Store(batch[len(batch)-1].seq)

		if s.opts.commitObserver != nil {
			s.opts.commitObserver(took, len(batch))
		}

		if s.full != nil {
			s.opts.logger.Info("the state's device has space again: writes resume")
			s.full = nil
		}
	}

	clear(batch)
	s.spare = batch[:0]
	s.release()

	if s.opts.retention.MaxEvents > 0 {
		select {
		case s.compactCh <- struct{}{}:
		default:
		}
	}
}

// retryFull commits the batch kept by a commit that found the device full, every fullRetryInterval, until one
// succeeds or the store closes.
func (s *Store) retryFull() {
	ticker := time.NewTicker(s.opts.fullRetryInterval)
	defer ticker.Stop()

	for {
		select {
		case <-s.stop:
			return
		case <-ticker.C:
		}

		if !s.acquire() {
			return
		}

		s.commitQueued()

		s.mu.Lock()
		full := s.full != nil
		s.mu.Unlock()

		if !full {
			return
		}
	}
}

// readable refuses a read that would show writes a full device keeps off the disk; waitDurable would wait for
// them until space is freed.
func (s *Store) readable(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.full != nil && s.durable.Load() < seq {
		return s.full
	}

	return nil
}

// applyBatch writes a batch: for every record the log entry, its index entry and the new current state.
func (c codec) applyBatch(tx *bbolt.Tx, batch []*record) error {
	stateB, logB, indexB := tx.Bucket(bucketState), tx.Bucket(bucketLog), tx.Bucket(bucketIndex)
	logB.FillPercent = 1 // append-only: pack pages full

	for _, rec := range batch {
		if rec.kind == KindDestroyed {
			last := stateB.Get(rec.key)
			if last == nil {
				return fmt.Errorf("destroying %s: not in the stored state", describeKey(rec.key))
			}

			rec.data = append([]byte(nil), last...)

			res, err := c.unmarshal(rec.data)
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

// Stats counts commits and the writes they carried since Open; Writes/Commits is the mean group size.
type Stats struct {
	Commits uint64
	Writes  uint64
}

// Stats reports the group-commit counters, for benchmarks and logs.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Writes: s.writes.Load()}
}
