package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/conformance"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/tmpfs"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory for the test's life (tmpfs.MountForTest).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()

	dir := t.TempDir()
	tmpfs.MountForTest(t, dir, size)

	return dir
}

// waitFull waits until a commit has found the device full.
func (s *Store) waitFull(ctx context.Context) error {
	for {
		s.mu.Lock()
		full, ch := s.full, s.durableCh
		s.mu.Unlock()

		if full != nil {
			return full
		}

		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the device to be full: %w", ctx.Err())
		}
	}
}

// TestDiskFullRefusesWritesThenResumes fills a real (tmpfs) device under the store: the write that found it full
// waits, unacknowledged; new writes fail at once with ErrDiskFull naming the file; reads of what is on disk are
// served, reads that would show the kept write are refused; once space is freed the kept write commits by itself,
// writes resume, and after a reopen every acknowledged write is there.
func TestDiskFullRefusesWritesThenResumes(t *testing.T) {
	dir := mountTmpfs(t, 4<<20)

	filler := filepath.Join(dir, "filler")
	require.NoError(t, os.WriteFile(filler, make([]byte, 3<<20), 0o600))

	path := filepath.Join(dir, "state.db")

	s, err := Open(path, WithFullRetryInterval(20*time.Millisecond))
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	st := state.WrapCore(s.State())
	other := conformance.NewPathResource("other", "on-disk")
	require.NoError(t, st.Create(ctx, other))

	// One writer of 8 KiB resources until the device is full; its last write is the one the full device keeps.
	var (
		stop  atomic.Bool
		acked []string
		done  = make(chan error, 1)
	)

	go func() {
		for i := 0; !stop.Load(); i++ {
			res := conformance.NewPathResource("default", fmt.Sprintf("r%d", i))
			res.Metadata().Labels().Set("payload", strings.Repeat("x", 8<<10))

			if err := st.Create(ctx, res); err != nil {
				done <- err

				return
			}

			acked = append(acked, res.Metadata().ID())
		}

		done <- nil
	}()

	full := s.waitFull(ctx)
	require.ErrorIs(t, full, ErrDiskFull)
	require.ErrorIs(t, full, syscall.ENOSPC)
	stop.Store(true)

	err = st.Create(ctx, conformance.NewPathResource("third", "refused"))
	require.ErrorIs(t, err, ErrDiskFull, "a new write is refused at once")
	require.ErrorContains(t, err, path)
	require.ErrorContains(t, err, "refused until space is freed")

	got, err := st.Get(ctx, other.Metadata())
	require.NoError(t, err, "what is on disk is still served")
	require.Equal(t, other.Metadata().ID(), got.Metadata().ID())

	_, err = st.List(ctx, conformance.NewPathResource("default", "").Metadata())
	require.ErrorIs(t, err, ErrDiskFull, "a read that would show the kept write is refused")

	require.NoError(t, os.Remove(filler))

	select {
	case err = <-done:
		require.NoError(t, err, "the kept write commits once space is freed")
	case <-ctx.Done():
		require.FailNow(t, "the kept write never committed after space was freed")
	}

	require.NoError(t, st.Create(ctx, conformance.NewPathResource("third", "after")), "writes resume")
	require.NoError(t, s.Close())

	reopened, err := Open(path)
	require.NoError(t, err)

	defer reopened.Close() //nolint:errcheck

	rst := state.WrapCore(reopened.State())
	for _, id := range acked {
		_, err := rst.Get(ctx, conformance.NewPathResource("default", id).Metadata())
		require.NoError(t, err, "acknowledged write %s lost", id)
	}

	t.Logf("%d writes acknowledged before the device filled, all there after a reopen", len(acked))
	require.NotEmpty(t, acked)
}
