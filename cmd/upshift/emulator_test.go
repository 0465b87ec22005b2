package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	registeredLine  = regexp.MustCompile(`^registered:\s+(\S+)`)
	talosconfigLine = regexp.MustCompile(`^talosconfig:\s+(\S+)`)
)

// TestEmulatorRegistersIntoServer runs `upshift emulator --lite --register` as a process against `upshift serve`:
// the fleet's clusters and machines appear in the engine, its talosconfig reaches the nodes, and an interrupt stops
// it cleanly. One node starts on its own version (--node-talos).
func TestEmulatorRegistersIntoServer(t *testing.T) {
	server := startServer(t, t.TempDir())
	stateDir := t.TempDir()

	cmd := exec.Command(binary, "emulator", "--lite", "--state-dir", stateDir, "--clusters", "2", "--control-planes", "1",
		"--workers", "2", "--talos", "1.13.4", "--node-talos", "c1-w-2=v1.14.1", "--reboot-downtime", "0s", "--fault", "c2-w-1=api-down:1h", "--register", server.endpoint, "--config", server.to.config)

	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)

	var stderr bytes.Buffer
	cmd.Stderr = &stderr

	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGKILL) //nolint:errcheck // it may have exited already
			_ = cmd.Wait()                          //nolint:errcheck // killed on purpose
		}
	})

	out := readLines(stdout)
	talosconfig := out.waitFor(t, talosconfigLine)[1]
	assert.Equal(t, filepath.Join(stateDir, "talosconfig"), talosconfig)
	assert.Equal(t, server.endpoint, out.waitFor(t, registeredLine)[1])

	machines := mustRun(t, server.to, "get", "machine")
	for _, id := range []string{"c1-cp-1", "c1-w-1", "c1-w-2", "c2-cp-1", "c2-w-1", "c2-w-2"} {
		assert.Contains(t, machines, id)
	}

	clusters := mustRun(t, server.to, "get", "cluster")
	assert.Contains(t, clusters, "c1")
	assert.Contains(t, clusters, "v1.13.4")

	// c1 runs two versions: it is registered wanting the newer one, paused, so nothing starts by itself.
	c1 := mustRun(t, server.to, "get", "cluster", "c1", "-o", "yaml")
	assert.Contains(t, c1, "talosVersion: v1.14.1")
	assert.Contains(t, c1, "paused: true")
	assert.Contains(t, mustRun(t, server.to, "get", "cluster", "c2", "-o", "yaml"), "paused: false")

	c, err := client.New(t.Context(), client.WithConfigFromFile(talosconfig))
	require.NoError(t, err)

	defer c.Close() //nolint:errcheck

	version, err := c.Version(client.WithNode(t.Context(), "c2-cp-1"))
	require.NoError(t, err)
	assert.Equal(t, "v1.13.4", version.GetMessages()[0].GetVersion().GetTag())

	for node, want := range map[string]string{"c1-w-1": "v1.13.4", "c1-w-2": "v1.14.1"} {
		version, err := c.Version(client.WithNode(t.Context(), node))
		require.NoError(t, err)
		assert.Equal(t, want, version.GetMessages()[0].GetVersion().GetTag(), node)
	}

	_, err = c.Version(client.WithNode(context.Background(), "c2-w-1"))
	assert.ErrorContains(t, err, "unreachable", "the node given api-down at start")

	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	require.NoError(t, cmd.Wait(), "emulator exit after SIGINT: %s", stderr.String())
	assert.False(t, strings.Contains(stderr.String(), "panic"), stderr.String())
}
