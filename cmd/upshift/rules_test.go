package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refused runs a client command that the engine must refuse: non-zero exit, nothing on stdout, every one of want
// in the error.
func refused(t *testing.T, to target, want []string, args ...string) {
	t.Helper()

	res := run(t, to, args...)
	assert.NotEqual(t, 0, res.exitCode, "upshift %v was not refused", args)
	assert.Empty(t, res.stdout, args)

	for _, w := range want {
		assert.Contains(t, res.stderr, w, args)
	}
}

// historyLen is how many events the event log holds for one resource.
func historyLen(t *testing.T, to target, typ, id string) int {
	t.Helper()

	return len(strings.Split(strings.TrimSpace(mustRun(t, to, "history", typ, id)), "\n")) - 2 // comment and header
}

// The input rules of issue 13 through the CLI: names, versions the engine knows, deletes of a cluster with machines
// and of outputs; each refusal names the field and writes nothing.
func TestCLIInputRules(t *testing.T) {
	t.Parallel()

	srv := startServer(t, t.TempDir(), "--kubernetes-release", "v1.38.0")
	mustRun(t, srv.to, "apply", "-f", "../../examples/cluster.yaml")

	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"cluster name", "metadata: {type: Cluster, id: Bad Name/x}\nspec: {talosVersion: v1.14.1, kubernetesVersion: v1.37.2}\n",
			[]string{`Cluster "Bad Name/x" is invalid: metadata.id: "Bad Name/x" is not a valid name`}},
		{"machine name", "metadata: {type: Machine, id: prod_w_9}\nspec: {cluster: prod, role: worker, endpoint: '192.0.2.29:50000'}\n",
			[]string{`Machine "prod_w_9" is invalid: metadata.id: "prod_w_9" is not a valid name`}},
		{"config patch name", "metadata: {type: ConfigPatch, id: 'ntp servers'}\nspec: {cluster: prod, patch: 'machine: {}'}\n",
			[]string{`ConfigPatch "ntp servers" is invalid: metadata.id`}},
		{"unknown Kubernetes version", "metadata: {type: Cluster, id: next}\nspec: {talosVersion: v1.14.1, kubernetesVersion: v1.99.0}\n",
			[]string{`spec.kubernetesVersion: "v1.99.0" is not a version the engine knows (known: v1.32.11,`, "v1.38.0)", "upshift serve --kubernetes-release VERSION"}},
		{"unknown Talos version", "metadata: {type: Cluster, id: next}\nspec: {talosVersion: v1.14.9, kubernetesVersion: v1.37.2}\n",
			[]string{`spec.talosVersion: "v1.14.9" is not a version the engine knows (known: v1.10.0,`, "upshift serve --talos-release VERSION"}},
		{"unknown version of an existing cluster", strings.Replace(readFile(t, "../../examples/cluster.yaml"), "v1.37.2", "v1.36.0", 1),
			[]string{`Cluster "prod" is invalid: spec.kubernetesVersion: "v1.36.0" is not a version the engine knows`}},
		{"a file with one unknown version is refused whole", "metadata: {type: Cluster, id: fine}\nspec: {talosVersion: v1.14.1, kubernetesVersion: v1.37.2}\n" +
			"---\nmetadata: {type: Cluster, id: next}\nspec: {talosVersion: v1.14.1, kubernetesVersion: v1.99.0}\n",
			[]string{"nothing was applied", `spec.kubernetesVersion: "v1.99.0" is not a version the engine knows`}},
	} {
		refused(t, srv.to, tc.want, "apply", "-f", writeFile(t, tc.file))
	}

	// A release the server was told about is admitted.
	mustRun(t, srv.to, "apply", "-f", writeFile(t, "metadata: {type: Cluster, id: next}\nspec: {talosVersion: v1.14.1, kubernetesVersion: v1.38.0}\n"))

	refused(t, srv.to, []string{`Cluster "prod" cannot be deleted: metadata.id: cluster "prod" still has 6 machines (prod-cp-1,`, "delete them first"},
		"delete", "cluster", "prod")
	refused(t, srv.to, []string{"ClusterSummary is an output of the engine", "cannot be deleted"}, "delete", "summary", "prod")
	refused(t, srv.to, []string{`Cluster "nope" not found`}, "delete", "cluster", "nope")

	// Nothing above was written: prod as it was created, in one event; none of the refused names exists.
	assert.Equal(t, 1, historyLen(t, srv.to, "cluster", "prod"))
	assert.Equal(t, "v1.37.2", tableRow(t, mustRun(t, srv.to, "get", "cluster", "prod"), "prod")["KUBERNETES"])
	assert.Equal(t, 6, strings.Count(mustRun(t, srv.to, "get", "machines"), "prod-"))

	for typ, id := range map[string]string{"cluster": "Bad Name/x", "machine": "prod_w_9", "configpatch": "ntp servers", "clusters": "fine"} {
		assert.Equal(t, 1, run(t, srv.to, "get", typ, id).exitCode, typ+" "+id)
	}

	// Deleting goes in order: a machine, then, once its last machine is gone, the cluster.
	assert.Equal(t, "machine/prod-w-3 deleted\n", mustRun(t, srv.to, "delete", "machine", "prod-w-3"))
	assert.Equal(t, "cluster/next deleted\n", mustRun(t, srv.to, "delete", "cluster", "next"))
}

// A machine in the middle of an upgrade step can neither be deleted nor moved to another cluster; the refusal says
// which step, and nothing is written.
func TestCLIMachineMidUpgrade(t *testing.T) {
	t.Parallel()

	srv := startServer(t, t.TempDir())

	// The control plane never comes back from its reboot: its upgrade stays at WaitingReady.
	emulator := exec.Command(binary, "emulator", "--lite", "--state-dir", t.TempDir(), "--clusters", "1", "--control-planes", "1",
		"--workers", "1", "--talos", "1.13.4", "--reboot-downtime", "0s", "--fault", "c1-cp-1=no-return",
		"--register", srv.endpoint, "--config", srv.to.config)
	stdout, err := emulator.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, emulator.Start())
	t.Cleanup(func() {
		_ = emulator.Process.Signal(syscall.SIGKILL) //nolint:errcheck // it may have exited already
		_ = emulator.Wait()                          //nolint:errcheck // killed on purpose
	})
	readLines(stdout).waitFor(t, registeredLine)

	mustRun(t, srv.to, "apply", "-f", writeFile(t, "metadata: {type: Cluster, id: other}\nspec: {talosVersion: v1.13.4, kubernetesVersion: v1.34.3}\n"))

	watch := startWatch(t, srv.to, "get", "machineupgradestatus", "c1-cp-1", "-w")
	mustRun(t, srv.to, "upgrade", "talos", "c1", "--to", "v1.14.1")
	watch.waitFor(t, regexp.MustCompile(`\sWaitingReady\s`))

	before := historyLen(t, srv.to, "machine", "c1-cp-1")

	refused(t, srv.to, []string{`Machine "c1-cp-1" cannot be deleted: metadata.id: machine "c1-cp-1" is in the middle of an upgrade step: ` +
		`its Talos upgrade to v1.14.1 is at step WaitingReady`}, "delete", "machine", "c1-cp-1")

	moved := regexp.MustCompile(`(?m)^  cluster: c1$`).ReplaceAllString(mustRun(t, srv.to, "get", "machine", "c1-cp-1", "-o", "yaml"), "  cluster: other")
	require.Contains(t, moved, "  cluster: other")
	refused(t, srv.to, []string{`spec.cluster: cannot change from "c1" to "other" while an upgrade of the machine runs: ` +
		`its Talos upgrade to v1.14.1 is at step WaitingReady`}, "apply", "-f", writeFile(t, moved))

	refused(t, srv.to, []string{`cluster "c1" still has 2 machines`}, "delete", "cluster", "c1")

	assert.Equal(t, before, historyLen(t, srv.to, "machine", "c1-cp-1"), "nothing written")
	assert.Equal(t, "c1", tableRow(t, mustRun(t, srv.to, "get", "machine", "c1-cp-1"), "c1-cp-1")["CLUSTER"])
}

// `upshift version` shows the client's version and the server's, which any role may read.
func TestCLIVersion(t *testing.T) {
	t.Parallel()

	srv := startServer(t, t.TempDir())
	reader := target{endpoint: srv.endpoint, config: filepath.Join(t.TempDir(), "reader.upshiftconfig")}
	mustRun(t, srv.to, "config", "new", "--role", "reader", "--name", "dashboard", "-o", reader.config)

	clientLine, serverLine, _ := strings.Cut(mustRun(t, reader, "version"), "\n")
	version, ok := strings.CutPrefix(clientLine, "client: ")
	require.True(t, ok, clientLine)
	assert.NotEmpty(t, version)
	assert.Equal(t, "server: "+version+" ("+srv.endpoint+")\n", serverLine, "the same binary serves")
}
