package controllers_test

import (
	"context"
	"testing"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/validate"
)

// credentialsOnFleet reaches the fleet's Talos machines through a real CredentialsConnector, and its Kubernetes
// nodes directly.
type credentialsOnFleet struct {
	*controllers.CredentialsConnector
	f *fakeFleet
}

func (c credentialsOnFleet) Kubernetes(ctx context.Context, access controllers.ClusterAccess) (kube.Nodes, error) {
	return c.f.Kubernetes(ctx, access)
}

func setTalosconfig(ctx context.Context, t *testing.T, st state.State, talosconfig string) {
	t.Helper()

	_, err := safe.StateUpdateWithConflicts(ctx, st, cluster.NewCredentials("c1").Metadata(), func(c *cluster.Credentials) error {
		c.TypedSpec().Talosconfig = talosconfig

		return nil
	})
	require.NoError(t, err)
}

// Rotating the cluster's credentials while a machine's install is in flight neither fails the machine nor installs
// twice: the install finishes on the client it started with, and that client closes after it.
func TestRolloutCredentialsRotatedMidInstall(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 1)
	conn := credentialsOnFleet{controllers.NewCredentialsConnectorDialing(f.dial), f}
	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	ctx := startEngine(t, st, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), controllers.Upgrades(conn, fastUpgrades()...))

	createUpgradeFleet(ctx, t, st, f, v13, nil)
	setTalosconfig(ctx, t, st, testTalosconfig(t, "127.0.0.1:50000"))
	assertDone(ctx, t, st, v13)

	f.hook(func(c fakeCall) {
		if c.Method != "Install" {
			return
		}

		f.hook(nil)

		rotated := testTalosconfig(t, "127.0.0.1:50000")
		setTalosconfig(ctx, t, st, rotated)

		// The next controller to read the new credentials replaces the client; the test is that controller here,
		// so the replacement surely happens while the install is in flight.
		_, err := conn.Talos(ctx, controllers.ClusterAccess{Cluster: "c1", Credentials: cluster.CredentialsSpec{Talosconfig: rotated}})
		assert.NoError(t, err)
	})

	setTarget(ctx, t, st, v14)
	assertDone(ctx, t, st, v14)

	mus := machineUpgrade(ctx, t, st, "w-1")
	assert.Equal(t, upgrade.MachineDone, mus.Phase)
	assert.Equal(t, 1, mus.Attempt)
	assert.Empty(t, mus.Error)
	assert.Equal(t, 1, f.count("w-1", "Install"))
	assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf("w-1"))
	assert.True(t, f.client(0).closed.Load(), "the replaced client closed once its calls returned")
	assert.False(t, f.client(1).closed.Load())
}

// Deleting a machine in the middle of its upgrade ends its executor (the drain it waits on is cancelled, and no
// further call goes out) before its MachineUpgradeStatus is destroyed: no executor outlives its machine.
func TestRolloutMachineDeletedMidUpgrade(t *testing.T) {
	t.Parallel()

	f := newFakeFleet(v13, 0, 1)
	f.drainBlocks["w-1"] = true

	executors := controllers.NewMachineUpgradeStatusController(f, controllers.NewUpgradeConfig(fastUpgrades()...))
	own := func(engine controller.Engine) error { return engine.RegisterQController(executors) }
	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))
	ctx := startEngine(t, st, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), controllers.Overridable(controllers.Upgrades(f, fastUpgrades()...), own))

	draining := make(chan struct{})
	f.hook(func(c fakeCall) {
		if c.Method == "Drain" {
			close(draining)
		}
	})

	createAndUpgrade(ctx, t, st, f, nil)

	select {
	case <-draining:
	case <-ctx.Done():
		t.Fatal("w-1 never drained")
	}

	require.Equal(t, 1, executors.Executors())
	require.NoError(t, st.Destroy(ctx, cluster.NewMachine("w-1").Metadata()))

	rtestutils.AssertNoResource[*upgrade.MachineUpgradeStatus](ctx, t, st, "w-1", rtestutils.WithNamespace(resources.Namespace))
	assert.Equal(t, 0, executors.Executors(), "the executor ended before its status was destroyed")
	assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain"}, f.callsOf("w-1"))
}
