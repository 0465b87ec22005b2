package controllers_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

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

func (c credentialsOnFleet) Kubernetes(ctx context.Context, access controllers.ClusterAccess) (kube.API, error) {
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
	// The API refuses to delete a machine mid-step (validate); a state written before that rule may still lose
	// one, so the delete goes around the validation here.
	inner := namespaced.NewState(inmem.Build)
	st := state.WrapCore(validate.NewState(inner))
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
	require.True(t, validate.IsError(st.Destroy(ctx, cluster.NewMachine("w-1").Metadata())), "refused mid-step")
	require.NoError(t, inner.Destroy(ctx, cluster.NewMachine("w-1").Metadata()))

	rtestutils.AssertNoResource[*upgrade.MachineUpgradeStatus](ctx, t, st, "w-1", rtestutils.WithNamespace(resources.Namespace))
	assert.Equal(t, 0, executors.Executors(), "the executor ended before its status was destroyed")
	assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain"}, f.callsOf("w-1"))
}

var errInjected = errors.New("injected read failure")

// faultyState fails every read of one resource type while fault is set.
type faultyState struct {
	state.CoreState

	typ   resource.Type
	fault atomic.Bool
}

func (s *faultyState) Get(ctx context.Context, ptr resource.Pointer, opts ...state.GetOption) (resource.Resource, error) {
	if s.fault.Load() && ptr.Type() == s.typ {
		return nil, errInjected
	}

	return s.CoreState.Get(ctx, ptr, opts...)
}

// observedLogger logs to the test and to the returned observer, from level on.
func observedLogger(t *testing.T, level zapcore.Level) (*zap.Logger, *observer.ObservedLogs) {
	t.Helper()

	core, logs := observer.New(level)

	return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel), zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, core)
	}))), logs
}

// loggedFor counts the entries with msg about machine w-1 of cluster c1 in step.
func loggedFor(logs *observer.ObservedLogs, msg string, step upgrade.MachinePhase) int {
	return logs.FilterMessage(msg).
		FilterField(zap.String("cluster", "c1")).
		FilterField(zap.String("machine", "w-1")).
		FilterField(zap.String("step", string(step))).Len()
}

// An error inside a machine's executor (here: reading the cluster's upgrade status fails after the pull) is
// logged with the cluster, machine and step, shown in Waiting, and retried: once the store answers again the
// machine goes on from where it was, without pulling again as a resumed step would. An error that lasts the step
// timeout fails the machine with it.
func TestRolloutExecutorError(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name  string
		lasts bool
	}{
		{name: "retried"},
		{name: "lasts the step timeout", lasts: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			f := newFakeFleet(v13, 0, 1)
			core := &faultyState{CoreState: validate.NewState(namespaced.NewState(inmem.Build)), typ: upgrade.TalosUpgradeStatusType}
			st := state.WrapCore(core)
			logger, logs := observedLogger(t, zap.ErrorLevel)

			opts := fastUpgrades()
			if tc.lasts {
				opts = fastUpgrades(controllers.WithStepTimeout(300 * time.Millisecond))
			}

			ctx := startEngine(t, st, logger, controllers.Upgrades(f, opts...))

			f.hook(func(c fakeCall) {
				if c.Method == "PullImage" {
					f.hook(nil)
					core.fault.Store(true)
				}
			})

			createAndUpgrade(ctx, t, st, f, nil)

			if tc.lasts {
				rtestutils.AssertResource(ctx, t, st, "w-1", func(mus *upgrade.MachineUpgradeStatus, a *assert.Assertions) {
					a.Equal(upgrade.MachineFailed, mus.TypedSpec().Phase, "%+v", mus.TypedSpec())
					a.Contains(mus.TypedSpec().Error, "PullingImage: reading Talos upgrade status of cluster \"c1\": "+errInjected.Error())
				}, rtestutils.WithNamespace(resources.Namespace))

				core.fault.Store(false)
				assert.Equal(t, 1, loggedFor(logs, "machine upgrade step failed: it could not advance within the step timeout", upgrade.MachinePullingImage))
				assert.Equal(t, []string{"PullImage"}, f.callsOf("w-1"))

				return
			}

			rtestutils.AssertResource(ctx, t, st, "w-1", func(mus *upgrade.MachineUpgradeStatus, a *assert.Assertions) {
				a.Equal(upgrade.MachinePullingImage, mus.TypedSpec().Phase)
				a.Contains(mus.TypedSpec().Waiting, errInjected.Error())
			}, rtestutils.WithNamespace(resources.Namespace))

			assert.Positive(t, loggedFor(logs, "machine upgrade step cannot advance; retrying", upgrade.MachinePullingImage))

			core.fault.Store(false)
			assertDone(ctx, t, st, v14)

			mus := machineUpgrade(ctx, t, st, "w-1")
			assert.Empty(t, mus.Waiting)
			assert.Equal(t, 1, mus.Attempt)
			assert.Equal(t, []string{"PullImage", "Install", "Cordon", "Drain", "Reboot", "Uncordon"}, f.callsOf("w-1"))
		})
	}
}

// A machine whose record names a step this engine does not know fails with that, logged with the cluster, machine
// and step, instead of staying in flight with nobody driving it.
func TestRolloutUnexpectedStep(t *testing.T) {
	t.Parallel()

	const bogus = upgrade.MachinePhase("Bogus")

	f := newFakeFleet(v13, 0, 1)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	st := stopEngineOn(ctx, t, f, "PullImage", v13, v14)

	current, err := safe.StateGetByID[*upgrade.MachineUpgradeStatus](ctx, st, "w-1")
	require.NoError(t, err)

	_, err = safe.StateUpdateWithConflicts(ctx, st, current.Metadata(), func(mus *upgrade.MachineUpgradeStatus) error {
		mus.TypedSpec().Phase = bogus

		return nil
	}, state.WithUpdateOwner(current.Metadata().Owner()))
	require.NoError(t, err)

	logger, logs := observedLogger(t, zap.ErrorLevel)
	second := runEngine(ctx, st, logger, controllers.Upgrades(f, fastUpgrades()...))

	rtestutils.AssertResource(ctx, t, st, "w-1", func(mus *upgrade.MachineUpgradeStatus, a *assert.Assertions) {
		a.Equal(upgrade.MachineFailed, mus.TypedSpec().Phase, "%+v", mus.TypedSpec())
		a.Equal(`unexpected step "Bogus"`, mus.TypedSpec().Error)
	}, rtestutils.WithNamespace(resources.Namespace))

	cancel()
	require.NoError(t, <-second)

	assert.Equal(t, 1, loggedFor(logs, "machine upgrade step failed", bogus))
	assert.Equal(t, []string{"PullImage"}, f.callsOf("w-1"))
}
