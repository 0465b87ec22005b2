package integration

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Each machine walks its own path to the cluster's final version: a machine held back (locked, skipped, or
// already ahead) neither holds the others on an intermediate hop nor gets sent back to one. These tests run lite
// fleets (no etcd, no Kubernetes) with no reboot downtime: what they check is which calls reach which node, and in
// what order.

// rolloutTimeout bounds a whole lite rollout of a handful of machines over two hops.
const rolloutTimeout = 2 * time.Minute

// TestStagedRolloutWithLockedWorkers locks two of four workers and upgrades the cluster from the oldest supported
// version to the newest, which takes an intermediate hop. Every unlocked machine walks both hops to the end while
// the locked ones stay where they are; only then does the rollout report itself blocked on the locks, and never
// before. Unlocked, the two walk both hops too, and nothing is sent again to a machine already on the final version.
func TestStagedRolloutWithLockedWorkers(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	bed := startLiteBed(t, 3, 4, oldest)

	st := bed.State()
	locked := []string{"c1-w-2", "c1-w-4"}
	unlocked := nodesExcept(bed, locked)

	waitObserved(t, bed, oldest)

	for _, id := range locked {
		mustCLI(t, bed, "lock", id, "--reason", "staged rollout test")
	}

	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)

	planned := waitTalos(t, st, "c1", time.Minute, "the plan", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return sameVersion(s.ToVersion, newest) && len(s.Plan) > 0
	})
	plan := versionsOf(planned.TypedSpec().Plan)
	require.Greater(t, len(plan), 1, "no direct path from %s to %s: the plan has an intermediate hop", oldest, newest)
	require.Equal(t, newest, plan[len(plan)-1])

	deadline := time.Now().Add(rolloutTimeout)

	for _, id := range unlocked {
		waitFor(t, st, observe.NewMachineStatus(id).Metadata(), time.Until(deadline), id+" on "+newest+" while "+strings.Join(locked, ", ")+" are locked",
			func(s *observe.MachineStatus) bool { return sameVersion(s.TypedSpec().TalosVersion, newest) })
	}

	for _, id := range locked {
		assert.Equal(t, oldest, nodeVersion(t, bed, id), "%s stays on %s while locked", id, oldest)
		assert.Empty(t, changingCalls(bed, id, 0), "nothing is sent to %s while it is locked", id)
	}

	for _, id := range unlocked {
		assert.Equal(t, plan, installedVersions(bed, id, 0), "%s went through every hop of the plan, in order", id)
	}

	blocked := waitTalos(t, st, "c1", time.Minute, "the rollout to be blocked on the locks", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked
	}).TypedSpec()
	assert.Equal(t, locked, sorted(blocked.WaitingOnLock), "the locked machines are the ones waited for")
	assert.Contains(t, blocked.Error+" "+blocked.Reason, "lock", "the status says the rollout waits on locks")

	// Over the whole event log: the rollout was never Blocked while an unlocked machine still had a hop to go.
	lastDone := uint64(0)

	for _, id := range unlocked {
		seq, ok := firstSeq(historyOf[machineUpgradeHistory](t, bed, upgrade.MachineUpgradeStatusType, id), func(s machineUpgradeHistory) bool {
			return s.Spec.Phase == upgrade.MachineDone && sameVersion(s.Spec.ToVersion, newest)
		})
		require.True(t, ok, "the log has %s's upgrade to %s done", id, newest)

		lastDone = max(lastDone, seq)
	}

	var early []string

	for _, ev := range historyOf[talosUpgradeHistory](t, bed, upgrade.TalosUpgradeStatusType, "c1") {
		if ev.seq < lastDone && ev.doc.Spec.Phase == upgrade.PhaseBlocked {
			early = append(early, fmt.Sprintf("seq %d: %s %s", ev.seq, ev.doc.Spec.Error, ev.doc.Spec.Reason))
		}
	}

	assert.Empty(t, early, "Blocked before every unlocked machine was on %s (seq %d)", newest, lastDone)

	unlockedAt := len(bed.Fleet.Journal().Entries())

	for _, id := range locked {
		mustCLI(t, bed, "unlock", id)
	}

	done := waitTalos(t, st, "c1", rolloutTimeout, "the rollout to finish once unlocked", phaseIs(upgrade.PhaseDone, newest)).TypedSpec()
	assert.Equal(t, len(bed.Fleet.Nodes()), done.Total)
	assert.Equal(t, done.Total, done.Done)
	assert.Empty(t, done.WaitingOnLock)

	for _, id := range locked {
		assert.Equal(t, newest, nodeVersion(t, bed, id), id)
		assert.Equal(t, plan, installedVersions(bed, id, unlockedAt), "%s, unlocked, went through every hop of the plan, in order", id)
	}

	for _, id := range unlocked {
		assert.Empty(t, changingCalls(bed, id, unlockedAt), "nothing is sent to %s, already on %s, after the unlock", id, newest)
		assert.Equal(t, newest, nodeVersion(t, bed, id), id)
	}
}

// TestMixedClusterLeavesNewerNodesAlone starts a cluster on the oldest supported version except one worker and one
// control plane, which already run the newest, and upgrades it to the newest: the two never get a call that changes
// them (no install toward an intermediate hop, which would be a downgrade, no reboot, no pull), and every other
// machine gets there.
func TestMixedClusterLeavesNewerNodesAlone(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]
	ahead := []string{"c1-cp-2", "c1-w-1"}

	opts := []talosemu.Option{
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(3), talosemu.WithTalosVersion(oldest), talosemu.WithRebootDowntime(0),
	}
	for _, id := range ahead {
		opts = append(opts, talosemu.WithNodeVersion(id, newest))
	}

	bed := startBed(t, testbed.WithLite(), testbed.WithFleetOptions(opts...))
	logOnFailure(t, bed, "c1")

	st := bed.State()
	behind := nodesExcept(bed, ahead)

	for _, n := range bed.Fleet.Nodes() {
		want := oldest
		if slices.Contains(ahead, n.Name()) {
			want = newest
		}

		waitFor(t, st, observe.NewMachineStatus(n.Name()).Metadata(), time.Minute, n.Name()+" observed on "+want,
			func(s *observe.MachineStatus) bool { return sameVersion(s.TypedSpec().TalosVersion, want) })
	}

	// The test bed registers a cluster of mixed versions paused: nothing may start before the request below.
	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)
	mustCLI(t, bed, "upgrade", "resume", "c1")

	done := waitTalos(t, st, "c1", rolloutTimeout, "the rollout to finish", phaseIs(upgrade.PhaseDone, newest)).TypedSpec()
	assert.Equal(t, len(bed.Fleet.Nodes()), done.Total)
	assert.Equal(t, done.Total, done.Done)

	for _, id := range ahead {
		assert.Empty(t, changingCalls(bed, id, 0), "nothing is ever sent to %s, which started on %s", id, newest)
		assert.Equal(t, newest, nodeVersion(t, bed, id), id)
	}

	for _, id := range behind {
		assert.Equal(t, newest, nodeVersion(t, bed, id), id)
	}

	// Over the whole event log: neither was ever started, nor had an upgrade toward another version than its own.
	clusterLog := historyOf[talosUpgradeHistory](t, bed, upgrade.TalosUpgradeStatusType, "c1")

	for _, id := range ahead {
		var started, elsewhere []string

		for _, ev := range clusterLog {
			if slices.Contains(ev.doc.Spec.Admitted, id) || slices.Contains(ev.doc.Spec.Current, id) {
				started = append(started, fmt.Sprintf("seq %d toward %s", ev.seq, ev.doc.Spec.Target))
			}
		}

		for _, ev := range historyOf[machineUpgradeHistory](t, bed, upgrade.MachineUpgradeStatusType, id) {
			if !sameVersion(ev.doc.Spec.ToVersion, newest) {
				elsewhere = append(elsewhere, fmt.Sprintf("seq %d %s toward %s", ev.seq, ev.doc.Spec.Phase, ev.doc.Spec.ToVersion))
			}
		}

		assert.Empty(t, started, "%s is never admitted or in flight", id)
		assert.Empty(t, elsewhere, "%s never has an upgrade toward another version than %s", id, newest)
	}
}

// TestSkipOnIntermediateHop upgrades from the oldest supported version to the newest with a worker whose install
// fails; it fails on the intermediate hop. Skipping it lets every other machine finish the whole plan, the rollout
// ends Done, and its status names the skipped machine.
func TestSkipOnIntermediateHop(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	const failing = "c1-w-2"

	// A legacy install that fails never reboots the node: the engine finds out when the reboot does not come, so the
	// wait for it is short here (reboots take no time in this fleet).
	bed := startBed(t, testbed.WithLite(), testbed.WithUpgradeOptions(controllers.WithRebootTimeout(10*time.Second)),
		testbed.WithFleetOptions(
			talosemu.WithControlPlanes(1), talosemu.WithWorkers(3), talosemu.WithTalosVersion(oldest),
			talosemu.WithRebootDowntime(0), talosemu.WithFault(failing, talosemu.FaultInstallFail),
		))
	logOnFailure(t, bed, "c1")

	st := bed.State()

	waitObserved(t, bed, oldest)

	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)

	failed := waitTalos(t, st, "c1", rolloutTimeout, "the rollout to fail on "+failing, func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseFailed
	}).TypedSpec()
	require.Equal(t, failing, failed.FailedMachine)

	plan := versionsOf(failed.Plan)
	require.Greater(t, len(plan), 1, "no direct path from %s to %s: the plan has an intermediate hop", oldest, newest)

	mu, err := st.Get(t.Context(), upgrade.NewMachineUpgradeStatus(failing).Metadata())
	require.NoError(t, err)

	failedTo := mu.(*upgrade.MachineUpgradeStatus).TypedSpec().ToVersion //nolint:forcetypeassert // the state holds this type
	require.True(t, sameVersion(failedTo, plan[0]), "%s failed on the intermediate hop %s, not on %s", failing, plan[0], failedTo)

	skippedAt := len(bed.Fleet.Journal().Entries())

	out := mustCLI(t, bed, "upgrade", "skip", "c1", "--machine", failing)
	assert.Contains(t, out, failing)

	done := waitTalos(t, st, "c1", rolloutTimeout, "the rollout to finish without "+failing, phaseIs(upgrade.PhaseDone, newest)).TypedSpec()
	assert.Equal(t, done.Total, done.Done, "a skipped machine counts as finished")

	for _, n := range bed.Fleet.Nodes() {
		if n.Name() == failing {
			assert.Equal(t, oldest, n.Version(), "%s, skipped, stays where it was", failing)
			assert.Empty(t, changingCalls(bed, failing, skippedAt), "nothing is sent to %s once skipped", failing)

			continue
		}

		assert.Equal(t, newest, n.Version(), n.Name())
	}

	// The field is read by its YAML key, as scripts read `get -o yaml`.
	var doc struct {
		Spec map[string]any `yaml:"spec"`
	}

	require.NoError(t, yaml.Unmarshal([]byte(mustCLI(t, bed, "get", "talosupgradestatus", "c1", "-o", "yaml")), &doc))
	assert.Equal(t, []any{failing}, doc.Spec["skipped"], "the status lists the skipped machine under spec.skipped")
}

// logOnFailure logs, when the test has failed, what the engine and the fleet say about the cluster, so a failure
// shows where the rollout stood and what each node was sent.
func logOnFailure(t *testing.T, bed *testbed.Bed, clusterID string) {
	t.Helper()

	t.Cleanup(func() {
		if !t.Failed() {
			return
		}

		// The test's context has ended by now.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		for _, args := range [][]string{
			{"get", "talosupgradestatus", clusterID, "-o", "yaml"},
			{"get", "machineupgradestatus"},
			{"get", "machine", "-o", "yaml"},
		} {
			out, err := exec.CommandContext(ctx, binary, cliArgs(bed, args...)...).CombinedOutput()
			t.Logf("upshift %s (%v):\n%s", strings.Join(args, " "), err, out)
		}

		for _, n := range bed.Fleet.Nodes() {
			var calls []string
			for _, e := range changingCalls(bed, n.Name(), 0) {
				calls = append(calls, strings.TrimSpace(e.Method+e.Event+" "+imageVersion(e.Image)+" "+e.Error))
			}

			t.Logf("%s (now on %s): %s", n.Name(), n.Version(), strings.Join(calls, "; "))
		}
	})
}

// changingCalls lists the journal entries, from the from-th on, of calls that change node (an install, a pull, a
// reboot, a configuration, an etcd membership change), and of the installs and reboots themselves.
func changingCalls(bed *testbed.Bed, node string, from int) []talosemu.Entry {
	var out []talosemu.Entry

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		if e.Node == node && changes(e) {
			out = append(out, e)
		}
	}

	return out
}

func changes(e talosemu.Entry) bool {
	switch e.Event {
	case talosemu.EventRebootDown, talosemu.EventInstalled, talosemu.EventInstallFailed:
		return true
	case "":
	default:
		return false
	}

	method := e.Method[strings.LastIndex(e.Method, "/")+1:]

	return slices.Contains([]string{
		"Upgrade", "Install", "Reboot", "Pull", "ImagePull", "ApplyConfiguration", "Reset", "Shutdown",
		"EtcdForfeitLeadership", "EtcdLeaveCluster", "EtcdRemoveMemberByID",
	}, method)
}

// installedVersions lists the versions node was sent installs of, from the from-th journal entry on, in order; an
// install sent again for the same version counts once.
func installedVersions(bed *testbed.Bed, node string, from int) []string {
	var out []string

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		if e.Node == node && isInstall(e) && e.Error == "" {
			if v := imageVersion(e.Image); len(out) == 0 || out[len(out)-1] != v {
				out = append(out, v)
			}
		}
	}

	return out
}

// nodesExcept lists the fleet's nodes other than those named.
func nodesExcept(bed *testbed.Bed, except []string) []string {
	var out []string

	for _, n := range bed.Fleet.Nodes() {
		if !slices.Contains(except, n.Name()) {
			out = append(out, n.Name())
		}
	}

	return out
}

func nodeVersion(t *testing.T, bed *testbed.Bed, id string) string {
	t.Helper()

	n, err := bed.Fleet.Node(id)
	require.NoError(t, err)

	return n.Version()
}

// versionsOf strips the "v" of Talos versions, as the emulator writes them.
func versionsOf(vs []string) []string {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		out = append(out, strings.TrimPrefix(v, "v"))
	}

	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)

	return s
}

// talosUpgradeHistory and machineUpgradeHistory are the parts of logged resources the tests read.
type (
	talosUpgradeHistory struct {
		Spec upgrade.TalosUpgradeStatusSpec `yaml:"spec"`
	}
	machineUpgradeHistory struct {
		Spec struct {
			Phase     upgrade.MachinePhase `yaml:"phase"`
			ToVersion string               `yaml:"toVersion"`
		} `yaml:"spec"`
	}
)

// loggedWrite is one write of a resource in the engine's event log.
type loggedWrite[T any] struct {
	doc    T
	seq    uint64
	writer string // a controller, or "user:NAME"
}

// historyOf reads the whole event log of one resource through the engine's History API (what `upshift history`
// shows), each write decoded into T; a log that was compacted would hide writes, so it fails the test.
func historyOf[T any](t *testing.T, bed *testbed.Bed, typ resource.Type, id string) []loggedWrite[T] {
	t.Helper()

	c, err := bed.Dial()
	require.NoError(t, err)

	defer c.Close() //nolint:errcheck

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	hist, err := c.History(ctx, resources.Namespace, typ, id)
	require.NoError(t, err)
	require.True(t, hist.RetainedSince.IsZero(), "the event log of %s %s was compacted: the test needs all of it", typ, id)

	out := make([]loggedWrite[T], 0, len(hist.Events))

	for _, ev := range hist.Events {
		if ev.Resource == "" {
			continue
		}

		var doc T
		require.NoError(t, yaml.Unmarshal([]byte(ev.Resource), &doc), "decoding %s %s at seq %d", typ, id, ev.Seq)

		out = append(out, loggedWrite[T]{doc: doc, seq: ev.Seq, writer: ev.Writer})
	}

	return out
}

// firstSeq is the sequence number of the first logged write that matches.
func firstSeq[T any](writes []loggedWrite[T], match func(T) bool) (uint64, bool) {
	for _, w := range writes {
		if match(w.doc) {
			return w.seq, true
		}
	}

	return 0, false
}
