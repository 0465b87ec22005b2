package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/internal/etcdcluster"
)

// Two `upshift serve --state etcd` replicas on a real three-member etcd cluster: the second one is refused until it
// has the first one's key; then a write through either is read through the other, its history is the same, and
// status on the one that does not lead names the leader.
func TestServeReplicasOnEtcd(t *testing.T) {
	t.Parallel()

	etcd, err := etcdcluster.Start(t.TempDir(), 3, nil)
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, etcd.Close()) })

	endpoints := strings.Join(etcd.Endpoints(), ",")
	first, second := t.TempDir(), t.TempDir()

	r1 := startServer(t, first, "--state", "etcd", "--etcd-endpoints", endpoints, "--replica-name", "r1")

	// Without the first replica's key the second is refused, and told what to do; it leaves no key file behind.
	refused := exec.Command(binary, "serve", "--data-dir", second, "--listen", "127.0.0.1:0", "--state", "etcd", "--etcd-endpoints", endpoints)

	var stderr bytes.Buffer
	refused.Stderr = &stderr

	require.Error(t, refused.Run())
	assert.Contains(t, stderr.String(), "every replica needs the key of the first one: copy its data dir's state.key")
	assert.NoFileExists(t, filepath.Join(second, upshift.KeyFileName))

	for _, name := range []string{upshift.KeyFileName, "ca.crt", "ca.key"} {
		data, err := os.ReadFile(filepath.Join(first, name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(second, name), data, 0o600))
	}

	r2 := startServer(t, second, "--state", "etcd", "--etcd-endpoints", endpoints, "--replica-name", "r2")

	// One admin config (the shared CA) reaches both.
	r2.to.config = r1.to.config

	mustRun(t, r2.to, "apply", "-f", writeFile(t, goodCluster))
	assert.Equal(t, "v1.14.1", tableRow(t, mustRun(t, r1.to, "get", "clusters"), "good")["TALOS"])

	history := mustRun(t, r1.to, "history", "cluster", "good")
	assert.Contains(t, history, "created")
	assert.Contains(t, history, "user:admin")
	assert.Equal(t, history, mustRun(t, r2.to, "history", "cluster", "good"))

	assert.Contains(t, mustRun(t, r2.to, "status", "good"), "engine: replica r1 leads (asked r2)")
	assert.Contains(t, mustRun(t, r1.to, "status", "good"), "engine: replica r1 leads (the one asked)")
}

// The state flags are checked before anything is opened.
func TestServeRefusesBadStateFlags(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--state", "etcd"}, "--state etcd needs --etcd-endpoints"},
		{[]string{"--etcd-endpoints", "http://127.0.0.1:1"}, "--etcd-endpoints needs --state etcd"},
		{[]string{"--state", "zookeeper"}, `--state "zookeeper": want bbolt or etcd`},
		{[]string{"--state", "etcd", "--etcd-endpoints", "https://127.0.0.1:1", "--etcd-cert", "c.pem"}, "--etcd-cert and --etcd-key go together"},
	} {
		dir := t.TempDir()
		cmd := exec.Command(binary, append([]string{"serve", "--data-dir", dir, "--listen", "127.0.0.1:0"}, tc.flags...)...)

		var stderr bytes.Buffer
		cmd.Stderr = &stderr

		require.Error(t, cmd.Run(), tc.flags)
		assert.Contains(t, stderr.String(), tc.want, tc.flags)
		assert.NoFileExists(t, filepath.Join(dir, upshift.StateFileName), tc.flags)
	}
}
