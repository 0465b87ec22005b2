package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/store"
)

// TestFaultCorruptStateRefusedAtStart runs an upgrade on a lite bed, stops the engine, damages one page of its
// state file that holds live data, and starts the engine again, in process and as `upshift serve`: both refuse
// with a message naming the file and saying it is corrupt, and the file's bytes are the damaged bytes, untouched.
func TestFaultCorruptStateRefusedAtStart(t *testing.T) {
	bed := startLiteBed(t, 1, 1, "1.13.4")
	setCluster(t, bed.State(), "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v1.14.1" })
	waitTalos(t, bed.State(), "c1", 2*time.Minute, "the upgrade to finish", phaseIs(upgrade.PhaseDone, "1.14.1"))
	require.NoError(t, bed.StopEngine())

	path := filepath.Join(bed.EngineDir(), "state.db")
	damaged := damageLivePage(t, path)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	err := bed.StartEngine(ctx)
	require.ErrorIs(t, err, store.ErrCorrupt)
	require.ErrorContains(t, err, path)

	var stdout, stderr bytes.Buffer

	cmd := exec.CommandContext(ctx, binary, "serve", "--data-dir", bed.EngineDir(), "--listen", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.Error(t, cmd.Run(), "serve must refuse a corrupt state file: %s", stdout.String())
	require.Contains(t, stderr.String(), "state file is corrupt")
	require.Contains(t, stderr.String(), path)
	require.NotContains(t, stderr.String(), "goroutine ", "a refusal, not a crash")

	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(damaged, after), "the corrupt file must never be overwritten")
}

// damageLivePage flips the header of the first page whose damage the store's verifier notices (a page holding
// live data, not free space), writes the damaged file in place and returns its bytes.
func damageLivePage(t *testing.T, path string) []byte {
	t.Helper()

	good, err := os.ReadFile(path)
	require.NoError(t, err)

	const pageSize = 4096

	probe := filepath.Join(t.TempDir(), "probe.db")

	for page := 2; page < len(good)/pageSize; page++ {
		damaged := append([]byte(nil), good...)
		for i := range 16 {
			damaged[page*pageSize+i] ^= 0xff
		}

		require.NoError(t, os.WriteFile(probe, damaged, 0o600))

		if _, err := store.Verify(probe); err != nil {
			require.NoError(t, os.WriteFile(path, damaged, 0o600))

			return damaged
		}
	}

	require.FailNow(t, "no page of the state file holds live data")

	return nil
}
