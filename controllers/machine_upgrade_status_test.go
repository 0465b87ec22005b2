package controllers_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/resource/typed"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/validate"
)

const (
	v13 = "v1.13.0"
	v14 = "v1.14.1"
)

// startUpgrades runs the rollout controllers over a validating in-memory state until the test ends.
func startUpgrades(t *testing.T, f *fakeFleet, opts ...controllers.UpgradeOption) (context.Context, state.State) {
	t.Helper()

	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))

	return startEngine(t, st, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), controllers.Upgrades(f, fastUpgrades(opts...)...)), st
}

// startEngine runs registrars over st until the test ends.
func startEngine(t *testing.T, st state.State, logger *zap.Logger, registrars ...controllers.Registrar) context.Context {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	done := runEngine(ctx, st, logger, registrars...)

	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	return ctx
}

func runUpgrades(ctx context.Context, t *testing.T, st state.State, f *fakeFleet, opts ...controllers.UpgradeOption) <-chan error {
	return runEngine(ctx, st, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), controllers.Upgrades(f, fastUpgrades(opts...)...))
}

// runEngine runs registrars over st until ctx ends.
func runEngine(ctx context.Context, st state.State, logger *zap.Logger, registrars ...controllers.Registrar) <-chan error {
	rt := controllers.NewRuntime(st, logger, controllers.WithRegistrars(registrars...))
	done := make(chan error, 1)

	go func() { done <- rt.Run(ctx) }()

	return done
}

// createAndUpgrade creates the fleet on v13, waits until every machine is observed on it, then asks for v14: the
// rollout then decides with the whole cluster in view.
func createAndUpgrade(ctx context.Context, t *testing.T, st state.State, f *fakeFleet, change func(*cluster.ClusterSpec)) {
	t.Helper()

	createUpgradeFleet(ctx, t, st, f, v13, change)
	assertDone(ctx, t, st, v13)
	setTarget(ctx, t, st, v14)
}

// updateCluster changes the Cluster c1 with change.
func updateCluster(ctx context.Context, t *testing.T, st state.State, change func(*cluster.Cluster)) {
	t.Helper()

	_, err := safe.StateUpdateWithConflicts(ctx, st, cluster.NewCluster("c1").Metadata(), func(c *cluster.Cluster) error {
		change(c)

		return nil
	})
	require.NoError(t, err)
}

func setTarget(ctx context.Context, t *testing.T, st state.State, version string) {
	t.Helper()

	updateCluster(ctx, t, st, func(c *cluster.Cluster) { c.TypedSpec().TalosVersion = version })
}

// assertClusterStatus waits until check holds for the spec of c1's status resource of spec T (extension E).
func assertClusterStatus[T typed.DeepCopyable[T], E typed.Extension](ctx context.Context, t *testing.T, st state.State, check func(*T, *assert.Assertions)) {
	t.Helper()

	rtestutils.AssertResource(ctx, t, st, "c1", func(s *typed.Resource[T, E], a *assert.Assertions) {
		check(s.TypedSpec(), a)
	}, rtestutils.WithNamespace(resources.Namespace))
}

func assertUpgrade(ctx context.Context, t *testing.T, st state.State, check func(*upgrade.TalosUpgradeStatusSpec, *assert.Assertions)) {
	t.Helper()

	assertClusterStatus[upgrade.TalosUpgradeStatusSpec, upgrade.TalosUpgradeStatusExtension](ctx, t, st, check)
}

func assertDone(ctx context.Context, t *testing.T, st state.State, version string) {
	t.Helper()

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseDone, s.Phase, "%+v", s)
		a.Equal(version, s.ToVersion)
		a.Equal(s.Total, s.Done)
	})
}

func machineUpgrade(ctx context.Context, t *testing.T, st state.State, id string) upgrade.MachineUpgradeStatusSpec {
	t.Helper()

	mus, err := safe.StateGetByID[*upgrade.MachineUpgradeStatus](ctx, st, id)
	require.NoError(t, err)

	return *mus.TypedSpec()
}

// The whole lifecycle flow on 3 control planes and 4 workers with a worker parallelism of 2: control planes first
// and one at a time, leadership forfeited before the leader's reboot, per node cordon → drain → reboot →
// uncordon, never more than 2 workers in flight and at some moment exactly 2, one install and one reboot each.
func TestRolloutLifecycleFlow(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 3, 4)
	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, v13, func(c *cluster.ClusterSpec) { c.Parallelism = "2" })

	assertDone(ctx, t, st, v13)
	setTarget(ctx, t, st, v14)
	assertDone(ctx, t, st, v14)

	f.mu.Lock()
	maxCPsDown, maxWorkers := f.maxCPsDown, f.maxWorkersBusy
	f.mu.Unlock()

	assert.Equal(t, 1, maxCPsDown, "control planes down at once")
	assert.Equal(t, 2, maxWorkers, "workers in flight at once")

	cps, workers := []string{"cp-1", "cp-2", "cp-3"}, []string{"w-1", "w-2", "w-3", "w-4"}

	lastCP := 0
	for _, cp := range cps {
		assert.Equal(t, []string{"PullImage", "Install", "EtcdForfeitLeadership", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf(cp), cp)
		lastCP = max(lastCP, f.lastCall(cp, "Uncordon"))
	}

	// The etcd leader (cp-1) goes last, so leadership moves once.
	assert.Greater(t, f.firstCall("cp-1", "PullImage"), f.lastCall("cp-3", "Uncordon"))

	for _, w := range workers {
		assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf(w), w)
		assert.Greater(t, f.firstCall(w, "PullImage"), lastCP, "%s started before the control planes finished", w)
		assert.Equal(t, v14, f.get(w).version)
		assert.False(t, f.get(w).cordoned)

		mus := machineUpgrade(ctx, t, st, w)
		assert.Equal(t, upgrade.MachineDone, mus.Phase)
		assert.Equal(t, v13, mus.FromVersion)
		assert.Equal(t, 1, mus.Attempt)
		assert.Equal(t, "ghcr.io/siderolabs/installer:v1.14.1", mus.Image)
		assert.NotEmpty(t, mus.PreRebootBootID)
	}
}

// Talos < 1.13 takes the legacy flow: cordon, drain, then one MachineService.Upgrade that reboots.
func TestRolloutLegacyFlow(t *testing.T) {
	t.Parallel()

	f := newFakeFleet("v1.12.0", 3, 1)
	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, "v1.12.0", nil)

	assertDone(ctx, t, st, "v1.12.0")
	setTarget(ctx, t, st, v13)
	assertDone(ctx, t, st, v13)

	for _, cp := range []string{"cp-1", "cp-2", "cp-3"} {
		assert.Equal(t, []string{"EtcdForfeitLeadership", "Cordon", "Drain", "LegacyUpgrade", "Uncordon"}, f.callsOf(cp), cp)
	}

	assert.Equal(t, []string{"Cordon", "Drain", "LegacyUpgrade", "Uncordon"}, f.callsOf("w-1"))
	f.mu.Lock()
	defer f.mu.Unlock()

	assert.Equal(t, 1, f.maxCPsDown, "control planes down at once")
}

// While one etcd member is unhealthy no control plane starts, and the cluster says why: a routine wait first,
// Blocked once the member stays unhealthy past the grace period (a requeue decides it, no other event comes); it
// proceeds once healed.
func TestRolloutEtcdGate(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 3, 1)
	f.set("cp-2", func(n *fakeNode) { n.etcdUnhealthy = true })

	ctx, st := startUpgrades(t, f, controllers.WithEtcdGrace(500*time.Millisecond))
	createAndUpgrade(ctx, t, st, f, nil)

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseBlocked, s.Phase)
		a.Contains(s.Error, "waits for etcd")
		a.Contains(s.Error, "is not healthy")
		a.False(s.EtcdWaitSince.IsZero())
	})

	for _, n := range []string{"cp-1", "cp-2", "cp-3", "w-1"} {
		assert.Empty(t, f.callsOf(n), n)
	}

	f.set("cp-2", func(n *fakeNode) { n.etcdUnhealthy = false })
	assertDone(ctx, t, st, v14)
}

// A machine back on its old version fails with "rolled back": it is uncordoned, gets no further install, no other
// machine starts, and the cluster shows Failed with the machine until a retry, after which it upgrades.
func TestRolloutRolledBack(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 3)
	f.set("w-1", func(n *fakeNode) { n.rollback = true })

	ctx, st := startUpgrades(t, f)
	createAndUpgrade(ctx, t, st, f, nil)

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseFailed, s.Phase)
		a.Equal("w-1", s.FailedMachine)
		a.Contains(s.Error, "w-1: rolled back")
	})

	mus := machineUpgrade(ctx, t, st, "w-1")
	assert.Equal(t, upgrade.MachineFailed, mus.Phase)
	assert.Contains(t, mus.Error, controllers.ReasonRolledBack)
	assert.False(t, mus.InstallUnconfirmed)
	assert.False(t, f.get("w-1").cordoned)
	assert.Equal(t, 1, f.count("w-1", "Install"))
	assert.Empty(t, f.callsOf("w-2"))
	assert.Empty(t, f.callsOf("w-3"))

	f.set("w-1", func(n *fakeNode) { n.rollback = false })
	requestRetry(ctx, t, st, "w-1", mus.Attempt)

	assertDone(ctx, t, st, v14)
	assert.Equal(t, 2, machineUpgrade(ctx, t, st, "w-1").Attempt)
	assert.Equal(t, 2, f.count("w-1", "Install"))
}

func requestRetry(ctx context.Context, t *testing.T, st state.State, machine string, attempt int) {
	t.Helper()

	failed := machineUpgrade(ctx, t, st, machine)
	require.Equal(t, attempt, failed.Attempt, "the attempt to retry")

	_, err := safe.StateUpdateWithConflicts(ctx, st, cluster.NewMachine(machine).Metadata(), func(m *cluster.Machine) error {
		m.Metadata().Annotations().Set(upgrade.RetryAnnotation, failed.RetryValue())

		return nil
	})
	require.NoError(t, err)
}

// A drain that does not finish within the cluster's drain timeout fails the machine with "drain", and the node
// is uncordoned again before it fails; it is never rebooted.
func TestRolloutDrainTimeout(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 2)
	f.drainBlocks["w-1"] = true

	ctx, st := startUpgrades(t, f)
	createAndUpgrade(ctx, t, st, f, func(c *cluster.ClusterSpec) { c.DrainTimeout = "50ms" })

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseFailed, s.Phase)
		a.Contains(s.Error, "w-1: drain")
	})

	assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Uncordon"}, f.callsOf("w-1"))
	assert.False(t, f.get("w-1").cordoned)
	assert.Empty(t, f.callsOf("w-2"))
}

// Locked machines are skipped without holding a slot, listed as waiting, and upgraded once unlocked.
func TestRolloutLockedMachine(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 3)
	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, v13, nil)
	require.NoError(t, st.Create(ctx, cluster.NewMachineLock("w-2")))

	assertDone(ctx, t, st, v13)
	setTarget(ctx, t, st, v14)

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal([]string{"w-2"}, s.WaitingOnLock)
		a.Equal(2, s.Done)
		a.Equal(3, s.Total)
		a.Empty(s.Current)
	})

	assert.Empty(t, f.callsOf("w-2"))

	require.NoError(t, st.Destroy(ctx, cluster.NewMachineLock("w-2").Metadata()))
	assertDone(ctx, t, st, v14)
}

// Setting the version back in the middle of the rollout reverts: the machine in flight finishes its step, and
// every machine ends on the old version.
func TestRolloutRevert(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 1, 2)
	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, v13, nil)
	assertDone(ctx, t, st, v13)

	reverted := make(chan struct{})
	f.hook(func(c fakeCall) {
		if c.Node == "w-1" && c.Method == "Install" {
			select {
			case <-reverted:
			default:
				setTarget(ctx, t, st, v13)
				close(reverted)
			}
		}
	})

	setTarget(ctx, t, st, v14)
	<-reverted

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseDone, s.Phase, "%+v", s)
		a.Equal(v13, s.ToVersion)
	})

	for _, n := range []string{"cp-1", "w-1", "w-2"} {
		assert.Equal(t, v13, f.get(n).version, n)
		assert.False(t, f.get(n).cordoned, n)
	}

	assert.Equal(t, 2, f.count("cp-1", "Reboot"), "cp-1 went to %s and back", v14)
	assert.Empty(t, f.callsOf("w-2"))
}

// An install whose answer broke off after it reached the machine is not sent again: the reboot shows it happened.
func TestRolloutInstallAnswerLost(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 1)
	f.set("w-1", func(n *fakeNode) { n.installBreaks = true })

	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, v13, nil)
	assertDone(ctx, t, st, v13)
	setTarget(ctx, t, st, v14)
	assertDone(ctx, t, st, v14)

	assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf("w-1"))
	assert.False(t, machineUpgrade(ctx, t, st, "w-1").InstallUnconfirmed)
}

// A machine whose install is staged when the cluster's target moves carries on to its reboot on the staged
// version, then takes the new target in a round of its own: a second install before the reboot would overwrite
// the fallback boot entry.
func TestRolloutRetargetAfterInstall(t *testing.T) {
	t.Parallel()

	const first = "v1.13.4"

	f := newFakeFleet(v13, 0, 1)
	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, v13, nil)
	assertDone(ctx, t, st, v13)

	f.hook(func(c fakeCall) {
		if c.Method == "Drain" {
			f.hook(nil)
			setTarget(ctx, t, st, v14)

			// The drain ends once the cluster's target moved, so the machine sees the new one after it.
			_, err := st.WatchFor(ctx, upgrade.NewTalosUpgradeStatus("c1").Metadata(), state.WithCondition(func(r resource.Resource) (bool, error) {
				tus, ok := r.(*upgrade.TalosUpgradeStatus)

				return ok && strings.TrimPrefix(tus.TypedSpec().Target, "v") == strings.TrimPrefix(v14, "v"), nil
			}))
			assert.NoError(t, err)
		}
	})

	setTarget(ctx, t, st, first)
	assertDone(ctx, t, st, v14)

	round := []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}
	assert.Equal(t, append(slices.Clone(round), round...), f.callsOf("w-1"))
	assert.Equal(t, v14, f.get("w-1").version)
	assert.False(t, f.get("w-1").cordoned)
}

// An engine restart in the middle of the step that reboots resumes it from what it observes: the reboot (or the
// legacy upgrade, which reboots) is not sent again, and the machine finishes.
func TestRolloutRestartMidReboot(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		from, to, method string
		step             upgrade.MachinePhase
		calls            []string
	}{
		{from: v13, to: v14, method: "Reboot", step: upgrade.MachineRebooting, calls: []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}},
		{from: "v1.12.0", to: v13, method: "LegacyUpgrade", step: upgrade.MachineInstalling, calls: []string{"Cordon", "Drain", "LegacyUpgrade", "Uncordon"}},
	} {
		t.Run(tc.method, func(t *testing.T) {
			t.Parallel()

			f := newFakeFleet(tc.from, 0, 1)
			f.rebootDelay = 200 * time.Millisecond

			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()

			st := stopEngineOn(ctx, t, f, tc.method, tc.from, tc.to)
			require.Equal(t, tc.step, machineUpgrade(ctx, t, st, "w-1").Phase, "the first engine stopped inside the step")

			second := runUpgrades(ctx, t, st, f)

			assertDone(ctx, t, st, tc.to)
			cancel()
			require.NoError(t, <-second)

			assert.Equal(t, 1, f.count("w-1", tc.method))
			assert.Equal(t, tc.calls, f.callsOf("w-1"))
		})
	}
}

// stopEngineOn runs an engine that upgrades f (created on from) to to, and stops it as the first call of method
// goes out, before it can record the end of the step; it returns the state the next engine resumes from.
func stopEngineOn(ctx context.Context, t *testing.T, f *fakeFleet, method, from, to string) state.State {
	t.Helper()

	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	firstCtx, stopFirst := context.WithCancel(ctx)
	called := make(chan struct{})
	once := sync.OnceFunc(func() { close(called) })

	f.hook(func(c fakeCall) {
		if c.Method == method {
			stopFirst() // the engine dies as the call goes out, before it records the step's end
			once()
		}
	})

	first := runUpgrades(firstCtx, t, st, f)
	createUpgradeFleet(ctx, t, st, f, from, nil)
	assertDone(ctx, t, st, from)
	setTarget(ctx, t, st, to)

	select {
	case <-called:
	case <-ctx.Done():
		t.Fatalf("no %s call", method)
	}

	require.NoError(t, <-first)
	f.hook(nil)

	return st
}

// An engine restart inside the lifecycle flow's Installing never sends the install again: whether it reached the
// machine shows only after the reboot. Back on the target, the machine is done with one install. Back on its old
// version, the install never happened: the machine installs once more, staying cordoned, and is done, or, if that
// round rolls back too, fails "rolled back" (uncordoned, as when the second install fails). If the target was reverted to the old version meanwhile, the machine
// is done there without another install.
func TestRolloutRestartMidInstall(t *testing.T) {
	t.Parallel()

	const lost = "the install did not reach the machine"

	for _, tc := range []struct {
		name     string
		change   func(*fakeNode) // on w-1 after the first engine stopped
		revert   bool            // set the target back to v13 as the second engine reboots w-1
		phase    upgrade.MachinePhase
		err      string // what the Error of a failed upgrade starts with
		to       string // the ToVersion w-1's upgrade ends with
		version  string // w-1's version at the end
		installs int
		calls    []string
	}{
		{
			name: "install reached the machine", phase: upgrade.MachineDone, to: v14, version: v14, installs: 1,
			calls: []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"},
		},
		{
			name: lost, change: func(n *fakeNode) { n.staged = "" }, phase: upgrade.MachineDone, to: v14, version: v14, installs: 2,
			calls: []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Install", "Cordon", "Drain", "Reboot", "Uncordon"},
		},
		{
			name: lost + ", then a rollback", change: func(n *fakeNode) { n.staged, n.rollback = "", true }, phase: upgrade.MachineFailed, err: controllers.ReasonRolledBack, to: v14, version: v13, installs: 2,
			calls: []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Install", "Cordon", "Drain", "Reboot", "Uncordon"},
		},
		{
			name: lost + ", then an install failure", change: func(n *fakeNode) { n.staged, n.installFails = "", true }, phase: upgrade.MachineFailed, err: "install", to: v14, version: v13, installs: 2,
			calls: []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Install", "Uncordon"},
		},
		{
			name: lost + ", target reverted", change: func(n *fakeNode) { n.staged = "" }, revert: true, phase: upgrade.MachineDone, to: v13, version: v13, installs: 1,
			calls: []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			f := newFakeFleet(v13, 0, 1)

			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()

			st := stopEngineOn(ctx, t, f, "Install", v13, v14)
			require.Equal(t, upgrade.MachineInstalling, machineUpgrade(ctx, t, st, "w-1").Phase, "the first engine stopped inside the step")

			if tc.change != nil {
				f.set("w-1", tc.change)
			}

			if tc.revert {
				f.hook(func(c fakeCall) {
					if c.Method != "Reboot" {
						return
					}

					setTarget(ctx, t, st, v13)

					// The reboot takes effect once the rollout has planned the revert: the case is a revert the engine
					// knows of when the machine comes back, not a race between the two.
					_, err := st.WatchFor(ctx, upgrade.NewTalosUpgradeStatus("c1").Metadata(), state.WithCondition(func(r resource.Resource) (bool, error) {
						s, ok := r.(*upgrade.TalosUpgradeStatus)

						return ok && s.TypedSpec().ToVersion == v13, nil
					}))
					assert.NoError(t, err, "the rollout plans the revert")
				})
			}

			second := runUpgrades(ctx, t, st, f)

			rtestutils.AssertResource(ctx, t, st, "w-1", func(mus *upgrade.MachineUpgradeStatus, a *assert.Assertions) {
				a.Equal(tc.phase, mus.TypedSpec().Phase, "%+v", mus.TypedSpec())
			}, rtestutils.WithNamespace(resources.Namespace))

			cancel()
			require.NoError(t, <-second)

			mus := machineUpgrade(t.Context(), t, st, "w-1")
			assert.Equal(t, tc.to, mus.ToVersion)
			assert.False(t, mus.InstallUnconfirmed)
			assert.Equal(t, tc.version, f.get("w-1").version)
			assert.False(t, f.get("w-1").cordoned)
			assert.Equal(t, tc.installs, f.count("w-1", "Install"))
			assert.Equal(t, tc.calls, f.callsOf("w-1"))

			if tc.err != "" {
				assert.True(t, strings.HasPrefix(mus.Error, tc.err), "error %q", mus.Error)
			}
		})
	}
}

// A machine that does not come back from its reboot within the reboot timeout fails with "timeout", and its node
// is uncordoned.
func TestRolloutRebootTimeout(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 2)
	f.set("w-1", func(n *fakeNode) { n.noReturn = true })

	ctx, st := startUpgrades(t, f, controllers.WithRebootTimeout(100*time.Millisecond))
	createAndUpgrade(ctx, t, st, f, nil)

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseFailed, s.Phase)
		a.Contains(s.Error, "w-1: timeout: not back within 100ms")
	})

	assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf("w-1"))
	assert.False(t, f.get("w-1").cordoned)
	assert.Empty(t, f.callsOf("w-2"))
}

// A paused cluster starts nothing; resuming it finishes the rollout.
func TestRolloutPaused(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 2)
	ctx, st := startUpgrades(t, f)
	createUpgradeFleet(ctx, t, st, f, v14, func(c *cluster.ClusterSpec) { c.Paused = true })

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhasePaused, s.Phase)
	})
	assert.Empty(t, f.callsOf("w-1"))

	updateCluster(ctx, t, st, func(c *cluster.Cluster) { c.TypedSpec().Paused = false })

	assertDone(ctx, t, st, v14)
}

// A skipped failed machine no longer halts the rollout, and the cluster finishes without it.
func TestRolloutSkip(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 2)
	f.set("w-1", func(n *fakeNode) { n.rollback = true })

	ctx, st := startUpgrades(t, f)
	createAndUpgrade(ctx, t, st, f, nil)

	assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseFailed, s.Phase)
	})

	_, err := safe.StateUpdateWithConflicts(ctx, st, cluster.NewMachine("w-1").Metadata(), func(m *cluster.Machine) error {
		m.Metadata().Annotations().Set(upgrade.SkipAnnotation, v14)

		return nil
	})
	require.NoError(t, err)

	assertDone(ctx, t, st, v14)
	assert.Equal(t, v13, f.get("w-1").version)
	assert.Equal(t, v14, f.get("w-2").version)
}

// A single control plane keeps its etcd leadership (there is nobody to hand it to) and still upgrades.
func TestRolloutSingleControlPlane(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 1, 0)
	ctx, st := startUpgrades(t, f)
	createAndUpgrade(ctx, t, st, f, nil)
	assertDone(ctx, t, st, v14)

	assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf("cp-1"))
}

// A worker locked during its drain finishes the drain. On the legacy flow, where the install comes after the drain,
// it stops there: uncordoned, never installed, Queued and Held on its old version, listed as waiting on the lock;
// unlocked, it upgrades in the same attempt. On the lifecycle flow its install is already staged: it finishes the
// upgrade, ending uncordoned, and the lock holds it from then on.
func TestRolloutLockedDuringDrain(t *testing.T) {
	t.Parallel()

	lockOnDrain := func(ctx context.Context, t *testing.T, f *fakeFleet, st state.State) {
		var once sync.Once

		f.hook(func(c fakeCall) {
			if c.Node == "w-1" && c.Method == "Drain" {
				once.Do(func() { assert.NoError(t, st.Create(ctx, cluster.NewMachineLock("w-1"))) })
			}
		})
	}

	t.Run("legacy: holds before the install", func(t *testing.T) {
		t.Parallel()

		f := newFakeFleet("v1.12.0", 0, 2)
		ctx, st := startUpgrades(t, f)
		createUpgradeFleet(ctx, t, st, f, "v1.12.0", nil)
		assertDone(ctx, t, st, "v1.12.0")

		lockOnDrain(ctx, t, f, st)
		setTarget(ctx, t, st, v13)

		assertUpgrade(ctx, t, st, func(s *upgrade.TalosUpgradeStatusSpec, a *assert.Assertions) {
			a.Equal(upgrade.PhaseBlocked, s.Phase)
			a.Equal([]string{"w-1"}, s.WaitingOnLock)
			a.Equal(1, s.Done, "w-2 upgraded")
		})

		held := machineUpgrade(ctx, t, st, "w-1")
		assert.Equal(t, upgrade.MachineQueued, held.Phase)
		assert.True(t, held.Held)
		assert.False(t, held.Cordoned)
		assert.Equal(t, []string{"Cordon", "Drain", "Uncordon"}, f.callsOf("w-1"), "drained, then uncordoned, never installed")
		assert.False(t, f.get("w-1").cordoned)

		require.NoError(t, st.Destroy(ctx, cluster.NewMachineLock("w-1").Metadata()))
		assertDone(ctx, t, st, v13)
		assert.Equal(t, 1, machineUpgrade(ctx, t, st, "w-1").Attempt, "holding for a lock is not a new attempt")
		assert.Equal(t, 1, f.count("w-1", "LegacyUpgrade"))
	})

	t.Run("lifecycle: past the install, it finishes", func(t *testing.T) {
		t.Parallel()

		f := newFakeFleet(v13, 0, 2)
		ctx, st := startUpgrades(t, f)
		createUpgradeFleet(ctx, t, st, f, v13, nil)
		assertDone(ctx, t, st, v13)

		lockOnDrain(ctx, t, f, st)
		setTarget(ctx, t, st, v14)

		assertDone(ctx, t, st, v14)
		assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf("w-1"))
		assert.False(t, f.get("w-1").cordoned)
		assert.False(t, machineUpgrade(ctx, t, st, "w-1").Held)
	})
}
