package controllers_test

import (
	"context"
	"sync"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// downOnFirst takes node down when it is first called with method and arg (any arg when arg is empty), so the call
// and the tries after it find the machine unreachable; the returned channel is closed then.
func downOnFirst(f *fakeFleet, node, method, arg string) <-chan struct{} {
	var once sync.Once

	down := make(chan struct{})

	f.hook(func(c fakeCall) {
		if c.Node != node || c.Method != method || (arg != "" && c.Arg != arg) {
			return
		}

		once.Do(func() {
			f.set(node, func(n *fakeNode) { n.down = true })
			close(down)
		})
	})

	return down
}

func waitClosed(ctx context.Context, t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()

	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal(what)
	}
}

// A machine unreachable in the middle of a step that retries (nodeSteps.retry) shows it in its status: the step
// stays, Waiting says what it retries and why, and once the machine answers again the step goes on and Waiting is
// cleared. The Talos upgrade and the config change share that home, so both say it.
func TestNodeStepsUnreachableShownInWaiting(t *testing.T) {
	t.Parallel()

	t.Run("talos upgrade", func(t *testing.T) {
		t.Parallel()

		f := newFakeFleet(v13, 0, 1)
		down := downOnFirst(f, "w-1", "PullImage", "")

		ctx, st := startUpgrades(t, f)
		createAndUpgrade(ctx, t, st, f, nil)
		waitClosed(ctx, t, down, "w-1 never pulled")

		rtestutils.AssertResource(ctx, t, st, "w-1", func(s *upgrade.MachineUpgradeStatus, a *assert.Assertions) {
			a.Equal(upgrade.MachinePullingImage, s.TypedSpec().Phase)
			a.Contains(s.TypedSpec().Waiting, "pull (retrying until ")
			a.Contains(s.TypedSpec().Waiting, "connection refused")
		}, rtestutils.WithNamespace(resources.Namespace))

		f.set("w-1", func(n *fakeNode) { n.down = false })
		assertDone(ctx, t, st, v14)

		mus := machineUpgrade(ctx, t, st, "w-1")
		assert.Empty(t, mus.Waiting)
		assert.Equal(t, 1, f.count("w-1", "Install"))
	})

	t.Run("config change", func(t *testing.T) {
		t.Parallel()

		f := newFakeFleet(v13, 0, 1)
		serveConfigs(t, f)
		down := downOnFirst(f, "w-1", "ApplyConfiguration", "NO_REBOOT dry-run")

		ctx, st := startUpgrades(t, f)
		startConfigRollout(ctx, t, st, f, proxyPatch)
		waitClosed(ctx, t, down, "w-1 was never sent the change")

		rtestutils.AssertResource(ctx, t, st, "w-1", func(s *upgrade.MachineConfigStatus, a *assert.Assertions) {
			a.Equal(upgrade.MachineApplyingConfig, s.TypedSpec().Phase)
			a.Contains(s.TypedSpec().Waiting, "apply config (retrying until ")
			a.Contains(s.TypedSpec().Waiting, "connection refused")
		}, rtestutils.WithNamespace(resources.Namespace))

		f.set("w-1", func(n *fakeNode) { n.down = false })
		assertConfigRollout(ctx, t, st, func(s *upgrade.ConfigRolloutStatusSpec, a *assert.Assertions) {
			a.Equal(upgrade.PhaseDone, s.Phase)
		})

		rtestutils.AssertResource(ctx, t, st, "w-1", func(s *upgrade.MachineConfigStatus, a *assert.Assertions) {
			a.Empty(s.TypedSpec().Waiting)
		}, rtestutils.WithNamespace(resources.Namespace))
		// The dry run that found the machine down is tried again; the change itself is sent once.
		assert.Equal(t, []string{"NO_REBOOT dry-run", "NO_REBOOT dry-run", "REBOOT dry-run", "REBOOT"}, f.applies("w-1"))
	})
}
