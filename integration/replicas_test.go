package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/store"
)

// replicaLease is the replicas' lease TTL in these tests: a leader that stops renewing it is replaced after it.
const replicaLease = 5 * time.Second

// takeoverBound is how soon another replica must lead after the leader dies.
const takeoverBound = 15 * time.Second

// minFailovers is how many times, at least, the failover test kills the leader during one rollout.
const minFailovers = 5

// startReplicas starts 3 etcd members, 3 engine replicas (child processes) on them and a lite fleet of 3 control
// planes and 2 workers on version (reboots take rebootDowntime unless opts say otherwise), and logs the journal and
// the replicas' logs if the test fails.
func startReplicas(t *testing.T, version string, opts ...talosemu.Option) *testbed.ReplicaSet {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	rs, err := testbed.StartReplicas(ctx, t.TempDir(), 3, 3, replicaLease, testbed.SelfCommand(), append([]talosemu.Option{
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(2), talosemu.WithTalosVersion(version), talosemu.WithRebootDowntime(rebootDowntime),
	}, opts...)...)
	require.NoError(t, err)

	t.Cleanup(func() {
		if t.Failed() {
			logJournal(t, rs.Fleet)

			for i := range rs.Replicas() {
				log, err := rs.Log(i)
				t.Logf("log of %s (%v):\n%s", testbed.ReplicaName(i), err, lastLines(log, 60))
			}
		}

		require.NoError(t, rs.Close())
	})

	for _, n := range rs.Fleet.Nodes() {
		waitFor(t, rs.State(0), observe.NewMachineStatus(n.Name()).Metadata(), time.Minute, n.Name()+" observed on "+version,
			func(s *observe.MachineStatus) bool { return sameVersion(s.TypedSpec().TalosVersion, version) })
	}

	return rs
}

// pollInterval is how often a wait on the election asks a replica again (the election has no watch in the API);
// it bounds how precisely takeovers are timed.
const pollInterval = 10 * time.Millisecond

// waitLeader waits until replica asked says that a replica other than not leads, and returns it.
func waitLeader(t testing.TB, rs *testbed.ReplicaSet, asked, not int, timeout time.Duration) int {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()

	leader := -1

	pollEngine(ctx, t, rs, asked, fmt.Sprintf("replica %d to name a leader other than %d", asked, not), func(st server.EngineStatus) bool {
		for i := range rs.Replicas() {
			if st.Leader == testbed.ReplicaName(i) && i != not {
				leader = i
			}
		}

		return leader >= 0
	})

	return leader
}

// pollEngine asks replica i for its engine status until cond holds, every pollInterval, failing the test when ctx
// ends first.
func pollEngine(ctx context.Context, t testing.TB, rs *testbed.ReplicaSet, i int, what string, cond func(server.EngineStatus) bool) {
	t.Helper()

	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()

	for {
		if st, err := rs.Client(i).EngineStatus(ctx); err == nil && cond(st) {
			return
		}

		select {
		case <-ctx.Done():
			require.FailNow(t, "timed out waiting for "+what)
		case <-ticker.C:
		}
	}
}

// other is a replica that is neither a nor b.
func other(a, b int) int {
	for i := range 3 {
		if i != a && i != b {
			return i
		}
	}

	return -1
}

// startReplicaRollout starts replicas (startReplicas) on the oldest supported Talos and a rollout to the newest,
// two machines at a time, and returns them with the replica leading at the start and the target.
func startReplicaRollout(t *testing.T) (*testbed.ReplicaSet, int, string) {
	t.Helper()

	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	rs := startReplicas(t, oldest)
	leader := waitLeader(t, rs, 0, -1, takeoverBound)

	setCluster(t, rs.State(0), "c1", func(s *cluster.ClusterSpec) {
		s.Parallelism = "2"
		s.TalosVersion = "v" + newest
	})

	return rs, leader, newest
}

// TestReplicasFailover kills the leading replica with SIGKILL at random moments of a Talos rollout (after one to
// three of its side effects), at least minFailovers times: each time another replica leads within takeoverBound
// and the rollout goes on and finishes; the journal shows no install or reboot sent twice for a step, never two
// control planes down, control planes first.
func TestReplicasFailover(t *testing.T) {
	rs, leader, newest := startReplicaRollout(t)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0)) //nolint:gosec // test randomness
	deadline := time.Now().Add(10 * time.Minute)

	var takeovers []time.Duration

	for !allOn(rs.Fleet, newest) {
		require.True(t, time.Now().Before(deadline), "the rollout did not finish within 10 minutes (%d failovers)", len(takeovers))

		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		err := waitFleetJournal(ctx, rs.Fleet, len(rs.Fleet.Journal().Entries()), 1+rng.IntN(3), func(e talosemu.Entry) bool {
			if allOn(rs.Fleet, newest) {
				cancel()
			}

			return isRolloutStep(e)
		})

		cancel()

		if err != nil {
			continue
		}

		require.NoError(t, rs.Kill(leader))

		killed := time.Now()
		next := waitLeader(t, rs, other(leader, -1), leader, takeoverBound)
		takeovers = append(takeovers, time.Since(killed))

		require.NoError(t, rs.StartReplica(t.Context(), leader))

		leader = next
	}

	t.Logf("killed the leader %d times during the rollout; takeovers took %v", len(takeovers), takeovers)
	assert.GreaterOrEqual(t, len(takeovers), minFailovers, "the rollout was long enough for %d failovers", minFailovers)

	for i := range rs.Replicas() {
		waitTalos(t, rs.State(i), "c1", 2*time.Minute, "the rollout to converge, read on replica "+testbed.ReplicaName(i), phaseIs(upgrade.PhaseDone, newest))
	}

	r := readRollout(rs.Fleet)
	assert.Empty(t, r.duplicates(), "no install or reboot sent twice for a step")
	assert.LessOrEqual(t, r.controlPlanesDownAtOnce(), 1, "never two control planes down")
	assert.NoError(t, r.controlPlanesFirst())
}

// isSideEffect matches a call that changes a node: what a replica that no longer leads must never send.
func isSideEffect(e talosemu.Entry) bool {
	return e.Event == "" && (isInstall(e) || e.Method == methodReboot || e.Method == methodForfeit || e.Method == methodApplyConfiguration)
}

// methodApplyConfiguration is the Talos call that applies a machine config.
const methodApplyConfiguration = "/machine.MachineService/ApplyConfiguration"

// TestReplicaPausedPastItsLease pauses the leader with SIGSTOP in the middle of a rollout until another replica
// leads and has acted, then pauses that one and resumes the old leader: until the old one has found its lease
// lost and stopped its controllers, the fleet receives nothing (the only replica that could send is the one whose
// term ended); the rollout then finishes with no step sent twice.
func TestReplicaPausedPastItsLease(t *testing.T) {
	rs, old, newest := startReplicaRollout(t)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	require.NoError(t, waitFleetJournal(ctx, rs.Fleet, 0, 2, isSideEffect), "the rollout started")
	require.NoError(t, rs.Pause(old))

	next := waitLeader(t, rs, other(old, -1), old, takeoverBound)
	require.NoError(t, waitFleetJournal(ctx, rs.Fleet, len(rs.Fleet.Journal().Entries()), 1, isSideEffect), "the new leader acts")

	require.NoError(t, rs.Pause(next))

	from := len(rs.Fleet.Journal().Entries())

	require.NoError(t, rs.Resume(old))

	// The old leader comes back believing it leads until its keepalive finds the lease gone; then its term ends
	// (the controllers and their executors stopped) and it says so.
	var resumed server.EngineStatus

	pollEngine(ctx, t, rs, old, "the resumed replica to find its lease lost", func(st server.EngineStatus) bool {
		resumed = st

		return !st.Leading
	})
	require.Equal(t, testbed.ReplicaName(next), resumed.Leader, "the paused new leader still holds its lease")

	for _, e := range rs.Fleet.Journal().Entries()[from:] {
		assert.False(t, isSideEffect(e) && e.Error == "", "sent by the replica whose term ended: %s %s %s", e.Node, e.Method, e.Image)
	}

	// Whether the old leader tried to write before it found its lease gone depends on where the pause caught it.
	log, err := rs.Log(old)
	require.NoError(t, err)
	t.Logf("writes of the resumed replica refused by the fence: %d", strings.Count(log, store.ErrNotLeader.Error()))

	require.NoError(t, rs.Resume(next))

	waitTalos(t, rs.State(old), "c1", 5*time.Minute, "the rollout to converge", phaseIs(upgrade.PhaseDone, newest))

	r := readRollout(rs.Fleet)
	assert.Empty(t, r.duplicates(), "no install or reboot sent twice for a step")
	assert.LessOrEqual(t, r.controlPlanesDownAtOnce(), 1, "never two control planes down")
}

// TestReplicasSeeEveryTransition watches every MachineUpgradeStatus on every replica (as `upshift get -w` does,
// through the same API) during a rollout that one replica leads: each replica's watch delivers every version of
// every status that the event log holds, whichever replica wrote it, and each replica reads the rollout Done.
func TestReplicasSeeEveryTransition(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[len(supported)-2], supported[len(supported)-1]

	rs := startReplicas(t, oldest)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	watchers := make([]*versionWatch, rs.Replicas())

	for i := range rs.Replicas() {
		watchers[i] = watchVersions(ctx, t, rs.State(i), upgrade.NewMachineUpgradeStatus("").Metadata())
	}

	setCluster(t, rs.State(1), "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + newest })

	for i := range rs.Replicas() {
		waitTalos(t, rs.State(i), "c1", 5*time.Minute, "the rollout to converge on replica "+testbed.ReplicaName(i), phaseIs(upgrade.PhaseDone, newest))
	}

	list, err := rs.State(0).List(t.Context(), upgrade.NewMachineUpgradeStatus("").Metadata())
	require.NoError(t, err)
	require.Len(t, list.Items, len(rs.Fleet.Nodes()))

	logged := map[resource.ID][]uint64{}

	for _, item := range list.Items {
		h, err := rs.Client(2).History(t.Context(), item.Metadata().Namespace(), item.Metadata().Type(), item.Metadata().ID())
		require.NoError(t, err)
		require.NotEmpty(t, h.Events, "history of %s", item.Metadata().ID())

		for _, ev := range h.Events {
			logged[item.Metadata().ID()] = append(logged[item.Metadata().ID()], ev.Version)
		}
	}

	for i, w := range watchers {
		missing := w.waitAll(t.Context(), logged, time.Minute)
		assert.Empty(t, missing, "versions replica %d's watch never delivered", i)
	}
}

// versionWatch records the versions of every resource of a kind that a watch delivers.
type versionWatch struct {
	mu      sync.Mutex
	seen    map[resource.ID]map[uint64]bool
	changed chan struct{} // closed and replaced on every event
}

func watchVersions(ctx context.Context, t *testing.T, st state.State, kind resource.Kind) *versionWatch {
	t.Helper()

	w := &versionWatch{seen: map[resource.ID]map[uint64]bool{}, changed: make(chan struct{})}
	ch := make(chan state.Event)

	require.NoError(t, st.WatchKind(ctx, kind, ch, state.WithBootstrapContents(true)))

	go func() {
		for {
			var ev state.Event

			select {
			case <-ctx.Done():
				return
			case ev = <-ch:
			}

			if ev.Type != state.Created && ev.Type != state.Updated {
				continue
			}

			md := ev.Resource.Metadata()

			w.mu.Lock()
			if w.seen[md.ID()] == nil {
				w.seen[md.ID()] = map[uint64]bool{}
			}

			w.seen[md.ID()][md.Version().Value()] = true
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
	}()

	return w
}

// waitAll waits until the watch delivered every version in want from the first it delivered of each resource (what
// was written before the watch began comes as one bootstrap event), and returns those still missing after timeout.
func (w *versionWatch) waitAll(ctx context.Context, want map[resource.ID][]uint64, timeout time.Duration) []string {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	for {
		w.mu.Lock()
		changed := w.changed

		var missing []string

		for id, versions := range want {
			first := uint64(0)
			for v := range w.seen[id] {
				if first == 0 || v < first {
					first = v
				}
			}

			for _, v := range versions {
				if first == 0 || (v >= first && !w.seen[id][v]) {
					missing = append(missing, fmt.Sprintf("%s@%d", id, v))
				}
			}
		}
		w.mu.Unlock()

		if len(missing) == 0 {
			return nil
		}

		select {
		case <-ctx.Done():
			return missing
		case <-changed:
		}
	}
}

// TestReplicasEtcdQuorum stops etcd members under a rollout: with one of three gone the rollout goes on; with two
// gone no replica leads, the fleet receives nothing, and both `upshift status` and the leader's log say why; once a
// member returns a replica leads again and the rollout finishes, with no step sent twice and every status's history
// whole (versions 1 to the last, none lost).
func TestReplicasEtcdQuorum(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	// Slow reboots keep the rollout going while quorum comes and goes.
	rs := startReplicas(t, oldest, talosemu.WithRebootDowntime(2*time.Second))
	leader := waitLeader(t, rs, 0, -1, takeoverBound)

	rs.Etcd.StopMember(0)

	setCluster(t, rs.State(0), "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v" + newest })

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	require.NoError(t, waitFleetJournal(ctx, rs.Fleet, 0, 3, isSideEffect), "the rollout goes on with one etcd member of three down")

	rs.Etcd.StopMember(1)
	require.False(t, allOn(rs.Fleet, newest), "the rollout is still under way when quorum is lost")

	// Within a lease every replica finds it cannot lead.
	for i := range rs.Replicas() {
		pollEngine(ctx, t, rs, i, fmt.Sprintf("replica %d to stop leading without quorum", i), func(st server.EngineStatus) bool {
			return !st.Leading && st.Problem != ""
		})
	}

	from := len(rs.Fleet.Journal().Entries())

	for i := range rs.Replicas() {
		out, errOut, err := replicaCLI(t, rs, i, "status", "c1")
		require.Error(t, err, "status cannot read the cluster without quorum")
		assert.Contains(t, out, "engine: no replica leads", "replica %d", i)
		assert.Contains(t, out, "without quorum", "replica %d", i)
		assert.Contains(t, errOut, "until etcd answers again", "replica %d", i)
	}

	log, err := rs.Log(leader)
	require.NoError(t, err)
	assert.Contains(t, log, "lost the leadership lease", "the leader's log says why it stopped")

	for _, e := range rs.Fleet.Journal().Entries()[from:] {
		assert.False(t, isSideEffect(e) && e.Error == "", "sent without quorum: %s %s", e.Node, e.Method)
	}

	require.NoError(t, rs.Etcd.StartMember(1))
	waitLeader(t, rs, 2, -1, takeoverBound)

	waitTalos(t, rs.State(2), "c1", 5*time.Minute, "the rollout to converge", phaseIs(upgrade.PhaseDone, newest))

	r := readRollout(rs.Fleet)
	assert.Empty(t, r.duplicates(), "no install or reboot sent twice for a step")

	list, err := rs.State(1).List(t.Context(), upgrade.NewMachineUpgradeStatus("").Metadata())
	require.NoError(t, err)

	for _, item := range list.Items {
		h, err := rs.Client(1).History(t.Context(), item.Metadata().Namespace(), item.Metadata().Type(), item.Metadata().ID())
		require.NoError(t, err)

		for i, ev := range h.Events {
			assert.Equal(t, uint64(i+1), ev.Version, "%s: event %d of its history", item.Metadata().ID(), i)
		}

		assert.Equal(t, item.Metadata().Version().Value(), uint64(len(h.Events)), "%s: the history ends at the state", item.Metadata().ID())
	}
}

// replicaCLI runs the upshift binary against replica i as the admin.
func replicaCLI(t *testing.T, rs *testbed.ReplicaSet, i int, args ...string) (stdout, stderr string, err error) {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	var out, errOut bytes.Buffer

	cmd := exec.CommandContext(ctx, binary, append(args, "--endpoint", rs.Endpoint(i), "--config", rs.ConfigPath())...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()

	return out.String(), errOut.String(), err
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")

	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
