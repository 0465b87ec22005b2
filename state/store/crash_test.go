package store_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/state/store"
)

// The crash test re-executes this test binary as a child writer; these variables switch it into that role.
const (
	envCrashChild  = "UPSHIFT_STORE_CRASH_CHILD"
	envCrashPrefix = "UPSHIFT_STORE_CRASH_PREFIX"
	crashWriters   = 8
	crashLastVer   = 5 // each resource: created (v1), updated to v5, destroyed
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envCrashChild); path != "" {
		crashChild(path, os.Getenv(envCrashPrefix))
	}

	os.Exit(m.Run())
}

// crashChild writes resources from several goroutines until it is killed, printing every acknowledged write as
// "id version" or "id destroyed" with one write(2) each, so no line is ever torn.
func crashChild(path, prefix string) {
	s, err := store.Open(path, store.WithRetention(store.Retention{MaxEvents: 200}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}

	st := state.WrapCore(s.State())
	ctx := context.Background()

	var mu sync.Mutex

	ack := func(line string) {
		mu.Lock()
		defer mu.Unlock()

		if _, err := os.Stdout.WriteString(line + "\n"); err != nil {
			os.Exit(3)
		}
	}

	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(4)
	}

	for g := range crashWriters {
		go func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("%s-g%d-r%d", prefix, g, i)
				r := newStatus("default", id)

				if err := st.Create(ctx, r); err != nil {
					fail(err)
				}

				ack(id + " 1")

				for v := 2; v <= crashLastVer; v++ {
					r.TypedSpec().Attempt = v
					if err := st.Update(ctx, r); err != nil {
						fail(err)
					}

					ack(fmt.Sprintf("%s %d", id, v))
				}

				if err := st.Destroy(ctx, r.Metadata()); err != nil {
					fail(err)
				}

				ack(id + " destroyed")
			}
		}()
	}

	select {}
}

// TestCrashAcknowledgedWritesSurviveSIGKILL kills a writing child process at a random moment, 20 times on the
// same file, and checks after each kill that every acknowledged write is there and the log replays to the state.
func TestCrashAcknowledgedWritesSurviveSIGKILL(t *testing.T) {
	t.Parallel()

	path := filepath.Join(t.TempDir(), "state.db")
	ctx := context.Background()

	var report store.Report

	for iteration := range 20 {
		acked := runCrashChild(t, path, fmt.Sprintf("it%d", iteration), rand.IntN(400))

		s, err := store.Open(path)
		require.NoError(t, err, "iteration %d", iteration)

		for id, last := range acked {
			res, err := s.State().Get(ctx, resource.NewMetadata("default", statusType, id, resource.VersionUndefined))

			switch {
			case last == "destroyed":
				require.True(t, state.IsNotFoundError(err), "iteration %d: %s was destroyed (acknowledged) but is back: %v", iteration, id, err)
			case state.IsNotFoundError(err):
				// a destroy may have become durable without its acknowledgement reaching us, but only after the last update
				require.Equal(t, strconv.Itoa(crashLastVer), last, "iteration %d: %s acknowledged at version %s is missing", iteration, id, last)
			default:
				require.NoError(t, err)

				want, _ := strconv.ParseUint(last, 10, 64)
				require.GreaterOrEqual(t, res.Metadata().Version().Value(), want, "iteration %d: %s lost acknowledged version %d", iteration, id, want)
			}
		}

		require.NoError(t, s.Close())

		report, err = store.Verify(path)
		require.NoError(t, err)
		require.True(t, report.Consistent(), "iteration %d: %s", iteration, report)
	}

	// The child keeps 200 events, so by now compaction ran (and was killed) many times.
	require.Greater(t, report.FirstSeq, uint64(1), "compaction never ran: %s", report)
}

// runCrashChild starts a child writer, SIGKILLs it once it has acknowledged killAfter writes (0: right after
// start, possibly while it opens the file) and returns the last acknowledged state of each resource.
func runCrashChild(t *testing.T, path, prefix string, killAfter int) map[string]string {
	t.Helper()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashChild+"="+path, envCrashPrefix+"="+prefix)

	var stderr strings.Builder

	cmd.Stderr = &stderr

	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	kill := func() { _ = cmd.Process.Signal(syscall.SIGKILL) } //nolint:errcheck // it may have died already

	if killAfter == 0 {
		kill()
	}

	acked := map[string]string{}
	scanner := bufio.NewScanner(stdout)

	for n := 1; scanner.Scan(); n++ {
		id, what, ok := strings.Cut(scanner.Text(), " ")
		require.True(t, ok, "torn acknowledgement line %q", scanner.Text())

		acked[id] = what

		if n == killAfter {
			kill()
		}
	}

	err = cmd.Wait()

	var exitErr *exec.ExitError

	require.True(t, errors.As(err, &exitErr), "child ended without being killed: %v; stderr: %s", err, stderr.String())

	ws, ok := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child did not die of SIGKILL: %v; stderr: %s", err, stderr.String())

	return acked
}
