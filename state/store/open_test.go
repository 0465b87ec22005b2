package store_test

import (
	"bufio"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"

	"github.com/upshift-io/upshift/state/store"
)

func TestOpenLockedInProcess(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")

	s, err := store.Open(path)
	require.NoError(t, err)

	defer s.Close() //nolint:errcheck

	const timeout = 200 * time.Millisecond

	start := time.Now()
	_, err = store.Open(path, store.WithOpenTimeout(timeout))
	require.ErrorIs(t, err, store.ErrLocked)
	require.ErrorContains(t, err, path)
	require.Less(t, time.Since(start), 10*timeout, "the second opener must give up after about the timeout")

	_, err = store.Verify(path, store.WithOpenTimeout(timeout))
	require.ErrorIs(t, err, store.ErrLocked, "verify must not read a file a live server is writing")
}

// TestOpenLockedByAnotherProcess holds the file in a real child process (the crash child) and opens it here.
func TestOpenLockedByAnotherProcess(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashChild+"="+path, envCrashPrefix+"=locked")

	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL) //nolint:errcheck
		_ = cmd.Wait()                          //nolint:errcheck
	})

	// The first acknowledged write proves the child holds the file.
	require.True(t, bufio.NewScanner(stdout).Scan(), "child wrote nothing")

	_, err = store.Open(path, store.WithOpenTimeout(300*time.Millisecond))
	require.ErrorIs(t, err, store.ErrLocked)
	require.ErrorContains(t, err, path)
}

func TestOpenRefusesCorruptFile(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")
	garbage := make([]byte, 64<<10)
	_, _ = rand.Read(garbage) //nolint:errcheck // never fails
	require.NoError(t, os.WriteFile(path, garbage, 0o600))

	requireRefused(t, path, store.ErrCorrupt)
}

// requireRefused checks that Open and Verify both refuse the file with want, naming it, and leave it untouched.
func requireRefused(t *testing.T, path string, want error) {
	t.Helper()

	before, err := os.ReadFile(path)
	require.NoError(t, err)

	_, err = store.Open(path)
	require.ErrorIs(t, err, want)
	require.ErrorContains(t, err, path)

	_, err = store.Verify(path)
	require.ErrorIs(t, err, want)

	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "a refused file must never be modified")
}

func TestOpenRefusesForeignFile(t *testing.T) {
	t.Parallel()

	for name, prepare := range map[string]func(tx *bbolt.Tx) error{
		"other buckets": func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucket([]byte("default"))
			if err != nil {
				return err
			}

			return b.Put([]byte("k"), []byte("v"))
		},
		"wrong magic": func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucket([]byte("meta"))
			if err != nil {
				return err
			}

			return b.Put([]byte("magic"), []byte("someone-else"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()

			path := filepath.Join(t.TempDir(), "state.db")
			writeBolt(t, path, prepare)
			requireRefused(t, path, store.ErrForeign)
		})
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")

	s, err := store.Open(path)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	writeBolt(t, path, func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte{0, 0, 0, 0, 0, 0, 0, 99})
	})

	_, err = store.Open(path)
	require.ErrorContains(t, err, "schema version 99 is newer")
}

func TestVerifyMissingFile(t *testing.T) {
	t.Parallel()

	_, err := store.Verify(filepath.Join(t.TempDir(), "nope.db"))
	require.True(t, errors.Is(err, os.ErrNotExist), "got %v", err)
}

// writeBolt edits a bbolt file directly, the way a foreign program or a bug would.
func writeBolt(t *testing.T, path string, fn func(tx *bbolt.Tx) error) {
	t.Helper()

	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, db.Update(fn))
	require.NoError(t, db.Close())
}
