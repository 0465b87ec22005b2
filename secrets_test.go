package upshift_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/state/store"
)

func newEngine(t *testing.T, dir string, opts ...upshift.Option) error {
	t.Helper()

	e, err := upshift.New(append([]upshift.Option{upshift.WithDataDir(dir), upshift.WithListenAddress("")}, opts...)...)
	if err != nil {
		return err
	}

	return e.Close()
}

// The first start creates the key file, owner-only; later starts read it; a state whose key file is lost, or
// shown to others, is refused with a message that says what to do, and no new key is left behind.
func TestKeyFile(t *testing.T) {
	t.Parallel()

	dir := t.TempDir()
	keyPath := filepath.Join(dir, upshift.KeyFileName)

	require.NoError(t, newEngine(t, dir))

	info, err := os.Stat(keyPath)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	require.Equal(t, int64(store.KeySize), info.Size())

	key, err := os.ReadFile(keyPath)
	require.NoError(t, err)

	require.NoError(t, newEngine(t, dir), "a restart reads the key file")

	require.NoError(t, os.Chmod(keyPath, 0o644))
	require.ErrorContains(t, newEngine(t, dir), "chmod 600")
	require.NoError(t, os.Chmod(keyPath, 0o600))

	require.NoError(t, os.Remove(keyPath))
	err = newEngine(t, dir)
	require.ErrorIs(t, err, store.ErrWrongKey)
	require.ErrorContains(t, err, "is missing")
	require.NoFileExists(t, keyPath, "no stray key is left for the next start to trip on")

	err = newEngine(t, dir, upshift.WithEncryptionKey(bytes.Repeat([]byte{1}, store.KeySize)))
	require.ErrorIs(t, err, store.ErrWrongKey)

	require.NoError(t, newEngine(t, dir, upshift.WithEncryptionKey(key)), "the embedder may give the key itself")
	require.NoFileExists(t, keyPath, "a given key is never written to the data dir")
}
