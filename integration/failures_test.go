package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// TestFailuresAndRevert shares one fleet (3 control planes, 2 workers) between three rollouts that each start from
// a finished one: a revert half-way, a blocked etcd gate, and a rolled-back node with its retry.
func TestFailuresAndRevert(t *testing.T) {
	bed := startBed(t, testbed.WithFleetOptions(
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(2), talosemu.WithTalosVersion("1.12.6"),
		talosemu.WithRebootDowntime(rebootDowntime),
	))

	waitObserved(t, bed, "1.12.6")

	t.Run("revert half-way brings every machine back", func(t *testing.T) { testRevert(t, bed, "1.12.6", "1.13.4") })
	t.Run("unhealthy etcd member blocks control planes", func(t *testing.T) { testEtcdGate(t, bed, "1.13.4") })
	t.Run("rolled-back node fails the rollout until retried", func(t *testing.T) { testRollback(t, bed, "1.14.1") })
}

// testRevert starts the change from old to target and, once the first machine is done, sets the version back.
func testRevert(t *testing.T, bed *testbed.Bed, old, target string) {
	st := bed.State()

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + target })

	first := waitFor(t, st, upgrade.NewMachineUpgradeStatus("c1-cp-1").Metadata(), 2*time.Minute, "the first machine to finish",
		func(u *upgrade.MachineUpgradeStatus) bool {
			return u.TypedSpec().Phase == upgrade.MachineDone && sameVersion(u.TypedSpec().ToVersion, target)
		})
	require.NotNil(t, first)

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + old })

	waitTalos(t, st, "c1", 3*time.Minute, "the revert to finish", phaseIs(upgrade.PhaseDone, old))

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, old, n.Version(), "%s is back on %s", n.Name(), old)
	}
}

// testEtcdGate upgrades to target with one control plane's etcd member unhealthy: no control plane goes down and
// the status says why, until the member is healthy again.
func testEtcdGate(t *testing.T, bed *testbed.Bed, target string) {
	st := bed.State()
	ctx := t.Context()
	start := len(bed.Fleet.Journal().Entries())

	require.NoError(t, bed.Fleet.SetFault(ctx, "c1-cp-2", talosemu.FaultEtcdUnhealthy))

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + target })

	status := waitStatus(t, bed, "c1", time.Minute, "etcd")
	t.Log(status)

	blockedFor := len(bed.Fleet.Journal().Entries())

	require.NoError(t, bed.Fleet.ClearFault(ctx, "c1-cp-2", talosemu.FaultEtcdUnhealthy))

	for _, e := range bed.Fleet.Journal().Entries()[start:blockedFor] {
		assert.False(t, e.Event == talosemu.EventRebootDown || e.Method == methodReboot || e.Method == methodLegacyUpgrade,
			"nothing reboots while an etcd member is unhealthy: %s %s%s at %s", e.Node, e.Method, e.Event, e.Time)
	}

	waitTalos(t, st, "c1", 3*time.Minute, "the rollout to finish once etcd is healthy", phaseIs(upgrade.PhaseDone, target))

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, target, n.Version(), n.Name())
	}
}

// testRollback upgrades to target with a worker that rolls back: it fails "rolled back", gets no second install,
// no other machine starts, and a retry after the fault is cleared finishes the rollout.
func testRollback(t *testing.T, bed *testbed.Bed, target string) {
	st := bed.State()
	ctx := t.Context()

	require.NoError(t, bed.Fleet.SetFault(ctx, "c1-w-1", talosemu.FaultRollback))

	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + target })

	failed := waitTalos(t, st, "c1", 3*time.Minute, "the rollout to fail", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseFailed
	})
	assert.Equal(t, "c1-w-1", failed.TypedSpec().FailedMachine)
	assert.Contains(t, failed.TypedSpec().Error, "rolled back")

	mu, err := st.Get(ctx, upgrade.NewMachineUpgradeStatus("c1-w-1").Metadata())
	require.NoError(t, err)
	assert.Equal(t, upgrade.MachineFailed, mu.(*upgrade.MachineUpgradeStatus).TypedSpec().Phase)                       //nolint:forcetypeassert
	assert.True(t, strings.HasPrefix(mu.(*upgrade.MachineUpgradeStatus).TypedSpec().Error, "rolled back"), "error %q", //nolint:forcetypeassert
		mu.(*upgrade.MachineUpgradeStatus).TypedSpec().Error) //nolint:forcetypeassert

	// The engine keeps observing the other worker (three more observations of it) without starting it.
	failedAt := len(bed.Fleet.Journal().Entries())
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	require.NoError(t, waitJournal(waitCtx, bed, failedAt, 3, func(e talosemu.Entry) bool { return e.Node == "c1-w-2" && e.Method != "" }))

	installsOf := func(node string) int {
		return readRollout(bed.Fleet).count(func(e talosemu.Entry) bool {
			return e.Node == node && isInstall(e) && imageVersion(e.Image) == target
		})
	}

	assert.Equal(t, 1, installsOf("c1-w-1"), "no second install of the rolled-back node")
	assert.Equal(t, 0, installsOf("c1-w-2"), "no new machine starts after a failure")

	require.NoError(t, bed.Fleet.ClearFault(ctx, "c1-w-1", talosemu.FaultRollback))

	out := mustCLI(t, bed, "upgrade", "retry", "c1", "--machine", "c1-w-1")
	assert.Contains(t, out, "retrying c1-w-1")

	waitTalos(t, st, "c1", 3*time.Minute, "the retried rollout to finish", phaseIs(upgrade.PhaseDone, target))

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, target, n.Version(), n.Name())
	}
}

// waitJournal waits until n entries matching match were recorded after the first from entries.
func waitJournal(ctx context.Context, bed *testbed.Bed, from, n int, match func(talosemu.Entry) bool) error {
	return waitFleetJournal(ctx, bed.Fleet, from, n, match)
}

// waitFleetJournal is waitJournal on a fleet of any bed.
func waitFleetJournal(ctx context.Context, fleet *talosemu.Fleet, from, n int, match func(talosemu.Entry) bool) error {
	// Wait hands every entry to the matcher once, in order, starting with the oldest.
	index, seen := 0, 0
	_, err := fleet.Journal().Wait(ctx, func(e talosemu.Entry) bool {
		index++
		if index > from && match(e) {
			seen++
		}

		return seen >= n
	})

	return err
}

// statusRecheck bounds how long waitStatus waits for a change before it runs `upshift status` again anyway (a CLI
// run that failed, or saw the status just before the change).
const statusRecheck = time.Second

// waitStatus waits until `upshift status` mentions want, and returns its output. What status prints about the
// rollout (its error, what it waits for) comes from the cluster's TalosUpgradeStatus, so it watches that and runs
// the CLI when a new version of it mentions want, or after statusRecheck without one.
func waitStatus(t *testing.T, bed *testbed.Bed, clusterID string, timeout time.Duration, want string) string {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()

	var (
		seen uint64 // the newest version of the TalosUpgradeStatus that mentioned want
		out  string
	)

	for {
		waitCtx, waitCancel := context.WithTimeout(ctx, statusRecheck)
		r, err := bed.State().WatchFor(waitCtx, upgrade.NewTalosUpgradeStatus(clusterID).Metadata(),
			state.WithCondition(func(r resource.Resource) (bool, error) {
				tus, ok := r.(*upgrade.TalosUpgradeStatus)

				return ok && r.Metadata().Version().Value() > seen &&
					(strings.Contains(tus.TypedSpec().Error, want) || strings.Contains(tus.TypedSpec().Reason, want)), nil
			}))

		if err == nil {
			seen = r.Metadata().Version().Value()
		} else {
			<-waitCtx.Done() // a watch that failed at once (the engine restarting) must not turn this into a spin
		}

		waitCancel()

		stdout, _, err := cli(t, bed, "status", clusterID)
		if err == nil {
			out = stdout

			if strings.Contains(out, want) {
				return out
			}
		}

		if ctx.Err() != nil {
			require.FailNowf(t, "status never said why", "want %q within %s in:\n%s", want, timeout, out)
		}
	}
}
