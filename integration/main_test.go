// Package integration runs the engine against the emulated fleet (real Talos API, real etcd members, a real
// kube-apiserver with its controller manager and scheduler) and proves the rollout rules (docs/architecture.md)
// from the fleet's journal and the Kubernetes API, and the CLI from the built binary.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// upgradeOptions are the rollout controllers' settings in every test engine (in process or child): observe often
// and give up soon, so a whole rollout takes seconds.
func upgradeOptions() []controllers.UpgradeOption {
	return []controllers.UpgradeOption{
		controllers.WithPollInterval(time.Second),
		controllers.WithObserveTimeout(2 * time.Second),
		controllers.WithRetryDelay(100 * time.Millisecond),
		controllers.WithStepTimeout(30 * time.Second),
		controllers.WithRebootTimeout(30 * time.Second),
	}
}

// binary is the upshift CLI, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	testbed.ServeIfChild(upgradeOptions()...)

	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "upshift-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}

	defer os.RemoveAll(dir) //nolint:errcheck

	binary = filepath.Join(dir, "upshift")

	if out, err := exec.Command("go", "build", "-o", binary, "../cmd/upshift").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building upshift: %v\n%s", err, out)

		return 1
	}

	return m.Run()
}

// rebootDowntime is how long an emulated node stays down in a reboot: long enough for two workers to overlap.
const rebootDowntime = 300 * time.Millisecond

// startBed starts a fleet and an engine in charge of it, stopped at the end of the test.
func startBed(t testing.TB, opts ...testbed.Option) *testbed.Bed {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	bed, err := testbed.Start(ctx, append([]testbed.Option{
		testbed.WithDir(t.TempDir()),
		testbed.WithUpgradeOptions(upgradeOptions()...),
	}, opts...)...)
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, bed.Close()) })

	return bed
}

// startLiteBed starts a bed of one lite cluster (no etcd, no kube-apiserver, no reboot downtime) of cps control
// planes and workers workers on Talos version, logging the cluster's state if the test fails.
func startLiteBed(t *testing.T, cps, workers int, version string, opts ...talosemu.Option) *testbed.Bed {
	t.Helper()

	bed := startBed(t, testbed.WithLite(), testbed.WithFleetOptions(append([]talosemu.Option{
		talosemu.WithControlPlanes(cps), talosemu.WithWorkers(workers), talosemu.WithTalosVersion(version),
		talosemu.WithRebootDowntime(0),
	}, opts...)...))
	logOnFailure(t, bed, "c1")

	return bed
}

// cli runs the upshift binary against the bed's engine and returns its standard output and error.
func cli(t *testing.T, bed *testbed.Bed, args ...string) (stdout, stderr string, err error) {
	t.Helper()

	var out, errOut bytes.Buffer

	cmd := exec.CommandContext(t.Context(), binary, cliArgs(bed, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()

	return out.String(), errOut.String(), err
}

// cliArgs is a command line of the upshift binary pointed at the bed's engine as its admin.
func cliArgs(bed *testbed.Bed, args ...string) []string {
	return append(args, "--endpoint", bed.Endpoint(), "--config", bed.ConfigPath())
}

// mustCLI runs the upshift binary and fails the test if it fails.
func mustCLI(t *testing.T, bed *testbed.Bed, args ...string) string {
	t.Helper()

	out, errOut, err := cli(t, bed, args...)
	require.NoError(t, err, "upshift %v: %s", args, errOut)

	return out
}

// waitFor waits, on a watch, until the resource of type T named id satisfies cond, and returns it. Watches that
// end with the engine (a crash test kills it) are opened again until the deadline.
func waitFor[T resource.Resource](t testing.TB, st state.State, ptr resource.Pointer, timeout time.Duration, what string, cond func(T) bool) T {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()

	var last T

	for {
		r, err := st.WatchFor(ctx, ptr, state.WithCondition(func(r resource.Resource) (bool, error) {
			typed, ok := r.(T)
			if !ok {
				return false, nil
			}

			last = typed

			return cond(typed), nil
		}))
		if err == nil {
			return r.(T) //nolint:forcetypeassert // the condition checked it
		}

		if ctx.Err() != nil {
			require.FailNowf(t, "timed out", "waiting %s for %s; last seen: %v", timeout, what, describe(last))
		}
	}
}

// describe renders a resource's spec for failure messages.
func describe(r resource.Resource) string {
	if r == nil || any(r) == nil {
		return "nothing"
	}

	return fmt.Sprintf("%s %s: %+v", r.Metadata().Type(), r.Metadata().ID(), r.Spec())
}

// waitTalos waits until the cluster's TalosUpgradeStatus satisfies cond.
func waitTalos(t *testing.T, st state.State, clusterID string, timeout time.Duration, what string, cond func(*upgrade.TalosUpgradeStatusSpec) bool) *upgrade.TalosUpgradeStatus {
	t.Helper()

	return waitFor(t, st, upgrade.NewTalosUpgradeStatus(clusterID).Metadata(), timeout, what, func(r *upgrade.TalosUpgradeStatus) bool {
		return cond(r.TypedSpec())
	})
}

// phaseIs matches a TalosUpgradeStatus in phase heading to version to.
func phaseIs(phase upgrade.ClusterPhase, to string) func(*upgrade.TalosUpgradeStatusSpec) bool {
	return func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == phase && sameVersion(s.ToVersion, to)
	}
}

// sameVersion compares Talos versions with or without their "v".
func sameVersion(a, b string) bool {
	return strings.TrimPrefix(a, "v") == strings.TrimPrefix(b, "v")
}

// setCluster changes the Cluster named id as a user would.
func setCluster(t testing.TB, st state.State, id string, set func(*cluster.ClusterSpec)) {
	t.Helper()

	_, err := safeUpdateCluster(t.Context(), st, id, set)
	require.NoError(t, err)
}
