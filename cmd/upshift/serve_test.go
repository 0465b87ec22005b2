package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHistoryRetentionFlagValues(t *testing.T) {
	t.Parallel()

	for in, want := range map[string]time.Duration{
		"90d": 90 * 24 * time.Hour, "720h": 720 * time.Hour, "1h30m": 90 * time.Minute, "0": 0, "0d": 0, " 2d ": 48 * time.Hour,
	} {
		var a retentionAge
		if assert.NoError(t, a.Set(in), in) {
			assert.Equal(t, want, time.Duration(a), in)
		}
	}

	for in, want := range map[string]string{
		"3x":   `"3x" is not an age like 720h or 90d (0 for no limit)`,
		"1.5d": `"1.5d" is not an age like 720h or 90d`,
		"-1d":  `"-1d" is not an age`,
		"d":    `"d" is not an age`,
		"-5m":  `"-5m" is negative: an age must be positive (0 for no limit)`,
	} {
		var a retentionAge
		assert.ErrorContains(t, a.Set(in), want, in)
	}

	for in, want := range map[string]uint64{"1000": 1000, "0": 0, "1000000": 1_000_000} {
		var e retentionEvents
		if assert.NoError(t, e.Set(in), in) {
			assert.Equal(t, want, uint64(e), in)
		}
	}

	for _, in := range []string{"-1", "1e6", "many", ""} {
		var e retentionEvents
		assert.ErrorContains(t, e.Set(in), fmt.Sprintf("%q is not a number of events (a whole number, 0 for no limit)", in), in)
	}

	// The defaults print as a user would write them.
	age, events := retentionAge(defaultRetentionAge), retentionEvents(defaultRetentionEvents)
	assert.Equal(t, "365d", age.String())
	assert.Equal(t, "1000000", events.String())
}

// A bad retention stops serve before it opens anything, with the flag and the problem named.
func TestServeRefusesBadHistoryRetention(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct{ flag, value, want string }{
		{"--history-retention-age", "a month", `invalid argument "a month" for "--history-retention-age" flag: "a month" is not an age like 720h or 90d`},
		{"--history-retention-events", "-10", `invalid argument "-10" for "--history-retention-events" flag: "-10" is not a number of events`},
	} {
		cmd := exec.Command(binary, "serve", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", tc.flag, tc.value)

		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr

		require.Error(t, cmd.Run(), tc.flag)
		assert.Equal(t, 1, cmd.ProcessState.ExitCode(), tc.flag)
		assert.Contains(t, stderr.String(), tc.want, tc.flag)
		assert.Empty(t, stdout.String(), tc.flag)
	}
}

// --history-retention-events bounds the log: once a cluster has been written more often than that, its history
// begins after a compacted snapshot, and the cluster itself is intact.
func TestServeHistoryRetentionCompactsTheLog(t *testing.T) {
	t.Parallel()

	srv := startServer(t, t.TempDir(), "--history-retention-events", "5")

	for i := 1; i <= 15; i++ {
		mustRun(t, srv.to, "apply", "-f", writeFile(t, goodCluster+fmt.Sprintf("  parallelism: \"%d\"\n", i)))
	}

	// Compaction runs in the background after commits and has no event to watch: look again, briefly, until it
	// shows or the wait times out.
	deadline := time.Now().Add(waitTimeout)

	var out string

	for {
		out = mustRun(t, srv.to, "history", "cluster", "good")
		if strings.Contains(out, "were compacted into a snapshot") || time.Now().After(deadline) {
			break
		}

		time.Sleep(50 * time.Millisecond)
	}

	assert.Contains(t, out, "were compacted into a snapshot", out)
	assert.NotContains(t, out, " created ", "the creation is older than the 5 newest events")
	assert.Equal(t, "15", tableRow(t, mustRun(t, srv.to, "get", "clusters"), "good")["PARALLELISM"])
}
