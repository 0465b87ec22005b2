package integration

import (
	"cmp"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// sysctlPatch is a cluster-wide patch Talos applies without a reboot.
const sysctlPatch = `metadata:
  type: ConfigPatch
  id: sysctl
spec:
  cluster: c1
  patch: |
    machine:
      sysctls:
        vm.max_map_count: "262144"
`

// TestConfigPatchRolloutWithLockedWorkers applies a cluster-wide patch to 3 control planes and 4 workers, 2 of them
// locked: the 5 others get it without a reboot (journal: a dry run, then NO_REBOOT, no reboot), the locked ones get
// no call that changes them and keep their config; the rollout is Blocked naming both, with their pending diff;
// unlocked one by one, each gets the patch next, and the rollout is Done. Removing the patch takes it back out.
func TestConfigPatchRolloutWithLockedWorkers(t *testing.T) {
	supported := talosemu.SupportedVersions()
	version := supported[len(supported)-1]

	bed := startLiteBed(t, 3, 4, version)
	st := bed.State()
	locked := []string{"c1-w-2", "c1-w-4"}
	unlocked := nodesExcept(bed, locked)

	waitObserved(t, bed, version)
	waitConfigsRead(t, bed)

	for _, id := range locked {
		mustCLI(t, bed, "lock", id, "--reason", "staged config test")
	}

	file := filepath.Join(t.TempDir(), "patch.yaml")
	require.NoError(t, os.WriteFile(file, []byte(sysctlPatch), 0o600))

	dry := mustCLI(t, bed, "apply", "-f", file, "--dry-run")
	assert.Contains(t, dry, "c1-w-1:")
	assert.Contains(t, dry, `+        vm.max_map_count: "262144"`, "the dry run shows the change per machine")
	_, err := st.Get(t.Context(), cluster.NewConfigPatch("sysctl").Metadata())
	require.Error(t, err, "the dry run wrote nothing")

	from := len(bed.Fleet.Journal().Entries())
	mustCLI(t, bed, "apply", "-f", file)

	blocked := waitConfig(t, bed, "the rollout blocked on the locks", func(s *upgrade.ConfigRolloutStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked
	})
	assert.Equal(t, locked, sorted(blocked.WaitingOnLock))
	assert.Contains(t, blocked.Error, "waiting on locked machines")
	assert.Equal(t, 5, blocked.Done)

	for _, id := range unlocked {
		assert.Equal(t, "262144", sysctl(t, bed, id), "%s got the patch", id)
		assert.Equal(t, []string{"NO_REBOOT dry-run", "NO_REBOOT"}, applies(bed, id, from), "%s: a dry run, then the change, once", id)
	}

	for _, id := range locked {
		assert.Empty(t, sysctl(t, bed, id), "%s keeps its config while locked", id)
		assert.Empty(t, changingCalls(bed, id, 0), "nothing that changes %s is sent while it is locked", id)

		mcs, err := st.Get(t.Context(), upgrade.NewMachineConfigStatus(id).Metadata())
		require.NoError(t, err)

		spec := mcs.(*upgrade.MachineConfigStatus).TypedSpec() //nolint:forcetypeassert
		assert.True(t, spec.Pending, "%s has a pending change", id)
		assert.Contains(t, spec.Diff, "vm.max_map_count", "%s shows its pending change", id)
	}

	assert.Empty(t, rebootsSince(bed, from), "a patch Talos applies live reboots nothing")

	status := mustCLI(t, bed, "status", "c1")
	assert.Contains(t, status, "2 machines waiting on a lock")

	// Unlocked one by one: each gets the patch next.
	mustCLI(t, bed, "unlock", locked[1])
	waitFor(t, st, upgrade.NewMachineConfigStatus(locked[1]).Metadata(), time.Minute, locked[1]+" patched once unlocked",
		func(s *upgrade.MachineConfigStatus) bool { return !s.TypedSpec().Pending })
	assert.Equal(t, "262144", sysctl(t, bed, locked[1]))
	assert.Empty(t, sysctl(t, bed, locked[0]), "%s, still locked, keeps its config", locked[0])

	mustCLI(t, bed, "unlock", locked[0])

	done := waitConfig(t, bed, "the rollout done once unlocked", func(s *upgrade.ConfigRolloutStatusSpec) bool {
		return s.Phase == upgrade.PhaseDone
	})
	assert.Equal(t, 7, done.Done)
	assert.Equal(t, "262144", sysctl(t, bed, locked[0]))

	// Removing the patch takes its change back out, again without a reboot.
	removed := len(bed.Fleet.Journal().Entries())
	require.NoError(t, st.Destroy(t.Context(), cluster.NewConfigPatch("sysctl").Metadata()))

	for _, n := range bed.Fleet.Nodes() {
		waitFor(t, st, upgrade.NewMachineConfigStatus(n.Name()).Metadata(), time.Minute, n.Name()+" back on its base config",
			func(s *upgrade.MachineConfigStatus) bool {
				return !s.TypedSpec().Pending && len(s.TypedSpec().Patches) == 0 && s.TypedSpec().Phase == upgrade.MachineDone
			})
		assert.Empty(t, sysctl(t, bed, n.Name()), "%s no longer has the patch", n.Name())
	}

	assert.Empty(t, rebootsSince(bed, removed))
}

// TestConfigPatchRefusedAtWriteTime: a patch that yields an invalid config is refused naming the machine, from the
// CLI and the Go API, and nothing is written; locking a control plane is refused with the reason from both.
func TestConfigPatchRefusedAtWriteTime(t *testing.T) {
	supported := talosemu.SupportedVersions()
	version := supported[len(supported)-1]

	bed := startLiteBed(t, 1, 2, version)
	st := bed.State()

	waitObserved(t, bed, version)
	waitFor(t, st, upgrade.NewMachineConfigStatus("c1-w-2").Metadata(), time.Minute, "c1-w-2's config read",
		func(s *upgrade.MachineConfigStatus) bool { return s.TypedSpec().AppliedVersion != "" })

	bad := strings.Replace(sysctlPatch, "  cluster: c1\n", "  cluster: c1\n  machine: c1-w-2\n", 1)
	bad = strings.Replace(bad, "    machine:\n      sysctls:\n        vm.max_map_count: \"262144\"\n", "    machine:\n      type: toaster\n", 1)
	file := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(file, []byte(bad), 0o600))

	_, errOut, err := cli(t, bed, "apply", "-f", file)
	require.Error(t, err)
	assert.Contains(t, errOut, `machine "c1-w-2"`, "the CLI names the machine")

	p := cluster.NewConfigPatch("sysctl")
	*p.TypedSpec() = cluster.ConfigPatchSpec{Cluster: "c1", Machine: "c1-w-2", Patch: "machine:\n  type: toaster\n"}
	err = st.Create(t.Context(), p)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `machine "c1-w-2"`, "the Go API names the machine")

	_, err = st.Get(t.Context(), p.Metadata())
	require.Error(t, err, "nothing was written")

	_, errOut, err = cli(t, bed, "lock", "c1-cp-1")
	require.Error(t, err)
	assert.Contains(t, errOut, "control planes cannot be locked")

	err = st.Create(t.Context(), cluster.NewMachineLock("c1-cp-1"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "control planes cannot be locked")

	_, err = st.Get(t.Context(), cluster.NewMachineLock("c1-cp-1").Metadata())
	require.Error(t, err, "no lock was written")
}

func waitConfig(t *testing.T, bed *testbed.Bed, what string, cond func(*upgrade.ConfigRolloutStatusSpec) bool) *upgrade.ConfigRolloutStatusSpec {
	t.Helper()

	return waitFor(t, bed.State(), upgrade.NewConfigRolloutStatus("c1").Metadata(), rolloutTimeout, what,
		func(s *upgrade.ConfigRolloutStatus) bool { return cond(s.TypedSpec()) }).TypedSpec()
}

// sysctl is the node's vm.max_map_count as its running config sets it.
func sysctl(t *testing.T, bed *testbed.Bed, id string) string {
	t.Helper()

	n, err := bed.Fleet.Node(id)
	require.NoError(t, err)

	return n.Config().Machine().Sysctls()["vm.max_map_count"]
}

// applies lists the ApplyConfiguration calls node received from the from-th journal entry on, as "MODE[ dry-run]".
func applies(bed *testbed.Bed, node string, from int) []string {
	var out []string

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		if e.Node == node && strings.HasSuffix(e.Method, "/ApplyConfiguration") {
			call := e.Mode
			if e.DryRun != nil && *e.DryRun {
				call += " dry-run"
			}

			out = append(out, call)
		}
	}

	return out
}

// rebootsSince lists the nodes that went down for a reboot from the from-th journal entry on.
func rebootsSince(bed *testbed.Bed, from int) []string {
	var out []string

	for _, e := range bed.Fleet.Journal().Entries()[from:] {
		if e.Event == talosemu.EventRebootDown {
			out = append(out, e.Node)
		}
	}

	return out
}

// envPatch is a cluster-wide patch Talos applies only with a reboot (machine.env is read at boot).
const envPatch = `metadata:
  type: ConfigPatch
  id: proxy
spec:
  cluster: c1
  patch: |
    machine:
      env:
        https_proxy: http://proxy.example:3128
`

// TestConfigPatchNeedingReboot rolls out a patch Talos refuses without a reboot: each machine goes through the
// Talos upgrade's steps (control planes: the etcd check and leadership forfeit; cordon, drain, a reboot that applies
// the change, back with a new boot ID running it, uncordon), sent once (journal: NO_REBOOT dry run refused, REBOOT
// dry run, REBOOT, one reboot), control planes one at a time before the workers. While another etcd member is
// unhealthy, no control plane's config reboot starts and the rollout says it waits for etcd. Removing the patch
// takes it back out the same way.
func TestConfigPatchNeedingReboot(t *testing.T) {
	supported := talosemu.SupportedVersions()
	bed := startLiteBed(t, 3, 2, supported[len(supported)-1])
	st := bed.State()
	nodes := bed.Fleet.Nodes()

	waitObserved(t, bed, supported[len(supported)-1])
	waitConfigsRead(t, bed)

	rollOut := func(what, want string, patches int, change func()) {
		from := len(bed.Fleet.Journal().Entries())
		change()

		for _, n := range nodes {
			waitFor(t, st, upgrade.NewMachineConfigStatus(n.Name()).Metadata(), 2*time.Minute, n.Name()+" "+what,
				func(s *upgrade.MachineConfigStatus) bool {
					return !s.TypedSpec().Pending && s.TypedSpec().Phase == upgrade.MachineDone && len(s.TypedSpec().Patches) == patches
				})
			assert.Equal(t, want, proxyOf(t, bed, n.Name()), "%s %s", n.Name(), what)
			assert.Equal(t, []string{"NO_REBOOT dry-run", "REBOOT dry-run", "REBOOT"}, applies(bed, n.Name(), from),
				"%s: refused live, checked, sent once with a reboot", n.Name())
		}

		reboots := rebootsSince(bed, from)
		require.Len(t, reboots, len(nodes), "one reboot per machine, %s", what)
		assert.ElementsMatch(t, []string{"c1-cp-1", "c1-cp-2", "c1-cp-3"}, reboots[:3], "control planes first, %s", what)
		assert.ElementsMatch(t, []string{"c1-w-1", "c1-w-2"}, reboots[3:], "then the workers, once each, %s", what)

		var cps [][2]uint64 // each control plane's change: the seqs of its first and last step

		for _, n := range nodes {
			var steps []upgrade.MachinePhase

			var first, done uint64

			for _, w := range historyOf[configStatusDoc](t, bed, upgrade.MachineConfigStatusType, n.Name()) {
				if w.doc.Spec.ChangeVersion == "" || len(steps) > 0 && steps[len(steps)-1] == w.doc.Spec.Phase {
					continue
				}

				steps = append(steps, w.doc.Spec.Phase)

				if w.doc.Spec.Phase == upgrade.MachineApplyingConfig {
					first, steps = w.seq, steps[len(steps)-1:] // the last change only
				}

				if w.doc.Spec.Phase == upgrade.MachineDone {
					done = w.seq
				}
			}

			want := []upgrade.MachinePhase{upgrade.MachineApplyingConfig, upgrade.MachineCordoning, upgrade.MachineDraining,
				upgrade.MachineRebooting, upgrade.MachineWaitingReady, upgrade.MachineUncordoning, upgrade.MachineDone}

			if strings.Contains(n.Name(), "-cp-") {
				cps = append(cps, [2]uint64{first, done})
				want = slices.Insert(want, 1, upgrade.MachineCheckingEtcd, upgrade.MachineForfeitingLeadership)
			}

			assert.Equal(t, want, steps, "%s's steps, each recorded, %s", n.Name(), what)
		}

		slices.SortFunc(cps, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })

		for i := 1; i < len(cps); i++ {
			assert.Greater(t, cps[i][0], cps[i-1][1], "a control plane starts once the one before it is done, %s", what)
		}
	}

	file := filepath.Join(t.TempDir(), "patch.yaml")
	require.NoError(t, os.WriteFile(file, []byte(envPatch), 0o600))

	rollOut("patched", "http://proxy.example:3128", 1, func() {
		from := len(bed.Fleet.Journal().Entries())

		require.NoError(t, bed.Fleet.SetFault(t.Context(), "c1-cp-2", talosemu.FaultEtcdUnhealthy))
		waitFor(t, st, observe.NewEtcdStatus("c1").Metadata(), time.Minute, "etcd seen unhealthy",
			func(s *observe.EtcdStatus) bool { return !s.TypedSpec().Healthy })

		mustCLI(t, bed, "apply", "-f", file)

		waiting := waitConfig(t, bed, "the control planes waiting for etcd", func(s *upgrade.ConfigRolloutStatusSpec) bool {
			return strings.Contains(s.Reason, "waits for etcd")
		})
		assert.Contains(t, waiting.Reason, "healthy", "the rollout says why it waits")
		assert.Empty(t, rebootsSince(bed, from), "no config reboot while an etcd member is unhealthy")

		for _, n := range nodes {
			assert.NotContains(t, applies(bed, n.Name(), from), "REBOOT", "%s: no change sent while etcd is unhealthy", n.Name())
		}

		require.NoError(t, bed.Fleet.ClearFault(t.Context(), "c1-cp-2", talosemu.FaultEtcdUnhealthy))
	})
	rollOut("back on its base config", "", 0, func() {
		require.NoError(t, st.Destroy(t.Context(), cluster.NewConfigPatch("proxy").Metadata()))
	})
}

// configStatusDoc is the part of a logged MachineConfigStatus the tests read.
type configStatusDoc struct {
	Spec struct {
		Phase         upgrade.MachinePhase `yaml:"phase"`
		ChangeVersion string               `yaml:"changeVersion"`
	} `yaml:"spec"`
}

// waitConfigsRead waits until the engine read every node's config: the base its patches apply to.
func waitConfigsRead(t *testing.T, bed *testbed.Bed) {
	t.Helper()

	for _, n := range bed.Fleet.Nodes() {
		waitFor(t, bed.State(), upgrade.NewMachineConfigStatus(n.Name()).Metadata(), time.Minute, n.Name()+"'s config read",
			func(s *upgrade.MachineConfigStatus) bool { return s.TypedSpec().AppliedVersion != "" })
	}
}

// proxyOf is the node's https_proxy as its running config sets it (envPatch).
func proxyOf(t *testing.T, bed *testbed.Bed, id string) string {
	t.Helper()

	n, err := bed.Fleet.Node(id)
	require.NoError(t, err)

	return n.Config().RawV1Alpha1().MachineConfig.MachineEnv["https_proxy"]
}

// isConfigStep matches the journal entries that are a config rollout's side effects and their consequences, so
// kills land between them rather than between observations.
func isConfigStep(e talosemu.Entry) bool {
	return e.Error == "" && (e.Method == methodApply || e.Method == methodForfeit ||
		e.Event == talosemu.EventRebootDown || e.Event == talosemu.EventRebootUp)
}

// TestConfigCrashDuringRollout runs the engine as a child process and kills it with SIGKILL after one to three
// side effects of a rollout of a patch that needs a reboot (at least minConfigKills times), as
// TestCrashDuringRollout does for a Talos upgrade: the rollout converges with every machine on its effective
// config, the journal shows each machine's change sent once (one ApplyConfiguration that is not a dry run) and
// exactly one reboot per machine.
func TestConfigCrashDuringRollout(t *testing.T) {
	const minConfigKills = 5

	supported := talosemu.SupportedVersions()
	version := supported[len(supported)-1]

	bed := startBed(t, testbed.WithLite(), testbed.WithEngineProcess(testbed.SelfCommand()), testbed.WithFleetOptions(
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(2), talosemu.WithTalosVersion(version),
		talosemu.WithRebootDowntime(rebootDowntime),
	))
	logOnFailure(t, bed, "c1")

	waitObserved(t, bed, version)
	waitConfigsRead(t, bed)

	file := filepath.Join(t.TempDir(), "patch.yaml")
	require.NoError(t, os.WriteFile(file, []byte(envPatch), 0o600))

	const want = "http://proxy.example:3128"

	allPatched := func() bool {
		return !slices.ContainsFunc(bed.Fleet.Nodes(), func(n *talosemu.Node) bool { return proxyOf(t, bed, n.Name()) != want })
	}

	from := len(bed.Fleet.Journal().Entries())
	mustCLI(t, bed, "apply", "-f", file)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0)) //nolint:gosec // test randomness
	kills := killEngineDuring(t, bed, allPatched, func(int) (int, func(talosemu.Entry) bool) { return 1 + rng.IntN(3), isConfigStep })

	t.Logf("killed the engine %d times during the config rollout", kills)
	assert.GreaterOrEqual(t, kills, minConfigKills, "the rollout was long enough for %d kills", minConfigKills)

	done := waitConfig(t, bed, "the rollout to converge", func(s *upgrade.ConfigRolloutStatusSpec) bool { return s.Phase == upgrade.PhaseDone })
	assert.Equal(t, done.Total, done.Done)

	reboots := rebootsSince(bed, from)

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, want, proxyOf(t, bed, n.Name()), "%s runs its effective config", n.Name())

		sent := slices.DeleteFunc(applies(bed, n.Name(), from), func(call string) bool { return strings.HasSuffix(call, " dry-run") })
		assert.Equal(t, []string{"REBOOT"}, sent, "%s: the change sent once", n.Name())
		assert.Equal(t, 1, countOf(reboots, n.Name()), "%s rebooted once", n.Name())
	}
}

func countOf(list []string, s string) int {
	n := 0

	for _, x := range list {
		if x == s {
			n++
		}
	}

	return n
}

// TestConfigPatchRetryAndSkip: a config change that fails (the machine's API down past the step timeout) halts the
// rollout naming the machine and the reason; `upshift upgrade retry` once the fault is cleared applies it (attempt
// 2) and the rollout finishes. A later change failing on another machine is left out with `upshift upgrade skip`:
// the rollout goes on without it to Done, says so (status and ConfigRolloutStatus), and the machine keeps its config.
func TestConfigPatchRetryAndSkip(t *testing.T) {
	supported := talosemu.SupportedVersions()
	version := supported[len(supported)-1]

	bed := startBed(t, testbed.WithLite(), testbed.WithUpgradeOptions(controllers.WithStepTimeout(3*time.Second)),
		testbed.WithFleetOptions(talosemu.WithControlPlanes(1), talosemu.WithWorkers(2), talosemu.WithTalosVersion(version)))
	logOnFailure(t, bed, "c1")

	ctx, st := t.Context(), bed.State()

	waitObserved(t, bed, version)
	waitConfigsRead(t, bed)

	apply := func(value string) {
		file := filepath.Join(t.TempDir(), "patch.yaml")
		require.NoError(t, os.WriteFile(file, []byte(strings.ReplaceAll(sysctlPatch, "262144", value)), 0o600))
		mustCLI(t, bed, "apply", "-f", file)
	}

	failOn := func(id string) *upgrade.ConfigRolloutStatusSpec {
		failed := waitConfig(t, bed, "the rollout failed on "+id, func(s *upgrade.ConfigRolloutStatusSpec) bool {
			return s.Phase == upgrade.PhaseFailed
		})
		assert.Equal(t, id, failed.FailedMachine)
		assert.Contains(t, failed.Error, "timeout", "the rollout says why")

		return failed
	}

	// Retry.
	require.NoError(t, bed.Fleet.SetFault(ctx, "c1-w-1", talosemu.FaultAPIDown))
	apply("262144")
	failOn("c1-w-1")
	assert.Empty(t, sysctl(t, bed, "c1-w-1"))

	require.NoError(t, bed.Fleet.ClearFault(ctx, "c1-w-1", talosemu.FaultAPIDown))
	assert.Contains(t, mustCLI(t, bed, "upgrade", "retry", "c1"), "retrying c1-w-1 ("+upgrade.RetryAnnotation+"=config:")

	done := waitConfig(t, bed, "the rollout done after the retry", func(s *upgrade.ConfigRolloutStatusSpec) bool {
		return s.Phase == upgrade.PhaseDone
	})
	assert.Equal(t, 3, done.Done)
	assert.Empty(t, done.Skipped)

	for _, n := range bed.Fleet.Nodes() {
		assert.Equal(t, "262144", sysctl(t, bed, n.Name()), n.Name())
	}

	mcs := waitFor(t, st, upgrade.NewMachineConfigStatus("c1-w-1").Metadata(), time.Minute, "c1-w-1 done",
		func(s *upgrade.MachineConfigStatus) bool { return s.TypedSpec().Phase == upgrade.MachineDone })
	assert.Equal(t, 2, mcs.TypedSpec().Attempt, "the retry is the second attempt")

	// Skip.
	require.NoError(t, bed.Fleet.SetFault(ctx, "c1-w-2", talosemu.FaultAPIDown))
	apply("524288")
	failOn("c1-w-2")

	assert.Contains(t, mustCLI(t, bed, "upgrade", "skip", "c1", "--machine", "c1-w-2"), "skipping c1-w-2 ("+upgrade.SkipAnnotation+"=config:")

	done = waitConfig(t, bed, "the rollout done without the skipped machine", func(s *upgrade.ConfigRolloutStatusSpec) bool {
		return s.Phase == upgrade.PhaseDone
	})
	assert.Equal(t, []string{"c1-w-2"}, done.Skipped)
	assert.Contains(t, mustCLI(t, bed, "status", "c1"), "skipped (keep their config): c1-w-2")

	require.NoError(t, bed.Fleet.ClearFault(ctx, "c1-w-2", talosemu.FaultAPIDown))

	for _, n := range bed.Fleet.Nodes() {
		want := "524288"
		if n.Name() == "c1-w-2" {
			want = "262144" // skipped: it keeps the config it runs
		}

		assert.Equal(t, want, sysctl(t, bed, n.Name()), n.Name())
	}
}
