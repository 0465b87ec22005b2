package store

import (
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// compactChunk bounds how many events one compaction transaction folds, so writers queued behind it wait for at
// most one bounded transaction; further chunks interleave with write commits.
const compactChunk = 10000

// compactor applies the retention: after commits (count) and on a ticker (age), one chunk at a time, each time
// taking the commit right so that it never runs concurrently with a commit.
func (s *Store) compactor() {
	defer close(s.done)

	if !s.opts.retention.enabled() {
		<-s.stop

		return
	}

	var tick <-chan time.Time

	if s.opts.retention.MaxAge > 0 {
		t := time.NewTicker(s.opts.compactionInterval)
		defer t.Stop()

		tick = t.C
	}

	for more := true; ; {
		if more {
			select {
			case <-s.stop:
				return
			default:
			}

			if !s.acquire() {
				return
			}

			more = s.compact(time.Now())

			s.mu.Lock()
			s.release()
			s.mu.Unlock()

			continue
		}

		select {
		case <-s.stop:
			return
		case <-s.compactCh:
		case <-tick:
		}

		more = true
	}
}

// compact folds events beyond the retention bounds into the snapshot, one chunk per call, each chunk a single
// bbolt transaction: the snapshot, the log, the index and the snapshot sequence move together, so a crash at any
// point leaves a file whose snapshot + log replays to the same state. It reports whether another chunk is due.
// The caller holds the commit right.
func (s *Store) compact(now time.Time) bool {
	// A write transaction costs a commit (two fsyncs) even when it changes nothing, so look first.
	due, err := s.compactionDue(now)
	if err != nil {
		s.opts.logger.Error("checking log retention", zap.String("path", s.path), zap.Error(err))

		return false
	}

	if !due {
		return false
	}

	var (
		folded uint64
		more   bool
	)

	err = s.db.Update(func(tx *bbolt.Tx) error {
		var err error

		folded, more, err = s.compactTx(tx, now)

		return err
	})
	if err != nil {
		// Compaction failing leaves the log longer than configured but consistent; writes go on.
		s.opts.logger.Error("log compaction failed", zap.String("path", s.path), zap.Error(err))

		return false
	}

	if folded > 0 {
		s.opts.logger.Debug("log compacted", zap.Uint64("events", folded), zap.Uint64("snapshot_seq", s.snapshotSeq))
	}

	return more
}

// compactionDue reports, from a read transaction, whether the oldest retained event is beyond a retention bound.
func (s *Store) compactionDue(now time.Time) (bool, error) {
	r := s.opts.retention

	if r.MaxEvents > 0 && s.durable.Load()-s.snapshotSeq > r.MaxEvents+countSlack(r.MaxEvents) {
		return true, nil
	}

	if r.MaxAge <= 0 {
		return false, nil
	}

	var due bool

	err := s.db.View(func(tx *bbolt.Tx) error {
		k, v := tx.Bucket(bucketLog).Cursor().First()
		if k == nil {
			return nil
		}

		rec, err := decodeRecord(v)
		if err != nil {
			return err
		}

		due = rec.time.Before(now.Add(-r.MaxAge))

		return nil
	})

	return due, err
}

// countSlack lets the log exceed MaxEvents by 10% before compacting, so compaction runs every MaxEvents/10 writes
// rather than after every commit.
func countSlack(maxEvents uint64) uint64 {
	return max(1, maxEvents/10)
}

// compactTx folds at most compactChunk events and reports how many it folded and whether more are due.
func (s *Store) compactTx(tx *bbolt.Tx, now time.Time) (folded uint64, more bool, err error) {
	logB, indexB, snapB, metaB := tx.Bucket(bucketLog), tx.Bucket(bucketIndex), tx.Bucket(bucketSnapshot), tx.Bucket(bucketMeta)
	c := logB.Cursor()

	lastKey, _ := c.Last()
	if lastKey == nil {
		return 0, false, nil
	}

	lastSeq, err := parseSeqKey(lastKey)
	if err != nil {
		return 0, false, err
	}

	var countCutoff uint64 // events with seq <= countCutoff are beyond MaxEvents

	if r := s.opts.retention; r.MaxEvents > 0 && lastSeq-s.snapshotSeq > r.MaxEvents+countSlack(r.MaxEvents) {
		countCutoff = lastSeq - r.MaxEvents
	}

	ageCutoff := time.Time{}
	if s.opts.retention.MaxAge > 0 {
		ageCutoff = now.Add(-s.opts.retention.MaxAge)
	}

	var (
		doneKeys  [][]byte
		seq       uint64
		foldedRec record
	)

	for k, v := c.First(); k != nil; k, v = c.Next() {
		if seq, err = parseSeqKey(k); err != nil {
			return 0, false, err
		}

		rec, err := decodeRecord(v)
		if err != nil {
			return 0, false, fmt.Errorf("event %d: %w", seq, err)
		}

		if seq > countCutoff && !rec.time.Before(ageCutoff) {
			break
		}

		if folded == compactChunk {
			more = true

			break
		}

		if rec.kind == KindDestroyed {
			err = snapB.Delete(rec.key)
		} else {
			err = snapB.Put(rec.key, rec.data)
		}

		if err != nil {
			return 0, false, fmt.Errorf("folding event %d into the snapshot: %w", seq, err)
		}

		doneKeys = append(doneKeys, indexKey(rec.key, seq))
		foldedRec, folded = rec, folded+1
		foldedRec.seq = seq
	}

	if folded == 0 {
		return 0, false, nil
	}

	for _, ik := range doneKeys {
		seq := ik[len(ik)-8:]

		if err = logB.Delete(seq); err != nil {
			return 0, false, err
		}

		if err = indexB.Delete(ik); err != nil {
			return 0, false, err
		}
	}

	if err = metaB.Put(keySnapshotSeq, encodeUint64(foldedRec.seq)); err != nil {
		return 0, false, err
	}

	if err = metaB.Put(keySnapshotTime, encodeUint64(uint64(foldedRec.time.UnixNano()))); err != nil {
		return 0, false, err
	}

	s.snapshotSeq = foldedRec.seq

	return folded, more, nil
}
