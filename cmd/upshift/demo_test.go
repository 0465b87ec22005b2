package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// demoTimeout bounds a whole demo run in the tests (the emulated fleet starts a real kube-apiserver).
const demoTimeout = 6 * time.Minute

var (
	engineLine = regexp.MustCompile(`^engine:\s+(\S+)$`)
	exportLine = regexp.MustCompile(`^\s+export UPSHIFT_CONFIG=(\S+)$`)
)

// demoProcess is `upshift demo` running as a child process without a terminal, so it prints plain lines.
type demoProcess struct {
	cmd    *exec.Cmd
	out    *lines
	seen   []string // the lines of stdout the test has read
	stderr *bytes.Buffer
}

func startDemo(t *testing.T, args ...string) *demoProcess {
	t.Helper()

	cmd := exec.Command(binary, append([]string{"demo", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--reboot-downtime", "200ms", "--timeout", demoTimeout.String()}, args...)...)

	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)

	d := &demoProcess{cmd: cmd, out: readLines(stdout), stderr: &bytes.Buffer{}}
	cmd.Stderr = d.stderr

	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGKILL) //nolint:errcheck // it may have exited already
			_ = cmd.Wait()                          //nolint:errcheck // killed on purpose
		}
	})

	return d
}

// until reads the demo's output up to the first line matching re and returns its submatches; with re nil, up to
// the end. The fleet and the upgrade take longer than a client command, hence a deadline of its own.
func (d *demoProcess) until(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()

	deadline := time.After(demoTimeout + time.Minute)

	for {
		select {
		case line, ok := <-d.out.ch:
			if ok {
				d.seen = append(d.seen, line)
			}

			switch {
			case !ok && re != nil:
				t.Fatalf("the demo ended without a line matching %q; stdout:\n%s", re, d.output())
			case !ok:
				return nil
			case re == nil:
			default:
				if m := re.FindStringSubmatch(line); m != nil {
					return m
				}
			}
		case <-deadline:
			t.Fatalf("no line matching %v in time; stdout so far:\n%s", re, d.output())
		}
	}
}

// engine reads where the demo's engine serves and the admin config the demo tells the user to use.
func (d *demoProcess) engine(t *testing.T) target {
	t.Helper()

	endpoint := d.until(t, engineLine)[1]

	return target{endpoint: endpoint, config: d.until(t, exportLine)[1]}
}

// wait reads the rest of the output and returns it with the exit error.
func (d *demoProcess) wait(t *testing.T) (string, error) {
	t.Helper()
	d.until(t, nil)

	return d.output(), d.cmd.Wait()
}

func (d *demoProcess) output() string { return strings.Join(d.seen, "\n") + "\n" }

func TestDemoUpgradesEveryMachineToTheNewestVersion(t *testing.T) {
	t.Parallel()

	d := startDemo(t)
	engine := d.engine(t)

	// The CLI works against the demo's engine while it runs.
	d.until(t, regexp.MustCompile(`c1-cp-\d \S+ +v1\.11\.6 → `))
	assert.Contains(t, mustRun(t, engine, "get", "machineupgradestatuses"), "c1-cp-")

	out, err := d.wait(t)
	require.NoError(t, err, "demo exit; stderr:\n%s\nstdout:\n%s", d.stderr.String(), out)

	summary := out[strings.LastIndex(out, "\ncluster c1\n"):]
	assert.Contains(t, summary, "  Talos upgrade: Done in ")
	assert.Contains(t, summary, "  plan  v1.11.6 ⇒ ")

	for _, m := range []string{"c1-cp-1", "c1-cp-2", "c1-cp-3"} {
		assert.Regexp(t, fmt.Sprintf(`(?m)^  %s +controlplane +v1\.11\.6 +v1\.14\.1 +0$`, m), summary)
	}

	for _, m := range []string{"c1-w-1", "c1-w-2", "c1-w-3"} {
		assert.Regexp(t, fmt.Sprintf(`(?m)^  %s +worker +v1\.11\.6 +v1\.14\.1 +0$`, m), summary)
	}

	assert.Regexp(t, `(?m)^  Rebooting +\d+ `, summary, "time per step")
	assert.Contains(t, summary, "Event log (every transition above, with its time and writer):")
	assert.Contains(t, summary, "upshift serve --data-dir ")
	assert.Contains(t, summary, "\n  upshift history machineupgradestatus c1-cp-1\n")
	assert.Regexp(t, `\nEvery machine runs Talos v1\.14\.1 and Kubernetes v\d+\.\d+\.\d+\.\n`, summary, "then Kubernetes, by default")
}

func TestDemoFaultShowsTheFailureAndTheRetry(t *testing.T) {
	t.Parallel()

	// The retry is left to the user (this test) for longer than the test takes; the Kubernetes phase is
	// TestDemoUpgradesKubernetesAfterTalos's.
	d := startDemo(t, "--from", "1.13.4", "--to", "1.14.1", "--workers", "1", "--fault", "c1-w-1=rollback", "--retry-after", "1h",
		"--kubernetes-to", "none")
	engine := d.engine(t)

	failed := d.until(t, regexp.MustCompile(`✗ c1-w-1 failed: (.*)`))
	assert.Contains(t, failed[1], "rolled back", "the reason")

	d.until(t, regexp.MustCompile(`repaired c1-w-1 \(cleared the emulated rollback fault\)`))

	retry := d.until(t, regexp.MustCompile(`^\s+upshift (upgrade retry c1 --machine c1-w-1 --config (\S+))$`))
	assert.Equal(t, engine.config, retry[2])

	// The hint is the exact command: run it as the user would.
	mustRun(t, engine, strings.Fields(retry[1])...)

	out, err := d.wait(t)
	require.NoError(t, err, "demo exit; stderr:\n%s\nstdout:\n%s", d.stderr.String(), out)

	assert.Contains(t, out, "✓ c1-w-1: retried after its failure; the upgrade goes on")

	summary := out[strings.LastIndex(out, "\ncluster c1\n"):]
	assert.Regexp(t, `(?m)^  c1-w-1 +worker +v1\.13\.4 +v1\.14\.1 +1$`, summary, "on the new version after one failure")
	assert.Regexp(t, `(?m)^  c1-w-1 failed at WaitingReady \(attempt \d+, v1\.13\.4 → v1\.14\.1\):\n    rolled back`, summary)
	assert.Contains(t, summary, "\n  upshift history machineupgradestatus c1-w-1\n", "the failed machine's history tells the most")
	assert.Contains(t, summary, "Every machine runs Talos v1.14.1.")
}

// TestDemoUpgradesKubernetesAfterTalos: once the Talos rollout is done, the demo asks for the next Kubernetes
// release the engine offers, as `upshift upgrade kubernetes` does, shows its stages as it goes and its steps with
// their times in the summary, checks that it ended Done, and ends with the engine's diff of the bootstrap
// manifests computed after both upgrades.
func TestDemoUpgradesKubernetesAfterTalos(t *testing.T) {
	t.Parallel()

	d := startDemo(t, "--from", "1.13.4", "--to", "1.14.1", "--workers", "1")
	engine := d.engine(t)

	to := d.until(t, regexp.MustCompile(`requested: c1 to Kubernetes (v[0-9.]+), as$`))[1]
	assert.Equal(t, to, d.until(t, regexp.MustCompile("^ +`upshift upgrade kubernetes c1 --to (v[0-9.]+)` does$"))[1])
	assert.Equal(t, "v1.35.2", to, "the next minor after the fleet's v1.34.3, the first the engine offers on Talos 1.14")

	// The request went through the engine: the Cluster asks for it, and the upgrade is planned.
	assert.Contains(t, mustRun(t, engine, "get", "cluster", "c1", "-o", "yaml"), "kubernetesVersion: "+to)

	// The stages go by in order, each with its own count.
	for _, stage := range []string{"pre-pull", "static pods", "kube-proxy", "kubelets"} {
		d.until(t, regexp.MustCompile(`^ +[\d.]+s  c1 Kubernetes Upgrading  1\.34\.3 → 1\.35\.2  \d+/\d+ steps  `+stage+` \d+/\d+`))
	}

	d.until(t, regexp.MustCompile(`^ +[\d.]+s  c1 Kubernetes Done  1\.34\.3 → 1\.35\.2  (\d+)/(\d+) steps$`))

	out, err := d.wait(t)
	require.NoError(t, err, "demo exit; stderr:\n%s\nstdout:\n%s", d.stderr.String(), out)

	summary := out[strings.LastIndex(out, "\ncluster c1\n"):]
	assert.Regexp(t, `(?m)^  Kubernetes upgrade: Done in \d`, summary)
	assert.Contains(t, summary, "  plan  1.34.3 ⇒ 1.35.2")

	for kind, times := range map[string]int{
		"pre-checks": 1, "pre-pull": 4, "kube-apiserver": 3, "kube-controller-manager": 3, "kube-scheduler": 3,
		"kube-proxy": 1, "kubelet": 4,
	} {
		assert.Regexp(t, fmt.Sprintf(`(?m)^  %s +%d +\S+ +\S+ +\S+$`, kind, times), summary, "time of the %s steps", kind)
	}

	assert.Contains(t, summary, "\nEvery machine runs Talos v1.14.1 and Kubernetes v1.35.2.\n")

	// The last lines: the engine's diff after the upgrades, in the words `upshift status` uses.
	last := summary[strings.Index(summary, "Every machine runs"):]
	assert.Regexp(t, "\nc1 bootstrap manifests: (up to date|OutOfSync, \\d+ objects changed; see)", last)

	// The summary fits 80 columns (the paths after it are the test's temporary directories).
	for _, l := range strings.Split(summary[:strings.Index(summary, "\nEvent log")], "\n") {
		assert.LessOrEqual(t, len([]rune(l)), 80, "line %q", l)
	}

	for _, l := range strings.Split(last, "\n") {
		assert.LessOrEqual(t, len([]rune(l)), 80, "line %q", l)
	}
}

// TestDemoStagedRolloutWithALock: with --lock, the demo locks a worker before the upgrade; the others upgrade, the
// rollout reaches Blocked on the lock, the demo prints the exact unlock command (with the config the user is told
// to use), runs it after --unlock-after, and the locked worker upgrades next, so every machine ends on the target.
// The notes fit 80 columns.
func TestDemoStagedRolloutWithALock(t *testing.T) {
	t.Parallel()

	d := startDemo(t, "--from", "1.13.4", "--to", "1.14.1", "--workers", "2", "--lock", "c1-w-2", "--unlock-after", "5s",
		"--kubernetes-to", "none")
	engine := d.engine(t)

	blocked := d.until(t, regexp.MustCompile(`^ +(! c1 is Blocked: (.*))$`))
	assert.Contains(t, blocked[2], "c1-w-2", "the lock it waits on")
	assert.LessOrEqual(t, len([]rune(blocked[0])), 80, "line %q", blocked[0])

	// While Blocked, the locked worker is still on the old version and the others on the new one.
	statuses := mustRun(t, engine, "get", "machinestatus")
	assert.Regexp(t, `(?m) c1-w-2 .* v1\.13\.4 `, statuses)
	assert.Regexp(t, `(?m) c1-w-1 .* v1\.14\.1 `, statuses)

	unlock := d.until(t, regexp.MustCompile(`^\s+upshift (unlock c1-w-2 --config (\S+))$`))
	assert.Equal(t, engine.config, unlock[2], "the exact command, with the config the demo uses")

	d.until(t, regexp.MustCompile(`^\s+The demo runs: upshift `+regexp.QuoteMeta(unlock[1])+`$`))
	d.until(t, regexp.MustCompile(`✓ c1-w-2 unlocked; it upgrades next`))

	out, err := d.wait(t)
	require.NoError(t, err, "demo exit; stderr:\n%s\nstdout:\n%s", d.stderr.String(), out)

	summary := out[strings.LastIndex(out, "\ncluster c1\n"):]
	assert.Regexp(t, `(?m)^  c1-w-2 +worker +v1\.13\.4 +v1\.14\.1 +0$`, summary, "the locked worker upgraded once unlocked")
	assert.Contains(t, summary, "Every machine runs Talos v1.14.1.")
}
