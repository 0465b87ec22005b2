package integration

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// minKills is how many times, at least, the crash test kills the engine during one rollout.
const minKills = 10

// isRolloutStep matches the journal entries that are the rollout's side effects and their consequences, so kills
// land between them rather than between observations.
func isRolloutStep(e talosemu.Entry) bool {
	switch {
	case e.Error != "":
		return false
	case isInstall(e), e.Method == methodReboot, e.Method == methodForfeit:
		return true
	default:
		return e.Event == talosemu.EventRebootDown || e.Event == talosemu.EventRebootUp || e.Event == talosemu.EventInstalled
	}
}

// TestCrashDuringRollout runs the engine as a child process and kills it with SIGKILL at random moments of a
// rollout (after a random number of its side effects), at least minKills times; the rollout still converges, and
// the journal shows no install or reboot sent twice for a step (not even a LifecycleService install whose step the
// engine was killed in: the restarted engine does not send it again, and installs once more only when the machine
// came back from its reboot on its old version), never two control planes down, and no node is left cordoned.
func TestCrashDuringRollout(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	bed := startBed(t, testbed.WithEngineProcess(testbed.SelfCommand()), testbed.WithFleetOptions(
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(2), talosemu.WithTalosVersion(oldest),
		talosemu.WithRebootDowntime(rebootDowntime),
	))
	st := bed.State()

	t.Cleanup(func() {
		if t.Failed() {
			logJournal(t, bed.Fleet)
		}
	})

	waitObserved(t, bed, oldest)
	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) {
		s.Parallelism = "2"
		s.TalosVersion = "v" + newest
	})

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0)) //nolint:gosec // test randomness
	kills := 0

	deadline := time.Now().Add(10 * time.Minute)

	for !allOn(bed.Fleet, newest) {
		// Kill after one to three more side effects, or half-way through a step's wait (right after one), until
		// every node runs the target, so that kills land in every hop of the plan, the last one's lifecycle-flow
		// installs included. A pause without side effects (a restarted engine observing again on a loaded machine)
		// is waited out, not taken for the end of the rollout: only every node on the target ends it.
		require.True(t, time.Now().Before(deadline), "the rollout did not finish within 10 minutes (%d kills)", kills)

		from := len(bed.Fleet.Journal().Entries())
		if !waitSteps(t, bed, from, 1+rng.IntN(3), newest) {
			continue
		}

		require.NoError(t, bed.StopEngine())

		kills++

		require.NoError(t, bed.StartEngine(t.Context()))
	}

	t.Logf("killed the engine %d times during the rollout", kills)
	assert.GreaterOrEqual(t, kills, minKills, "the rollout was long enough for %d kills", minKills)

	waitTalos(t, st, "c1", 5*time.Minute, "the rollout to converge", phaseIs(upgrade.PhaseDone, newest))

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, newest, n.Version(), n.Name())
	}

	r := readRollout(bed.Fleet)
	assert.Empty(t, r.duplicates(), "no install or reboot sent twice for a step")
	assert.LessOrEqual(t, r.controlPlanesDownAtOnce(), 1, "never two control planes down")

	nodes, err := kubeClient(t, bed, "c1").CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	require.NoError(t, err)

	for _, n := range nodes.Items {
		assert.False(t, n.Spec.Unschedulable, "%s left cordoned", n.Name)
	}
}

// waitSteps waits until n rollout steps were recorded after the first from journal entries; false when every node
// came back on version before that, or nothing happened for a while.
func waitSteps(t *testing.T, bed *testbed.Bed, from, n int, version string) bool {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	return waitJournal(ctx, bed, from, n, func(e talosemu.Entry) bool {
		if allOn(bed.Fleet, version) {
			cancel() // no step comes after the last node's reboot-up on the target
		}

		return isRolloutStep(e)
	}) == nil
}

// allOn reports whether every node of fleet runs version.
func allOn(fleet *talosemu.Fleet, version string) bool {
	for _, n := range fleet.Nodes() {
		if !sameVersion(n.Version(), version) {
			return false
		}
	}

	return true
}

// logJournal logs the fleet's journal, without the observations, to explain a failure.
func logJournal(t *testing.T, fleet *talosemu.Fleet) {
	t.Helper()

	for _, e := range fleet.Journal().Entries() {
		if e.Event != "" || isInstall(e) || e.Method == methodReboot || e.Method == methodForfeit || strings.Contains(e.Method, "Pull") {
			t.Logf("%s %-8s %s%s image=%s error=%s", e.Time.Format(time.StampMicro), e.Node, e.Method, e.Event, e.Image, e.Error)
		}
	}
}

// killEngineDuring kills the bed's engine with SIGKILL and starts it again each time n more journal entries match,
// where the i-th kill (from 0) waits for what steps(i) returns, until finished or nothing matched for 30 seconds;
// it returns how many times it killed the engine.
func killEngineDuring(t *testing.T, bed *testbed.Bed, finished func() bool, steps func(i int) (n int, match func(talosemu.Entry) bool)) int {
	t.Helper()

	kills := 0

	for !finished() {
		n, match := steps(kills)

		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		err := waitJournal(ctx, bed, len(bed.Fleet.Journal().Entries()), n, func(e talosemu.Entry) bool {
			if finished() {
				cancel() // no side effect comes after the last one
			}

			return match(e)
		})

		cancel()

		if err != nil {
			return kills
		}

		require.NoError(t, bed.StopEngine())

		kills++

		require.NoError(t, bed.StartEngine(t.Context()))
	}

	return kills
}
