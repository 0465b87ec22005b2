package upshift

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/upshift-io/upshift/state/store"
)

// KeyFileName is the file in the data dir holding the key that encrypts secrets at rest (the resources of
// sensitive types, such as Credentials), unless the embedding program gives the key with WithEncryptionKey. New
// creates it, readable by its owner only, on the first start. Losing it loses the secrets: the state is refused
// without it.
const KeyFileName = "state.key"

// WithEncryptionKey gives the engine the key (store.KeySize bytes) that encrypts secrets at rest, for an embedding
// program that keeps its keys elsewhere (a KMS, a secret store); no key file is then read or written. The state
// is bound to the key it is first opened with and refused with any other.
func WithEncryptionKey(key []byte) Option {
	return func(o *engineOptions) {
		o.encryptionKey = key
	}
}

// openStore opens the state in the data dir with its encryption key: the embedder's, else the key file, created on
// the first start. A key file created here for a state that turns out to be bound to another key is removed again,
// so the error names the missing key rather than leaving a useless one behind.
func openStore(o engineOptions) (*store.Store, error) {
	path := filepath.Join(o.dataDir, StateFileName)

	key, keyPath, created, err := engineKey(o)
	if err != nil {
		return nil, err
	}

	st, err := store.Open(path, append([]store.Option{store.WithLogger(o.logger), store.WithEncryptionKey(key)}, o.storeOptions...)...)

	switch {
	case err == nil:
		return st, nil
	case created && errors.Is(err, store.ErrWrongKey):
		return nil, errors.Join(fmt.Errorf("%w: its key file %s is missing; restore it from where the data dir was backed up", err, keyPath), os.Remove(keyPath))
	case o.encryptionKey == nil && errors.Is(err, store.ErrWrongKey):
		return nil, fmt.Errorf("%w (the key read from %s)", err, keyPath)
	default:
		return nil, err
	}
}

// engineKey is the key that encrypts the state's secrets: the embedder's, else the data dir's key file (its path
// returned), created on the first start (created reports that).
func engineKey(o engineOptions) (key []byte, keyPath string, created bool, err error) {
	keyPath = filepath.Join(o.dataDir, KeyFileName)

	if o.encryptionKey != nil {
		return o.encryptionKey, keyPath, false, nil
	}

	key, created, err = loadOrCreateKey(keyPath)

	return key, keyPath, created, err
}

// openEtcdStore opens the state in etcd with the replicas' shared encryption key: the embedder's, else the data
// dir's key file. The first replica creates the key file; a key file created for a state in etcd that is bound to
// another key is removed again, and the error says to copy the first replica's.
func openEtcdStore(o engineOptions) (*store.EtcdStore, error) {
	key, keyPath, created, err := engineKey(o)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	st, err := store.OpenEtcd(ctx, o.etcd.client, append([]store.Option{store.WithLogger(o.logger), store.WithEncryptionKey(key)}, o.storeOptions...)...)

	switch {
	case err == nil:
		return st, nil
	case created && errors.Is(err, store.ErrWrongKey):
		return nil, errors.Join(fmt.Errorf("%w: every replica needs the key of the first one: copy its data dir's %s to %s", err, KeyFileName, keyPath), os.Remove(keyPath))
	default:
		return nil, err
	}
}

// loadOrCreateKey reads the key file, or creates it with a new random key (owner-only, synced with its directory
// before any state is encrypted with it). A key file others may read is refused, as ssh refuses such a private key.
func loadOrCreateKey(path string) (key []byte, created bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err = createKey(path)

		return key, err == nil, err
	}

	if err != nil {
		return nil, false, fmt.Errorf("reading the encryption key: %w", err)
	}

	defer f.Close() //nolint:errcheck // read only

	info, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("reading the encryption key: %w", err)
	}

	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, false, fmt.Errorf("the encryption key %s has mode %04o: others may read it; make it readable by its owner only (chmod 600 %s)", path, perm, path)
	}

	key, err = io.ReadAll(io.LimitReader(f, store.KeySize+1))
	if err != nil {
		return nil, false, fmt.Errorf("reading the encryption key %s: %w", path, err)
	}

	if len(key) != store.KeySize {
		return nil, false, fmt.Errorf("the encryption key %s is not %d bytes long: it was not written by upshift", path, store.KeySize)
	}

	return key, false, nil
}

func createKey(path string) ([]byte, error) {
	key := make([]byte, store.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("creating the encryption key: %w", err)
	}

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the encryption key: %w", err)
	}

	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}

	if closeErr := f.Close(); err == nil {
		err = closeErr
	}

	if err == nil {
		err = syncDir(filepath.Dir(path))
	}

	if err != nil {
		return nil, errors.Join(fmt.Errorf("creating the encryption key %s: %w", path, err), os.Remove(path))
	}

	return key, nil
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}

	return errors.Join(d.Sync(), d.Close())
}
