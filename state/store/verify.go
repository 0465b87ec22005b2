package store

import (
	"bytes"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"
)

// Report is the outcome of Verify.
type Report struct {
	Path string
	// Problems lists every inconsistency found (capped at 100); empty means consistent.
	Problems []string
	// Resources is the number of resources in the stored current state.
	Resources int
	// SnapshotResources is the number of resources in the compaction snapshot.
	SnapshotResources int
	// Events is the number of events in the retained log.
	Events int
	// FirstSeq and LastSeq bound the retained log (FirstSeq > LastSeq when it is empty).
	FirstSeq, LastSeq uint64
}

// Consistent reports whether replaying the log reproduced the stored state exactly.
func (r Report) Consistent() bool {
	return len(r.Problems) == 0
}

// String renders the report for `upshift state verify`.
func (r Report) String() string {
	var b strings.Builder

	fmt.Fprintf(&b, "state %s: %d resources, %d in snapshot, %d events retained (seq %d..%d)\n",
		r.Path, r.Resources, r.SnapshotResources, r.Events, r.FirstSeq, r.LastSeq)

	if r.Consistent() {
		b.WriteString("consistent: replaying snapshot + log reproduces the stored state\n")

		return b.String()
	}

	fmt.Fprintf(&b, "INCONSISTENT: %d problem(s)\n", len(r.Problems))

	for _, p := range r.Problems {
		fmt.Fprintf(&b, "  - %s\n", p)
	}

	return b.String()
}

// Verify opens the state file read-only, replays snapshot + log, and compares the result with the stored current
// state byte for byte; it also checks that the per-resource index and the log agree. Inconsistencies are returned
// in the Report; the error is for files that cannot be read at all (missing, locked by a running server, foreign).
func Verify(path string, opts ...Option) (Report, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}

	db, err := openDB(path, o.openTimeout, true)
	if err != nil {
		return Report{}, err
	}

	defer db.Close() //nolint:errcheck // read-only

	report := Report{Path: path}

	err = db.View(func(tx *bbolt.Tx) (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: reading pages: %v", ErrCorrupt, p)
			}
		}()

		if err = checkSchema(tx, path); err != nil {
			return err
		}

		r, err := replay(tx)
		if err != nil {
			return err
		}

		report.Problems = r.problems
		report.SnapshotResources, report.Events = r.snapshotLen, r.events
		report.FirstSeq, report.LastSeq = r.snapshotSeq+1, r.lastSeq

		addProblem := func(format string, args ...any) {
			if len(report.Problems) < maxProblems {
				report.Problems = append(report.Problems, fmt.Sprintf(format, args...))
			}
		}

		seen := 0

		if err = tx.Bucket(bucketState).ForEach(func(k, v []byte) error {
			report.Resources++

			live, ok := r.live[string(k)]

			switch {
			case !ok:
				addProblem("%s is in the stored state but not in the replayed log", describeKey(k))
			case !bytes.Equal(live.data, v):
				addProblem("%s differs between the stored state and the replayed log", describeKey(k))
			default:
				seen++
			}

			return nil
		}); err != nil {
			return err
		}

		if seen != len(r.live) {
			for k := range r.live {
				if tx.Bucket(bucketState).Get([]byte(k)) == nil {
					addProblem("%s is in the replayed log but not in the stored state", describeKey([]byte(k)))
				}
			}
		}

		verifyIndex(tx, addProblem)

		return nil
	})
	if err != nil {
		return Report{}, fmt.Errorf("verifying state %q: %w", path, err)
	}

	return report, nil
}

// verifyIndex checks that every index entry points at a log record of the same resource and every record is indexed.
func verifyIndex(tx *bbolt.Tx, addProblem func(string, ...any)) {
	logB := tx.Bucket(bucketLog)
	indexed := 0

	_ = tx.Bucket(bucketIndex).ForEach(func(k, _ []byte) error { //nolint:errcheck // the callback never fails
		if len(k) < 8 {
			addProblem("index key %x is malformed", k)

			return nil
		}

		resKey, seq := k[:len(k)-8], k[len(k)-8:]

		rec, err := decodeRecord(logB.Get(seq))

		switch {
		case logB.Get(seq) == nil:
			addProblem("index entry of %s points at missing event %x", describeKey(resKey), seq)
		case err != nil:
			// reported by replay
		case !bytes.Equal(rec.key, resKey):
			addProblem("index entry of %s points at an event of %s", describeKey(resKey), describeKey(rec.key))
		default:
			indexed++
		}

		return nil
	})

	if events := logB.Stats().KeyN; indexed != events {
		addProblem("%d events in the log but %d valid index entries", events, indexed)
	}
}
