package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/conformance"
	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/state/store"
)

// runStateVerify runs `upshift state verify --data-dir dir` through the real command tree. Not parallel: rootCmd
// is shared.
func runStateVerify(t *testing.T, dir string) (string, error) {
	t.Helper()

	var out bytes.Buffer

	rootCmd.SetOut(&out)
	rootCmd.SetArgs([]string{"state", "verify", "--data-dir", dir})

	t.Cleanup(func() {
		rootCmd.SetOut(nil)
		rootCmd.SetArgs(nil)
	})

	err := rootCmd.Execute()

	return out.String(), err
}

func TestStateVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, upshift.StateFileName)

	s, err := store.Open(path)
	require.NoError(t, err)

	st := state.WrapCore(s.State())
	r := conformance.NewPathResource("default", "var/run")
	require.NoError(t, st.Create(context.Background(), r))
	require.NoError(t, st.Update(context.Background(), r))
	require.NoError(t, s.Close())

	out, err := runStateVerify(t, dir)
	require.NoError(t, err)
	require.Contains(t, out, "1 resources")
	require.Contains(t, out, "2 events retained")
	require.Contains(t, out, "consistent")

	// Lose the stored state behind the log's back: verify must say so and fail.
	db, err := bbolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket([]byte("state")).Cursor().First()

		return tx.Bucket([]byte("state")).Delete(k)
	}))
	require.NoError(t, db.Close())

	out, err = runStateVerify(t, dir)
	require.ErrorIs(t, err, errInconsistent)
	require.Contains(t, out, "INCONSISTENT")
	require.Contains(t, out, "os/path(default/var/run) is in the replayed log but not in the stored state")

	_, err = runStateVerify(t, filepath.Join(dir, "missing"))
	require.ErrorContains(t, err, "no such file")
}
