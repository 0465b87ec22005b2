package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
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
		return run.talosCall(ctx, "pull", func(ctx context.Context, api talos.API) error {
			_, err := api.PullImage(ctx, node, s.Image)

			return err
		})
	case upgrade.MachineInstalling:
		if run.flow(s) == rollout.FlowLegacy {
			return run.rebootOnce(ctx, "upgrade", func(ctx context.Context, api talos.API) error { return api.LegacyUpgrade(ctx, node, s.Image) })
		}

		if run.resumed {
			return run.installUnconfirmed(ctx, "install step resumed after a restart")
		}

		return run.installOnce(ctx)
	case upgrade.MachineCheckingEtcd:
		return run.waitEtcdGate(ctx)
	case upgrade.MachineForfeitingLeadership:
		if cps, _, err := controlPlanes(ctx, run.r, run.machine.Cluster); err == nil && len(cps) < 2 {
			return "", nil // a single member keeps its leadership: there is nobody to hand it to
		}

		return run.talosCall(ctx, "forfeit etcd leadership", func(ctx context.Context, api talos.API) error { return api.EtcdForfeitLeadership(ctx, node) })
	case upgrade.MachineCordoning:
		return run.kubeCall(ctx, "cordon", func(ctx context.Context, nodes kube.Nodes) error { return nodes.Cordon(ctx, s.NodeName) })
	case upgrade.MachineDraining:
		return run.drain(ctx)
	case upgrade.MachineRebooting:
		return run.rebootOnce(ctx, "reboot", func(ctx context.Context, api talos.API) error { return api.Reboot(ctx, node) })
	case upgrade.MachineWaitingReady:
		return run.waitReady(ctx)
	case upgrade.MachineUncordoning:
		return run.kubeCall(ctx, "uncordon", func(ctx context.Context, nodes kube.Nodes) error { return nodes.Uncordon(ctx, s.NodeName) })
	default:
		return fmt.Sprintf("unexpected step %q", s.Phase), nil // a record this engine cannot continue
	}
}

// deadline is when the recorded step, entered at PhaseChangedAt, gives up after d; it survives restarts.
func (run *machineRun) deadline(d time.Duration) time.Time { return run.spec.PhaseChangedAt.Add(d) }

func (run *machineRun) talos(ctx context.Context) (talos.API, error) {
	access, err := readAccess(ctx, run.r, run.machine.Cluster, run.machine.Endpoint)
	if err != nil {
		return nil, err
	}

	return run.ctrl.conn.Talos(ctx, access)
}

// retry runs try until it succeeds or fails for good, waiting the retry delay between tries, until the step timeout.
// try returns the failure of the step for good (fail), or an error worth another try (again).
func (run *machineRun) retry(ctx context.Context, what string, try func() (fail string, again error)) (string, error) {
	deadline := run.deadline(run.ctrl.cfg.StepTimeout)

	for {
		fail, again := try()

		switch {
		case ctx.Err() != nil:
			return "", ctx.Err()
		case again == nil:
			return fail, nil
		}

		if fail, err := run.waitOrTimeout(ctx, deadline, what, again); fail != "" || err != nil {
			return fail, err
		}
	}
}

// talosCall makes an idempotent call, again while the machine is unreachable, until the step timeout.
func (run *machineRun) talosCall(ctx context.Context, what string, call func(context.Context, talos.API) error) (string, error) {
	return run.retry(ctx, what, func() (string, error) { return run.tryTalos(ctx, what, call) })
}

// tryTalos makes call once: a refusal fails the step; an unreachable machine, or a call not sent because new
// credentials replaced the client, is worth another try.
func (run *machineRun) tryTalos(ctx context.Context, what string, call func(context.Context, talos.API) error) (string, error) {
	api, err := run.talos(ctx)
	if err != nil {
		return "", err
	}

	if err = call(ctx, api); err != nil && !talos.IsUnreachable(err) && !errors.Is(err, ErrClientReplaced) {
		return fmt.Sprintf("%s: %v", what, err), nil
	}

	return "", err
}

// waitOrTimeout waits before the next try of a step, or says it timed out with the last error.
func (run *machineRun) waitOrTimeout(ctx context.Context, deadline time.Time, what string, last error) (string, error) {
	if !time.Now().Before(deadline) {
		return fmt.Sprintf("%s: %s: %v", ReasonTimeout, what, last), nil
	}

	run.logger.Debug("machine step waits", zap.String("step", what), zap.Error(last))

	return "", sleep(ctx, min(run.ctrl.cfg.RetryDelay, time.Until(deadline)+time.Millisecond))
}

// observeReachable observes the machine, waiting while it is unreachable until deadline.
func (run *machineRun) observeReachable(ctx context.Context, deadline time.Time) (talos.MachineStatus, string, error) {
	for {
		st, err := run.observe(ctx)
		if err == nil {
			return st, "", nil
		}

		if fail, err := run.waitOrTimeout(ctx, deadline, "observe", err); fail != "" || err != nil {
			return st, fail, err
		}
	}
}

func (run *machineRun) observe(ctx context.Context) (talos.MachineStatus, error) {
	api, err := run.talos(ctx)
	if err != nil {
		return talos.MachineStatus{}, err
	}

	ctx, cancel := context.WithTimeout(ctx, run.ctrl.cfg.ObserveTimeout)
	defer cancel()

	return api.MachineStatus(ctx, run.id)
}

// rebootingStages are the Talos machine stages of a machine that is going down or replacing its Talos.
var rebootingStages = []string{"rebooting", "upgrading", "installing", "shutting down", "resetting"}

// rebootOnce is a step whose call reboots the machine (Reboot, or the legacy Upgrade). The machine is observed
// before the call: a boot ID other than the one recorded before the step, or a machine already rebooting or
// upgrading, means the call was made before a restart of the engine, and it is not made again. A call that may
// have reached the machine (it became unreachable) is decided the same way once the machine answers again.
func (run *machineRun) rebootOnce(ctx context.Context, what string, call func(context.Context, talos.API) error) (string, error) {
	return run.retry(ctx, what, func() (string, error) {
		st, err := run.observe(ctx)
		if err != nil {
			return "", err
		}

		if st.BootID != run.spec.PreRebootBootID || slices.Contains(rebootingStages, st.Stage) {
			return "", nil
		}

		return run.tryTalos(ctx, what, call)
	})
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
	return run.retry(ctx, "install", func() (string, error) {
		if _, err := run.observe(ctx); err != nil {
			return "", err // not sent: try again
		}

		fail, err := run.tryTalos(ctx, "install", func(ctx context.Context, api talos.API) error { return api.Install(ctx, run.id, run.spec.Image) })
		if talos.IsUnreachable(err) && ctx.Err() == nil {
			return run.installUnconfirmed(ctx, fmt.Sprintf("the install's answer broke off (%v)", err))
		}

		return fail, err
	})
}

// waitReady waits for the machine to come back from its reboot: a new boot ID, on the target version, running and
// ready. Back on another version is a rollback, except back on the old version after an unconfirmed install: the
// install may never have reached the machine, and the step passes with InstallUnconfirmed still set, for the next
// step to install again (nextPhase). Back on the target confirms the install. Not back by the reboot timeout is a
// timeout.
func (run *machineRun) waitReady(ctx context.Context) (string, error) {
	deadline := run.deadline(run.ctrl.cfg.RebootTimeout)

	for {
		st, err := run.observe(ctx)
		if err == nil && st.BootID != run.spec.PreRebootBootID {
			onTarget := rollout.SameVersion(st.Version, run.spec.ToVersion)
			if !onTarget && !(run.spec.InstallUnconfirmed && rollout.SameVersion(st.Version, run.spec.FromVersion)) {
				return fmt.Sprintf("%s: the machine came back on %s instead of %s", ReasonRolledBack, st.Version, run.spec.ToVersion), nil
			}

			if st.Stage == "running" && st.Ready {
				return "", run.confirmInstall(ctx, onTarget)
			}

			err = fmt.Errorf("back on %s but %s and not ready yet", st.Version, st.Stage)
		} else if err == nil {
			err = errors.New("not rebooted yet")
		}

		if !time.Now().Before(deadline) {
			return fmt.Sprintf("%s: not back within %s: %v", ReasonTimeout, run.ctrl.cfg.RebootTimeout, err), nil
		}

		if err := sleep(ctx, min(run.ctrl.cfg.RetryDelay, time.Until(deadline)+time.Millisecond)); err != nil {
			return "", err
		}
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

// waitEtcdGate waits, without a timeout, until etcd may lose this control plane's member; while it may not, the
// reason is recorded in Waiting and the cluster shows Blocked.
func (run *machineRun) waitEtcdGate(ctx context.Context) (string, error) {
	for {
		ok, reason := run.etcdGate(ctx)
		if ok {
			return "", nil
		}

		if reason != run.spec.Waiting {
			waiting := run.spec
			waiting.Waiting = reason

			if err := run.write(ctx, waiting); err != nil {
				return "", err
			}
		}

		if err := sleep(ctx, run.ctrl.cfg.RetryDelay); err != nil {
			return "", err
		}
	}
}

func (run *machineRun) etcdGate(ctx context.Context) (bool, string) {
	cps, _, err := controlPlanes(ctx, run.r, run.machine.Cluster)
	if err != nil {
		return false, err.Error()
	}

	api, err := run.talos(ctx)
	if err != nil {
		return false, err.Error()
	}

	ctx, cancel := context.WithTimeout(ctx, run.ctrl.cfg.ObserveTimeout)
	defer cancel()

	etcd := observeEtcd(ctx, api, cps)

	return rollout.ControlPlaneMayLeave(&etcd, run.id)
}

func (run *machineRun) kube(ctx context.Context) (kube.Nodes, error) {
	access, err := readAccess(ctx, run.r, run.machine.Cluster, run.machine.Endpoint)
	if err != nil {
		return nil, err
	}

	return run.ctrl.conn.Kubernetes(ctx, access)
}

// kubeCall makes an idempotent call on the machine's node, again while it fails, until the step timeout. Without
// a Kubernetes API (no kubeconfig) or without a node, there is nothing to protect and the step passes.
func (run *machineRun) kubeCall(ctx context.Context, what string, call func(context.Context, kube.Nodes) error) (string, error) {
	return run.retry(ctx, what, func() (string, error) {
		nodes, err := run.kube(ctx)
		if errors.Is(err, ErrNoKubernetes) {
			run.logger.Info("no Kubernetes access: step skipped", zap.String("step", what))

			return "", nil
		}

		if err == nil {
			err = call(ctx, nodes)
		}

		if apierrors.IsNotFound(err) {
			return "", nil
		}

		return "", err
	})
}

// drain evicts the node's pods within the cluster's drain timeout, counted from when the step was entered.
func (run *machineRun) drain(ctx context.Context) (string, error) {
	timeout := cluster.DefaultDrainTimeout

	if c, err := safe.ReaderGetByID[*cluster.Cluster](ctx, run.r, run.machine.Cluster); err == nil {
		if d, err := c.TypedSpec().DrainTimeoutDuration(); err == nil {
			timeout = d
		}
	}

	left := time.Until(run.deadline(timeout))
	if left <= 0 {
		return fmt.Sprintf("%s: not finished within %s", ReasonDrain, timeout), nil
	}

	nodes, err := run.kube(ctx)
	if errors.Is(err, ErrNoKubernetes) {
		return "", nil
	}

	if err == nil {
		err = nodes.Drain(ctx, run.spec.NodeName, left)
	}

	switch {
	case err == nil, apierrors.IsNotFound(err):
		return "", nil
	case ctx.Err() != nil:
		return "", ctx.Err()
	default:
		return fmt.Sprintf("%s: %v", ReasonDrain, err), nil
	}
}
