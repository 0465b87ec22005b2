package store

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"go.etcd.io/bbolt"
)

// Event is one durable write from the log.
type Event struct {
	// Resource is the resource as written; for KindDestroyed, its last state.
	Resource  resource.Resource
	Time      time.Time
	Namespace resource.Namespace
	Type      resource.Type
	ID        resource.ID
	Writer    string
	Seq       uint64
	Version   uint64
	Kind      EventKind
}

// History is the retained log of one resource.
type History struct {
	// RetainedSince is the time of the newest event folded into the snapshot; zero if nothing was ever compacted.
	RetainedSince time.Time
	// Snapshot is the resource's state as of RetainedFrom-1, when older events of it were compacted away and it
	// existed at that point; nil otherwise.
	Snapshot resource.Resource
	// Events are the resource's retained events, oldest first.
	Events []Event
	// RetainedFrom is the first sequence number still in the log: events before it were compacted.
	RetainedFrom uint64
}

// History returns the retained events of one resource and where the retained log begins.
func (s *Store) History(ctx context.Context, ns resource.Namespace, typ resource.Type, id resource.ID) (History, error) {
	key := resourceKey(ns, typ, id)

	var h History

	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error

		if h.RetainedFrom, h.RetainedSince, err = retainedFrom(tx); err != nil {
			return err
		}

		if data := tx.Bucket(bucketSnapshot).Get(key); data != nil {
			if h.Snapshot, err = s.codec.unmarshal(data); err != nil {
				return fmt.Errorf("%w: snapshot of %s: %w", ErrCorrupt, describeKey(key), err)
			}
		}

		logB := tx.Bucket(bucketLog)
		c := tx.Bucket(bucketIndex).Cursor()

		for k, _ := c.Seek(key); k != nil && bytes.HasPrefix(k, key) && len(k) == len(key)+8; k, _ = c.Next() {
			if err = ctx.Err(); err != nil {
				return err
			}

			seq := k[len(key):]

			ev, err := s.codec.decodeEvent(seq, logB.Get(seq))
			if err != nil {
				return err
			}

			h.Events = append(h.Events, ev)
		}

		return nil
	})
	if err != nil {
		return History{}, fmt.Errorf("reading history of %s from %q: %w", describeKey(key), s.path, err)
	}

	return h, nil
}

// Events returns up to limit events of the global log starting at sequence number from (limit <= 0: all).
// Sequence numbers below the first retained one were compacted and are skipped.
func (s *Store) Events(ctx context.Context, from uint64, limit int) ([]Event, error) {
	var events []Event

	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketLog).Cursor()

		for k, v := c.Seek(seqKey(from)); k != nil && (limit <= 0 || len(events) < limit); k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}

			ev, err := s.codec.decodeEvent(k, v)
			if err != nil {
				return err
			}

			events = append(events, ev)
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading events of %q from %d: %w", s.path, from, err)
	}

	return events, nil
}

// retainedFrom reads where the retained log begins.
func retainedFrom(tx *bbolt.Tx) (uint64, time.Time, error) {
	meta := tx.Bucket(bucketMeta)

	snapSeq, err := decodeUint64(meta.Get(keySnapshotSeq))
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("%w: snapshot sequence", ErrCorrupt)
	}

	snapNanos, err := decodeUint64(meta.Get(keySnapshotTime))
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("%w: snapshot time", ErrCorrupt)
	}

	var since time.Time
	if snapSeq > 0 {
		since = time.Unix(0, int64(snapNanos))
	}

	return snapSeq + 1, since, nil
}

// decodeEvent turns a log entry into an Event, unmarshaling the resource.
func (c codec) decodeEvent(k, v []byte) (Event, error) {
	seq, err := parseSeqKey(k)
	if err != nil {
		return Event{}, fmt.Errorf("%w: log key %x", ErrCorrupt, k)
	}

	if v == nil {
		return Event{}, fmt.Errorf("%w: event %d is indexed but missing from the log", ErrCorrupt, seq)
	}

	rec, err := decodeRecord(v)
	if err != nil {
		return Event{}, fmt.Errorf("%w: event %d: %w", ErrCorrupt, seq, err)
	}

	ns, typ, id, err := parseResourceKey(rec.key)
	if err != nil {
		return Event{}, fmt.Errorf("%w: event %d: %w", ErrCorrupt, seq, err)
	}

	res, err := c.unmarshal(rec.data)
	if err != nil {
		return Event{}, fmt.Errorf("%w: event %d: resource: %w", ErrCorrupt, seq, err)
	}

	return Event{
		Resource:  res,
		Time:      rec.time,
		Namespace: ns,
		Type:      typ,
		ID:        id,
		Writer:    string(rec.writer),
		Seq:       seq,
		Version:   rec.version,
		Kind:      rec.kind,
	}, nil
}
