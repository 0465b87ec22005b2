package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift"
)

// binary is the upshift binary built once for the CLI tests by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runWithBinary(m))
}

func runWithBinary(m *testing.M) int {
	dir, err := os.MkdirTemp("", "upshift-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}

	defer os.RemoveAll(dir) //nolint:errcheck

	binary = filepath.Join(dir, "upshift")

	// `upshift serve` installs its admin config at the user's default path when none is there: the tests' servers
	// write theirs here, not in the home of whoever runs the tests, and every test names its server's config.
	if err = os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config")); err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}

	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building upshift: %v\n%s", err, out)

		return 1
	}

	return m.Run()
}

// waitTimeout bounds every wait on a child process's output.
const waitTimeout = 60 * time.Second

// lines streams a child's output line by line, so tests can wait for a line without sleeping.
type lines struct {
	ch chan string
}

func readLines(r io.Reader) *lines {
	l := &lines{ch: make(chan string, 1024)}

	go func() {
		defer close(l.ch)

		scanner := bufio.NewScanner(r)
		for scanner.Scan() {
			l.ch <- scanner.Text()
		}
	}()

	return l
}

// waitFor returns the first line matching re, failing the test if none comes in time.
func (l *lines) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()

	deadline := time.After(waitTimeout)

	var seen []string

	for {
		select {
		case line, ok := <-l.ch:
			if !ok {
				t.Fatalf("output ended without a line matching %q; got:\n%s", re, strings.Join(seen, "\n"))
			}

			seen = append(seen, line)

			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("no line matching %q within %s; got:\n%s", re, waitTimeout, strings.Join(seen, "\n"))
		}
	}
}

// serverProcess is `upshift serve` running as a child process.
type serverProcess struct {
	cmd      *exec.Cmd
	endpoint string
	to       target // the endpoint and the admin config the server wrote in its data dir
	stderr   *bytes.Buffer
}

var servingLine = regexp.MustCompile(`^upshift serving on (\S+) `)

// startServer starts `upshift serve` on dataDir and a free port, with more flags if given.
func startServer(t *testing.T, dataDir string, flags ...string) *serverProcess {
	t.Helper()

	return startServerEnv(t, dataDir, nil, flags...)
}

// startServerEnv is startServer with the environment env (nil: this process's).
func startServerEnv(t *testing.T, dataDir string, env []string, flags ...string) *serverProcess {
	t.Helper()

	cmd := exec.Command(binary, append([]string{"serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0"}, flags...)...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)

	s := &serverProcess{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = s.stderr

	require.NoError(t, cmd.Start())
	t.Cleanup(s.kill)

	s.endpoint = readLines(stdout).waitFor(t, servingLine)[1]
	s.to = target{endpoint: s.endpoint, config: filepath.Join(dataDir, upshift.AdminConfigFileName)}

	return s
}

// kill ends the server with SIGKILL: no shutdown code runs.
func (s *serverProcess) kill() {
	if s.cmd.ProcessState != nil {
		return
	}

	_ = s.cmd.Process.Signal(syscall.SIGKILL) //nolint:errcheck // it may have exited already
	_ = s.cmd.Wait()                          //nolint:errcheck // killed on purpose
}

// result is what a finished CLI command left.
type result struct {
	stdout, stderr string
	exitCode       int
}

// run runs a client command against a server (through UPSHIFT_ENDPOINT and UPSHIFT_CONFIG, as a user would set
// them).
func run(t *testing.T, to target, args ...string) result {
	t.Helper()

	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), endpointEnv+"="+to.endpoint, configEnv+"="+to.config)

	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	err := cmd.Run()

	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("running upshift %v: %v", args, err)
	}

	return result{stdout: stdout.String(), stderr: stderr.String(), exitCode: cmd.ProcessState.ExitCode()}
}

func mustRun(t *testing.T, to target, args ...string) string {
	t.Helper()

	res := run(t, to, args...)
	require.Equal(t, 0, res.exitCode, "upshift %v failed: %s", args, res.stderr)

	return res.stdout
}

// tableRow finds the row of a `get` table whose ID column is id and returns its cells by header.
func tableRow(t *testing.T, table, id string) map[string]string {
	t.Helper()

	rows := strings.Split(strings.TrimSpace(table), "\n")
	require.NotEmpty(t, rows)

	header := regexp.MustCompile(`\S+( \S+)*`).FindAllStringIndex(rows[0], -1)

	for _, row := range rows[1:] {
		cells := map[string]string{}

		for i, span := range header {
			end := len(row)
			if i+1 < len(header) {
				end = min(header[i+1][0], len(row))
			}

			cells[rows[0][span[0]:span[1]]] = ""
			if span[0] < len(row) {
				cells[rows[0][span[0]:span[1]]] = strings.TrimSpace(row[span[0]:end])
			}
		}

		if cells["ID"] == id {
			return cells
		}
	}

	t.Fatalf("no row %q in:\n%s", id, table)

	return nil
}

// A new user's session: serve, apply the example, get, kill -9, serve again, history, watch.
func TestCLIEndToEnd(t *testing.T) {
	t.Parallel()

	dataDir := t.TempDir()
	srv := startServer(t, dataDir)

	out := mustRun(t, srv.to, "apply", "-f", "../../examples/cluster.yaml")
	assert.Contains(t, out, "cluster/prod created")
	assert.Contains(t, out, "machine/prod-w-3 created")

	row := tableRow(t, mustRun(t, srv.to, "get", "clusters"), "prod")
	assert.Equal(t, map[string]string{
		"NAMESPACE": "upshift", "TYPE": "Cluster", "ID": "prod", "VERSION": "1",
		"TALOS": "v1.14.1", "KUBERNETES": "v1.37.2", "PARALLELISM": "2", "PAUSED": "false",
	}, row)

	var doc struct {
		Metadata map[string]any    `yaml:"metadata"`
		Spec     map[string]string `yaml:"spec"`
	}

	require.NoError(t, yaml.Unmarshal([]byte(mustRun(t, srv.to, "get", "cluster", "prod", "-o", "yaml")), &doc))
	assert.Equal(t, "prod", doc.Metadata["id"])
	assert.Equal(t, "v1.14.1", doc.Spec["talosVersion"])
	assert.Equal(t, "10m", doc.Spec["drainTimeout"])

	srv.kill()
	srv = startServer(t, dataDir)

	assert.Equal(t, "v1.14.1", tableRow(t, mustRun(t, srv.to, "get", "cluster", "prod"), "prod")["TALOS"])
	assert.Equal(t, "worker", tableRow(t, mustRun(t, srv.to, "get", "machines"), "prod-w-2")["ROLE"])

	hist := mustRun(t, srv.to, "history", "cluster", "prod")
	assert.Contains(t, hist, `# Cluster "prod": retained history begins at seq 1`)

	historyRows := strings.Split(strings.TrimSpace(hist), "\n")[1:]
	require.Len(t, historyRows, 2, hist) // header and the one write

	fields := strings.Fields(historyRows[1])
	require.Len(t, fields, 5, historyRows[1])

	written, err := time.Parse(time.RFC3339Nano, fields[0])
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now(), written, 5*time.Minute)
	assert.Equal(t, []string{"created", "1", "user:" + upshift.AdminName}, fields[2:])

	// Watch, then change the cluster while the watch runs.
	watched := startWatch(t, srv.to, "get", "clusters", "-w")
	watched.waitFor(t, regexp.MustCompile(`^created\s+upshift\s+Cluster\s+prod\s+1\s+v1\.14\.1`))

	changed := strings.Replace(readFile(t, "../../examples/cluster.yaml"), "talosVersion: v1.14.1", "talosVersion: v1.14.0", 1)
	assert.Contains(t, mustRun(t, srv.to, "apply", "-f", writeFile(t, changed)), "cluster/prod configured")

	watched.waitFor(t, regexp.MustCompile(`^updated\s+upshift\s+Cluster\s+prod\s+2\s+v1\.14\.0`))

	// Watching one resource that does not exist (yet) prints it once it is created (or, if the watch starts
	// after the write, as it is: either way the same line).
	lockWatch := startWatch(t, srv.to, "get", "machinelock", "prod-w-1", "-w")

	mustRun(t, srv.to, "apply", "-f", writeFile(t, "metadata: {type: lock, id: prod-w-1}\nspec: {reason: kernel debugging}\n"))
	lockWatch.waitFor(t, regexp.MustCompile(`^created\s+upshift\s+MachineLock\s+prod-w-1\s+1\s+kernel debugging$`))
}

// startWatch runs a watching client command until the test ends and streams its output.
func startWatch(t *testing.T, to target, args ...string) *lines {
	t.Helper()

	cmd := exec.Command(binary, append(args, "--endpoint", to.endpoint, "--config", to.config)...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	t.Cleanup(func() {
		_ = cmd.Process.Kill() //nolint:errcheck // it runs until killed
		_ = cmd.Wait()         //nolint:errcheck // killed on purpose
	})

	return readLines(stdout)
}

func readFile(t *testing.T, path string) string {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err)

	return string(data)
}

func writeFile(t *testing.T, content string) string {
	t.Helper()

	path := filepath.Join(t.TempDir(), "resources.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))

	return path
}

const goodCluster = `metadata:
  type: Cluster
  id: good
spec:
  talosVersion: v1.14.1
  kubernetesVersion: v1.37.2
`

// Bad input gets a clear error on stderr and a non-zero exit, and nothing is written.
func TestCLIBadInput(t *testing.T) {
	t.Parallel()

	dataDir := t.TempDir()
	srv := startServer(t, dataDir)

	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"malformed YAML", goodCluster + "---\nmetadata: [\n", []string{"document 2 is not valid YAML"}},
		{"unknown type", goodCluster + "---\nmetadata: {type: Widget, id: w}\nspec: {}\n", []string{`metadata.type "Widget" is not an upshift resource type`}},
		{"output type", goodCluster + "---\nmetadata: {type: ClusterSummary, id: good}\nspec: {}\n", []string{"is an output of the engine"}},
		{"unknown field", goodCluster + "---\nmetadata: {type: Machine, id: m}\nspec: {cluster: good, rol: worker}\n", []string{`line 9: unknown field "rol"`}},
		{"missing fields", goodCluster + "---\nmetadata: {type: Machine, id: m}\nspec: {cluster: good}\n", []string{
			`Machine "m" is invalid: spec.role: is required`, "spec.endpoint: is required",
		}},
		{"missing id", "metadata: {type: Cluster}\nspec: {talosVersion: v1.14.1}\n", []string{"metadata.id is required"}},
		{"bad versions", strings.Replace(goodCluster, "v1.37.2", "1.37", 1) + "---\nmetadata: {type: Cluster, id: bad}\nspec: {talosVersion: latest, kubernetesVersion: v1.37.2}\n", []string{
			`Cluster "good" is invalid: spec.kubernetesVersion: "1.37" is not a version like v1.2.3`,
			`Cluster "bad" is invalid: spec.talosVersion: "latest" is not a version like v1.2.3`,
		}},
		{"reference to a missing cluster", goodCluster + "---\nmetadata: {type: Machine, id: m}\nspec: {cluster: nope, role: worker, endpoint: '10.0.0.1:50000'}\n", []string{
			`spec.cluster: cluster "nope" does not exist`,
		}},
	} {
		res := run(t, srv.to, "apply", "-f", writeFile(t, tc.file))
		assert.NotEqual(t, 0, res.exitCode, tc.name)
		assert.Empty(t, res.stdout, tc.name)

		for _, want := range tc.want {
			assert.Contains(t, res.stderr, want, tc.name)
		}
	}

	// None of the files above wrote anything, not even their valid documents.
	res := run(t, srv.to, "get", "cluster", "good")
	assert.Equal(t, 1, res.exitCode)
	assert.Equal(t, "error: Cluster \"good\" not found\n", res.stderr)

	res = run(t, srv.to, "get", "widgets")
	assert.Equal(t, 1, res.exitCode)
	assert.Contains(t, res.stderr, `unknown resource type "widgets" (known types: cluster,`)

	res = run(t, srv.to, "get", "clusters", "-o", "xml")
	assert.Equal(t, 1, res.exitCode)
	assert.Contains(t, res.stderr, `unknown output format "xml"`)

	// A second server on the same data dir is refused; the first one keeps serving.
	second := exec.Command(binary, "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0")

	var stderr bytes.Buffer
	second.Stderr = &stderr

	err := second.Run()
	require.Error(t, err)
	assert.NotEqual(t, 0, second.ProcessState.ExitCode())
	assert.Contains(t, stderr.String(), "state file is locked by another process")
	assert.Contains(t, stderr.String(), "is another upshift serving this data dir?")

	mustRun(t, srv.to, "apply", "-f", writeFile(t, goodCluster))
	assert.Equal(t, "v1.14.1", tableRow(t, mustRun(t, srv.to, "get", "clusters"), "good")["TALOS"])
}
