package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift"
)

// A new user's first run: serve creates its certificates (0600, the same ones after a restart) and installs the
// admin config at the default path, so `upshift get` works with no flag at all; a config already there is left.
func TestServeFirstRunInstallsTheAdminConfig(t *testing.T) {
	t.Parallel()

	home, dataDir := t.TempDir(), t.TempDir()
	env := append(os.Environ(), "XDG_CONFIG_HOME="+home, configEnv+"=", endpointEnv+"=")

	srv := startServerEnv(t, dataDir, env, "--listen", "0.0.0.0:0") // any address: mTLS all the same
	installed := filepath.Join(home, "upshift", "config")

	get := exec.Command(binary, "get", "clusters")
	get.Env = env
	out, err := get.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "NAMESPACE")

	for _, name := range []string{"ca.crt", "ca.key", "server.crt", "server.key", upshift.AdminConfigFileName} {
		info, err := os.Stat(filepath.Join(dataDir, name))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), info.Mode().Perm(), name)
	}

	info, err := os.Stat(installed)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	ca := readFile(t, filepath.Join(dataDir, "ca.crt"))

	srv.kill()
	srv = startServerEnv(t, dataDir, env)
	assert.Equal(t, ca, readFile(t, filepath.Join(dataDir, "ca.crt")), "the CA is kept across restarts")

	// The installed config still works: its endpoint is overridden, its certificate is the same CA's.
	mustRun(t, target{endpoint: srv.endpoint, config: installed}, "get", "clusters")
}

// `config new` issues configs locally on the data dir and over the API (as an admin); a reader's is refused
// what it may not do with a message naming role, verb and type, and cannot issue configs itself.
func TestConfigNewAndRoles(t *testing.T) {
	t.Parallel()

	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	mustRun(t, srv.to, "apply", "-f", "../../examples/cluster.yaml")

	dir := t.TempDir()
	readerCfg, operatorCfg := filepath.Join(dir, "reader"), filepath.Join(dir, "operator")

	out := mustRun(t, target{config: filepath.Join(dir, "unused")}, "config", "new", "--data-dir", dataDir, "--role", "reader", "--name", "rita", "-o", readerCfg)
	assert.Contains(t, out, "client config for rita (role reader) written to "+readerCfg+", endpoint "+srv.endpoint)

	out = mustRun(t, srv.to, "config", "new", "--role", "operator", "--name", "olga", "-o", operatorCfg)
	assert.Contains(t, out, "client config for olga (role operator) written to "+operatorCfg)

	reader := target{endpoint: srv.endpoint, config: readerCfg}
	assert.Contains(t, mustRun(t, reader, "get", "clusters"), "prod")
	mustRun(t, reader, "status", "prod")

	for args, want := range map[string][]string{
		"pause":  {"upgrade", "pause", "prod"},
		"lock":   {"lock", "prod-w-1"},
		"creds":  {"get", "credentials"},
		"config": {"config", "new", "--role", "admin", "--name", "eve", "-o", filepath.Join(dir, "eve")},
	} {
		res := run(t, reader, want...)
		assert.Equal(t, 1, res.exitCode, args)
		assert.Contains(t, res.stderr, "permission denied: rita (role reader) may not ", args)
	}

	res := run(t, reader, "lock", "prod-w-1")
	assert.Equal(t, "error: permission denied: rita (role reader) may not create MachineLocks.upshift.dev: that needs role operator\n", res.stderr)

	operator := target{endpoint: srv.endpoint, config: operatorCfg}
	mustRun(t, operator, "lock", "prod-w-1")
	assert.Contains(t, mustRun(t, operator, "history", "machinelock", "prod-w-1"), "user:olga")

	res = run(t, operator, "apply", "-f", writeFile(t, "metadata: {type: Machine, id: prod-w-9}\nspec: {cluster: prod, role: worker, endpoint: '10.0.0.9:50000'}\n"))
	assert.Contains(t, res.stderr, "olga (role operator) may not create Machines.upshift.dev: that needs role admin")

	// A config of another engine is refused by this one, with a hint.
	other := startServer(t, t.TempDir())
	res = run(t, target{endpoint: srv.endpoint, config: other.to.config}, "get", "clusters")
	assert.Equal(t, 1, res.exitCode)
	assert.Contains(t, res.stderr, "do not trust each other")
}
