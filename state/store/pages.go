package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"
)

// openBolt is bbolt.Open with its panics (bbolt asserts on pages it cannot make sense of) turned into ErrCorrupt.
// checkPages runs first and finds most of what those assertions would; should one still fire, the file bbolt
// opened is closed here, since bbolt never hands it back (its memory map, and with it the file's lock, stays with
// the process, which refuses the file and exits).
func openBolt(path string, opts *bbolt.Options) (db *bbolt.DB, err error) {
	var file *os.File

	opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, openErr := os.OpenFile(name, flag, perm)
		file = f

		return f, openErr //nolint:wrapcheck // bbolt wraps it
	}

	defer func() {
		if p := recover(); p != nil {
			if file != nil {
				_ = file.Close() //nolint:errcheck // the open failed already
			}

			db, err = nil, fmt.Errorf("%w: reading pages: %v", ErrCorrupt, p)
		}
	}()

	return bbolt.Open(path, 0o600, opts)
}

// checkPages reads every page reachable from the file's root, read-only, in this goroutine, so that a corrupt
// page is found where its panic can be recovered; a missing or empty file (a first start) has nothing to check.
// The file is never written.
func checkPages(path string, timeout time.Duration) error {
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && info.Size() == 0) {
		return nil
	}

	db, err := openDB(path, timeout, true)
	if err != nil {
		return err
	}

	defer db.Close() //nolint:errcheck // read-only

	err = db.View(func(tx *bbolt.Tx) (err error) {
		// A page pointer past the end of the file faults instead of panicking.
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: reading pages: %v", ErrCorrupt, p)
			}
		}()

		if err = tx.ForEach(func(_ []byte, b *bbolt.Bucket) error { return walkBucket(b) }); err != nil {
			return err
		}

		return nil
	})
	if err != nil {
		return fmt.Errorf("opening state %q: %w (the file is left as it is; `upshift state verify` reads what it can)", path, err)
	}

	return nil
}

// walkBucket visits every key of a bucket and of the buckets nested in it, which reads each of their pages, and
// checks that the keys come in order (the free-list rebuild asserts it, tx.Check races with itself on a read-only
// file). bbolt's remaining assertion, a page reachable twice, still panics in openBolt, after this check.
func walkBucket(b *bbolt.Bucket) error {
	var last []byte

	return b.ForEach(func(k, v []byte) error {
		if last != nil && bytes.Compare(k, last) <= 0 {
			return fmt.Errorf("%w: key %x after %x: keys out of order", ErrCorrupt, k, last)
		}

		last = k

		if v != nil {
			return nil
		}

		if nested := b.Bucket(k); nested != nil {
			return walkBucket(nested)
		}

		return nil
	})
}
