package controllers

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// The side effects of the steps of machineRun. Each returns fail, the reason the upgrade fails ("" when the step
// succeeded), and an error only when ctx ended (the runtime stops and the step is resumed by the next one).

// Reasons a step fails with; MachineUpgradeStatus.Error starts with one of them.
const (
	ReasonRolledBack = "rolled back"
	ReasonTimeout    = "timeout"
	ReasonDrain      = "drain"
)

// do runs the side effect of the recorded step.
func (run *machineRun) do(ctx context.Context) (string, error) {
	s := run.spec
	node := run.id

	switch s.Phase {
	case upgrade.MachinePullingImage:
		return run.steps().talosCall(ctx, "pull", func(ctx context.Context, api talos.API) error {
			_, err := api.PullImage(ctx, node, s.Image)

			return err
		})
	case upgrade.MachineInstalling:
		if run.flow(s) == rollout.FlowLegacy {
			return run.steps().rebootOnce(ctx, "upgrade", func(ctx context.Context, api talos.API) error { return api.LegacyUpgrade(ctx, node, s.Image) })
		}

		if run.resumed {
			return run.installUnconfirmed(ctx, "install step resumed after a restart")
		}

		return run.installOnce(ctx)
	case upgrade.MachineCheckingEtcd:
		return run.steps().waitEtcdGate(ctx)
	case upgrade.MachineForfeitingLeadership:
		return run.steps().forfeitLeadership(ctx)
	case upgrade.MachineCordoning:
		return run.steps().cordon(ctx)
	case upgrade.MachineDraining:
		return run.steps().drain(ctx)
	case upgrade.MachineRebooting:
		return run.steps().rebootOnce(ctx, "reboot", func(ctx context.Context, api talos.API) error { return api.Reboot(ctx, node) })
	case upgrade.MachineWaitingReady:
		return run.waitReady(ctx)
	case upgrade.MachineUncordoning:
		return run.steps().uncordon(ctx)
	default:
		return fmt.Sprintf("unexpected step %q", s.Phase), nil // a record this engine cannot continue
	}
}

// installUnconfirmed is the Installing step of the lifecycle flow when this run did not enter it: an earlier run
// may or may not have sent LifecycleService.Upgrade before the engine stopped, and Talos shows nothing of a staged
// install until the reboot (the installer writes it straight to disk; the running system does not reload it).
// The install is not sent again: in upgrade mode the installer writes the inactive A/B slot and keeps the running
// one as the fallback, so a second install before the reboot could overwrite that fallback too and leave no way
// back. The step records the doubt instead (InstallUnconfirmed) and passes; the machine's version after the reboot
// settles it (waitReady).
func (run *machineRun) installUnconfirmed(ctx context.Context, why string) (string, error) {
	run.logger.Warn(why+": the install is not sent again; the version after the reboot shows whether it happened",
		zap.String("image", run.spec.Image))

	if run.spec.InstallUnconfirmed {
		return "", nil
	}

	s := run.spec
	s.InstallUnconfirmed = true

	return "", run.write(ctx, s)
}

// installOnce sends the lifecycle flow's install, at most once. It first observes the machine, so an unreachable
// machine is waited for without sending anything; an install whose answer broke off (unreachable) may have reached
// the machine, so it is not sent again either: the step passes with the doubt recorded, as a resumed one does.
func (run *machineRun) installOnce(ctx context.Context) (string, error) {
	return run.steps().retry(ctx, "install", func() (string, error) {
		if _, err := run.steps().observe(ctx); err != nil {
			return "", err // not sent: try again
		}

		fail, err := run.steps().tryTalos(ctx, "install", func(ctx context.Context, api talos.API) error { return api.Install(ctx, run.id, run.spec.Image) })
		if talos.IsUnreachable(err) && ctx.Err() == nil {
			return run.installUnconfirmed(ctx, fmt.Sprintf("the install's answer broke off (%v)", err))
		}

		return fail, err
	})
}

// waitReady waits for the machine to come back from its reboot (nodeSteps.waitBack) on the target version. Back on
// another version is a rollback, except back on the old version after an unconfirmed install: the install may never
// have reached the machine, and the step passes with InstallUnconfirmed still set, for the next step to install
// again (nextPhase). Back on the target confirms the install.
func (run *machineRun) waitReady(ctx context.Context) (string, error) {
	st, fail, err := run.steps().waitBack(ctx, func(st talos.MachineStatus) string {
		if !rollout.SameVersion(st.Version, run.spec.ToVersion) && !(run.spec.InstallUnconfirmed && rollout.SameVersion(st.Version, run.spec.FromVersion)) {
			return fmt.Sprintf("%s: the machine came back on %s instead of %s", ReasonRolledBack, st.Version, run.spec.ToVersion)
		}

		return ""
	})
	if fail != "" || err != nil {
		return fail, err
	}

	return "", run.confirmInstall(ctx, rollout.SameVersion(st.Version, run.spec.ToVersion))
}

// steps are the shared side effects (nodeSteps) of the recorded step.
func (run *machineRun) steps() nodeSteps {
	return nodeSteps{
		conn: run.ctrl.conn, cfg: run.ctrl.cfg, r: run.r, logger: run.logger, id: run.id, machine: run.machine,
		node: run.spec.NodeName, entered: run.spec.PhaseChangedAt, bootID: run.spec.PreRebootBootID, waiting: run.spec.Waiting,
		report: func(ctx context.Context, reason string) error {
			waiting := run.spec
			waiting.Waiting = reason

			return run.write(ctx, waiting)
		},
	}
}

// confirmInstall clears InstallUnconfirmed once the machine came back on the target: the install did happen.
func (run *machineRun) confirmInstall(ctx context.Context, onTarget bool) error {
	if !onTarget || !run.spec.InstallUnconfirmed {
		return nil
	}

	s := run.spec
	s.InstallUnconfirmed = false

	return run.write(ctx, s)
}
