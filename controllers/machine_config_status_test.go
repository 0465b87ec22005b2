package controllers_test

import (
	"context"
	"sync"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/machineconfig/machineconfigtest"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// proxyPatch sets an environment variable Talos reads at boot: the double applies it only with a reboot.
const proxyPatch = "machine:\n  env:\n    https_proxy: http://proxy.example:3128\n"

// serveConfigs gives every node of f a generated machine config of its role, so the config rollout can read and
// change it.
func serveConfigs(t *testing.T, f *fakeFleet) {
	t.Helper()

	cp, worker := machineconfigtest.Config(t, "c1", machine.TypeControlPlane), machineconfigtest.Config(t, "c1", machine.TypeWorker)

	f.mu.Lock()
	defer f.mu.Unlock()

	for _, n := range f.nodes {
		n.config = worker
		if n.cp {
			n.config = cp
		}
	}
}

// startConfigRollout creates the fleet on v13 with its configs served, waits until every machine's config is read,
// and creates a cluster-wide ConfigPatch of patch.
func startConfigRollout(ctx context.Context, t *testing.T, st state.State, f *fakeFleet, patch string) {
	t.Helper()

	createUpgradeFleet(ctx, t, st, f, v13, nil)

	for _, id := range f.names() {
		rtestutils.AssertResource(ctx, t, st, id, func(s *upgrade.MachineConfigStatus, a *assert.Assertions) {
			a.NotEmpty(s.TypedSpec().AppliedVersion)
		}, rtestutils.WithNamespace(resources.Namespace))
	}

	p := cluster.NewConfigPatch("proxy")
	*p.TypedSpec() = cluster.ConfigPatchSpec{Cluster: "c1", Patch: patch}
	require.NoError(t, st.Create(ctx, p))
}

func assertConfigRollout(ctx context.Context, t *testing.T, st state.State, check func(*upgrade.ConfigRolloutStatusSpec, *assert.Assertions)) {
	t.Helper()

	assertClusterStatus[upgrade.ConfigRolloutStatusSpec, upgrade.ConfigRolloutStatusExtension](ctx, t, st, check)
}

// A control plane whose config change needs a reboot passes the Talos upgrade's etcd steps first: admitted while
// etcd was healthy, it waits in CheckingEtcd (the reason recorded, the rollout saying it waits for etcd) while
// another member turned unhealthy after its admission, sends nothing that reboots it meanwhile, and once etcd is
// healthy forfeits its leadership before the reboot that applies the change. Every machine reboots once.
func TestConfigRebootChecksEtcd(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 3, 1)
	serveConfigs(t, f)

	var (
		once  sync.Once
		first = make(chan string, 1) // the first control plane found to need a reboot
	)

	f.hook(func(c fakeCall) {
		if c.Method != "ApplyConfiguration" || c.Arg != "REBOOT dry-run" || !f.get(c.Node).cp {
			return
		}

		once.Do(func() {
			other := "cp-1"
			if c.Node == other {
				other = "cp-2"
			}

			f.set(other, func(n *fakeNode) { n.etcdUnhealthy = true }) // after the admission, before the step's check
			first <- c.Node
		})
	})

	ctx, st := startUpgrades(t, f)
	startConfigRollout(ctx, t, st, f, proxyPatch)

	var cp string
	select {
	case cp = <-first:
	case <-ctx.Done():
		t.Fatal("no control plane was found to need a reboot")
	}

	rtestutils.AssertResource(ctx, t, st, cp, func(s *upgrade.MachineConfigStatus, a *assert.Assertions) {
		a.Equal(upgrade.MachineCheckingEtcd, s.TypedSpec().Phase)
		a.Contains(s.TypedSpec().Waiting, "healthy")
	}, rtestutils.WithNamespace(resources.Namespace))

	assertConfigRollout(ctx, t, st, func(s *upgrade.ConfigRolloutStatusSpec, a *assert.Assertions) {
		a.Contains(s.Reason, "control plane "+cp+" waits for etcd")
	})

	for _, id := range f.names() {
		assert.Zero(t, f.count(id, "Reboot"), "%s: nothing reboots while etcd is unhealthy", id)
		assert.NotContains(t, f.applies(id), "REBOOT", "%s: no change sent while etcd is unhealthy", id)
	}

	f.set("cp-1", func(n *fakeNode) { n.etcdUnhealthy = false })
	f.set("cp-2", func(n *fakeNode) { n.etcdUnhealthy = false })

	assertConfigRollout(ctx, t, st, func(s *upgrade.ConfigRolloutStatusSpec, a *assert.Assertions) {
		a.Equal(upgrade.PhaseDone, s.Phase)
		a.Equal(4, s.Done)
	})

	for _, id := range f.names() {
		assert.Equal(t, []string{"NO_REBOOT dry-run", "REBOOT dry-run", "REBOOT"}, f.applies(id), "%s: sent once, with a reboot", id)
		assert.Contains(t, string(f.get(id).config), "proxy.example", "%s runs the change", id)

		if f.get(id).cp {
			assert.Less(t, f.firstCall(id, "EtcdForfeitLeadership"), f.firstCallOf(id, "ApplyConfiguration", "REBOOT"), "%s forfeits before its reboot", id)
		}
	}

	f.mu.Lock()
	defer f.mu.Unlock()

	assert.Equal(t, 1, f.maxCPsDown, "control planes down at once")
}
