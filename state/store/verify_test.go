package store_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"

	"github.com/upshift-io/upshift/state/store"
)

// writeSample creates three resources (m0..m2) with two updates each and closes the store.
func writeSample(t *testing.T, path string) {
	t.Helper()

	s := openTestStore(t, path)
	st := state.WrapCore(s.State())

	for i := range 3 {
		r := newStatus("default", fmt.Sprintf("m%d", i))
		require.NoError(t, st.Create(context.Background(), r))

		for range 2 {
			r.TypedSpec().Attempt++
			require.NoError(t, st.Update(context.Background(), r))
		}
	}

	require.NoError(t, s.Close())
}

func TestVerifyConsistent(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")
	writeSample(t, path)

	report, err := store.Verify(path)
	require.NoError(t, err)
	require.True(t, report.Consistent(), "%s", report)
	require.Equal(t, 3, report.Resources)
	require.Equal(t, 9, report.Events)
	require.Equal(t, uint64(1), report.FirstSeq)
	require.Equal(t, uint64(9), report.LastSeq)
	require.Contains(t, report.String(), "consistent")
}

// TestVerifyReportsTampering damages the file the way a bug or a foreign writer would, and expects Verify to name
// the problem and Open to refuse a log that does not replay.
func TestVerifyReportsTampering(t *testing.T) {
	t.Parallel()

	firstStateKey := func(tx *bbolt.Tx) []byte {
		k, _ := tx.Bucket([]byte("state")).Cursor().First()

		return append([]byte(nil), k...)
	}

	for name, tc := range map[string]struct {
		tamper    func(tx *bbolt.Tx) error
		problem   string
		openError string // empty: Open still works (the log replays; only the redundant state copy is off)
	}{
		"state value changed": {
			tamper: func(tx *bbolt.Tx) error {
				b := tx.Bucket([]byte("state"))
				k := firstStateKey(tx)
				v := append([]byte(nil), b.Get(k)...)
				v[len(v)-1] ^= 0xff

				return b.Put(k, v)
			},
			problem: "TestStatuses.store.upshift.io(default/m0) differs between the stored state and the replayed log",
		},
		"state entry deleted": {
			tamper: func(tx *bbolt.Tx) error {
				return tx.Bucket([]byte("state")).Delete(firstStateKey(tx))
			},
			problem: "TestStatuses.store.upshift.io(default/m0) is in the replayed log but not in the stored state",
		},
		"log event deleted": {
			tamper: func(tx *bbolt.Tx) error {
				return tx.Bucket([]byte("log")).Delete(binary.BigEndian.AppendUint64(nil, 5))
			},
			problem:   "log sequence jumps from 4 to 6",
			openError: "log sequence jumps from 4 to 6",
		},
		"first event deleted": {
			tamper: func(tx *bbolt.Tx) error {
				return tx.Bucket([]byte("log")).Delete(binary.BigEndian.AppendUint64(nil, 1))
			},
			problem:   "event 2 updates TestStatuses.store.upshift.io(default/m0), which does not exist",
			openError: "log sequence jumps from 0 to 2",
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()

			path := filepath.Join(t.TempDir(), "state.db")
			writeSample(t, path)
			writeBolt(t, path, tc.tamper)

			report, err := store.Verify(path)
			require.NoError(t, err)
			require.False(t, report.Consistent())
			require.Contains(t, report.Problems, tc.problem, "%s", report)
			require.Contains(t, report.String(), "INCONSISTENT")

			s, err := store.Open(path)
			if tc.openError != "" {
				require.ErrorIs(t, err, store.ErrCorrupt)
				require.ErrorContains(t, err, tc.openError)

				return
			}

			require.NoError(t, err)
			require.NoError(t, s.Close())
		})
	}
}
