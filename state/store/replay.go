package store

import (
	"bytes"
	"fmt"

	"go.etcd.io/bbolt"
)

// maxProblems caps how many inconsistencies a replay collects; one is enough to refuse an Open, a few help a human.
const maxProblems = 100

// liveResource is a resource's state during replay; data aliases the read transaction's pages.
type liveResource struct {
	data    []byte
	version uint64 // 0 when it came from the snapshot (versions are only tracked through log records)
}

// replayResult is the state rebuilt from snapshot + log, keyed by resource key.
type replayResult struct {
	live        map[string]*liveResource
	snapshotSeq uint64
	lastSeq     uint64
	snapshotLen int
	events      int
	problems    []string
}

func (r *replayResult) problem(format string, args ...any) {
	if len(r.problems) < maxProblems {
		r.problems = append(r.problems, fmt.Sprintf(format, args...))
	}
}

// replay rebuilds the current state from the snapshot and the remaining log, checking that the log is gap-free and
// that every record is a legal transition (created only when absent, updated/destroyed only when present, versions
// +1 per update). A bbolt panic on a damaged page is reported as ErrCorrupt.
func replay(tx *bbolt.Tx) (result *replayResult, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: reading pages: %v", ErrCorrupt, p)
		}
	}()

	meta := tx.Bucket(bucketMeta)

	snapshotSeq, err := decodeUint64(meta.Get(keySnapshotSeq))
	if err != nil {
		return nil, fmt.Errorf("%w: bad snapshot sequence", ErrCorrupt)
	}

	r := &replayResult{live: map[string]*liveResource{}, snapshotSeq: snapshotSeq, lastSeq: snapshotSeq}

	if err = tx.Bucket(bucketSnapshot).ForEach(func(k, v []byte) error {
		r.live[string(k)] = &liveResource{data: v}
		r.snapshotLen++

		return nil
	}); err != nil {
		return nil, err
	}

	c := tx.Bucket(bucketLog).Cursor()

	for k, v := c.First(); k != nil; k, v = c.Next() {
		r.events++
		r.apply(k, v)
	}

	return r, nil
}

// apply replays one log record onto r.live.
func (r *replayResult) apply(k, v []byte) {
	seq, err := parseSeqKey(k)
	if err != nil {
		r.problem("log key %x: %v", k, err)

		return
	}

	if seq != r.lastSeq+1 {
		r.problem("log sequence jumps from %d to %d", r.lastSeq, seq)
	}

	r.lastSeq = seq

	rec, err := decodeRecord(v)
	if err != nil {
		r.problem("event %d: %v", seq, err)

		return
	}

	prev, exists := r.live[string(rec.key)] // no allocation for the lookup; updates then mutate in place

	switch rec.kind {
	case KindCreated:
		if exists {
			r.problem("event %d creates %s, which already exists", seq, describeKey(rec.key))
		}

		if rec.version != 1 {
			r.problem("event %d creates %s at version %d, not 1", seq, describeKey(rec.key), rec.version)
		}

		r.live[string(rec.key)] = &liveResource{data: rec.data, version: rec.version}
	case KindUpdated:
		if !exists {
			r.problem("event %d updates %s, which does not exist", seq, describeKey(rec.key))
			r.live[string(rec.key)] = &liveResource{data: rec.data, version: rec.version}

			return
		}

		if prev.version != 0 && rec.version != prev.version+1 {
			r.problem("event %d updates %s from version %d to %d", seq, describeKey(rec.key), prev.version, rec.version)
		}

		prev.data, prev.version = rec.data, rec.version
	case KindDestroyed:
		switch {
		case !exists:
			r.problem("event %d destroys %s, which does not exist", seq, describeKey(rec.key))
		case !bytes.Equal(prev.data, rec.data):
			r.problem("event %d destroys %s but records a state other than its last one", seq, describeKey(rec.key))
		case prev.version != 0 && rec.version != prev.version:
			r.problem("event %d destroys %s at version %d, but its last version is %d", seq, describeKey(rec.key), rec.version, prev.version)
		}

		delete(r.live, string(rec.key))
	}
}

// describeKey renders a resource key as COSI does: Type(namespace/id).
func describeKey(key []byte) string {
	ns, typ, id, err := parseResourceKey(key)
	if err != nil {
		return fmt.Sprintf("malformed key %x", key)
	}

	return fmt.Sprintf("%s(%s/%s)", typ, ns, id)
}
