package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/machineconfig"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// MachineConfigStatusController keeps each machine's MachineConfigStatus (docs/architecture.md, "Config patches"):
// it records the machine's config the first time it reads it (the base its patches apply to), computes its
// effective config from the cluster's ConfigPatches, and applies the change once the cluster's config rollout
// admits the machine (ConfigRolloutStatus.Admitted, decided with the Talos rollout by TalosUpgradeStatusController).
//
// A change runs in an executor goroutine per machine (executors), so a reconcile never waits on the fleet. Every step
// is recorded before its side effect. ApplyingConfig reads the config the machine runs (already the change: done,
// so a restart never sends it again), then dry-runs it in NO_REBOOT mode: a change Talos makes live is applied so.
// One Talos refuses without a reboot, and accepts in a REBOOT dry run, goes through the Talos upgrade's steps
// (nodeSteps): for a control plane CheckingEtcd (its member may leave without losing quorum; the reason in Waiting
// while it may not) and ForfeitingLeadership, then Cordoning, Draining (the cluster's drain timeout, PDBs honoured), Rebooting (the boot ID recorded
// first; ApplyConfiguration in REBOOT mode, never sent again once the boot ID changed or the machine is rebooting),
// WaitingReady (a new boot ID, running and ready, running the change), Uncordoning. A failure after the cordon
// uncordons first. A locked machine is never started; one locked in the middle of its change finishes it.
type MachineConfigStatusController struct {
	conn Connector
	cfg  UpgradeConfig
	exec executors // by machine ID
}

// NewMachineConfigStatusController returns the controller; conn reaches the machines.
func NewMachineConfigStatusController(conn Connector, cfg UpgradeConfig) *MachineConfigStatusController {
	return &MachineConfigStatusController{conn: conn, cfg: cfg}
}

// Name implements controller.QController.
func (ctrl *MachineConfigStatusController) Name() string { return "MachineConfigStatusController" }

// Settings implements controller.QController.
func (ctrl *MachineConfigStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs: qInputs(cluster.MachineType, upgrade.MachineConfigStatusType, cluster.ConfigPatchType, upgrade.ConfigRolloutStatusType,
			cluster.MachineLockType, cluster.ClusterType, cluster.CredentialsType),
		Outputs:     []controller.Output{{Type: upgrade.MachineConfigStatusType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
		RunHook:     ctrl.exec.runHook, // executors stop with the runtime; the next run resumes them from their resources
	}
}

// MapInput implements controller.QController: a patch wakes the machines of its cluster, a config rollout status
// the machines it admitted, a lock and the machine's own status their machine.
func (ctrl *MachineConfigStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	switch ptr.Type() {
	case upgrade.MachineConfigStatusType, cluster.MachineLockType:
		return []resource.Pointer{cluster.NewMachine(ptr.ID()).Metadata()}, nil
	case cluster.ConfigPatchType:
		if id, ok := ptr.Labels().Get(cluster.LabelCluster); ok {
			return machinePointers(ctx, r, id)
		}

		return nil, nil
	case upgrade.ConfigRolloutStatusType:
		return admittedMachines(ctx, r, ptr.ID(), func(s *upgrade.ConfigRolloutStatus) []string { return s.TypedSpec().Admitted })
	default:
		return nil, nil
	}
}

// Reconcile implements controller.QController.
func (ctrl *MachineConfigStatusController) Reconcile(ctx context.Context, logger *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	machine, err := safe.ReaderGetByID[*cluster.Machine](ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			ctrl.exec.stop(id) // so nothing writes the status once destroyed

			return destroyIfExists(ctx, r, upgrade.NewMachineConfigStatus(id).Metadata())
		}

		return fmt.Errorf("reading machine %q: %w", id, err)
	}

	if ctrl.exec.running(id) {
		return nil // the executor owns the status until its last write, which wakes this reconcile again
	}

	spec := upgrade.MachineConfigStatusSpec{Cluster: machine.TypedSpec().Cluster}

	if mcs, err := safe.ReaderGetByID[*upgrade.MachineConfigStatus](ctx, r, id); err == nil {
		spec = mcs.TypedSpec().DeepCopy()
	} else if !state.IsNotFoundError(err) {
		return fmt.Errorf("reading config status of machine %q: %w", id, err)
	}

	run := configRun{ctrl: ctrl, r: r, logger: logger.With(zap.String("machine", id)), id: id, machine: machine}

	if spec.Base == "" {
		if err = run.readBase(ctx, &spec); err != nil {
			spec.Waiting = err.Error()

			if werr := run.record(ctx, spec); werr != nil {
				return werr
			}

			return controller.NewRequeueInterval(ctrl.cfg.PollInterval)
		}
	}

	if err = run.target(ctx, &spec); err != nil {
		return err
	}

	if spec.Phase == upgrade.MachineFailed && configRetryRequested(machine, spec) {
		// The rollout takes the machine on again like any other: admitted by its rules, then from ApplyingConfig.
		spec.Phase, spec.Error, spec.Waiting, spec.PhaseChangedAt = upgrade.MachineQueued, "", "", time.Now()
	}

	if !spec.Phase.InFlight() {
		start, err := run.admitted(ctx, spec)
		if err != nil {
			return err
		}

		if !start {
			return run.record(ctx, spec)
		}

		// The step is recorded, with the config it applies, before anything is sent.
		spec.Attempt = nextAttempt(spec)
		spec.Phase, spec.ChangeVersion, spec.Change, spec.Error, spec.PhaseChangedAt = upgrade.MachineApplyingConfig, spec.TargetVersion, spec.Effective, "", time.Now()
		spec.NodeName, spec.PreRebootBootID = "", ""
		if err = run.record(ctx, spec); err != nil {
			return err
		}
	}

	ctrl.exec.start(ctx, id, func(ctx context.Context, x *execution) {
		run.x = x
		run.change(ctx, spec)
	})

	return nil
}

// configRetryRequested reports whether the machine carries a retry of its failed config change
// (upgrade.RetryAnnotation, the Talos upgrade's, with the change's RetryValue).
func configRetryRequested(machine *cluster.Machine, spec upgrade.MachineConfigStatusSpec) bool {
	v, ok := machine.Metadata().Annotations().Get(upgrade.RetryAnnotation)

	return ok && v == spec.RetryValue()
}

// nextAttempt is the attempt of the change spec starts: one more when it tries the config of the last change
// again (a retry), else the first.
func nextAttempt(spec upgrade.MachineConfigStatusSpec) int {
	if spec.ChangeVersion == spec.TargetVersion {
		return spec.Attempt + 1
	}

	return 1
}

// configRun is one reconcile of one machine's config.
type configRun struct {
	ctrl    *MachineConfigStatusController
	r       controller.QRuntime
	logger  *zap.Logger
	id      string
	machine *cluster.Machine
	x       *execution // the executor of the change, once started
}

func (run configRun) api(ctx context.Context) (talos.API, error) {
	return run.steps(&upgrade.MachineConfigStatusSpec{}).talos(ctx)
}

// running reads the config the machine runs, canonically encoded.
func (run configRun) running(ctx context.Context) ([]byte, error) {
	api, err := run.api(ctx)
	if err != nil {
		return nil, err
	}

	raw, err := api.MachineConfig(ctx, run.id)
	if err != nil {
		return nil, err
	}

	p, err := machineconfig.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("machine %q runs a config the engine cannot read: %w", run.id, err)
	}

	return machineconfig.Canonical(p)
}

// readBase records the machine's config as the engine first sees it: the base its patches apply to.
func (run configRun) readBase(ctx context.Context, spec *upgrade.MachineConfigStatusSpec) error {
	base, err := run.running(ctx)
	if err != nil {
		return fmt.Errorf("reading the machine's config: %w", err)
	}

	spec.Base, spec.Applied, spec.AppliedVersion, spec.Waiting = string(base), string(base), machineconfig.Version(base), ""

	return nil
}

// target computes the machine's effective config from its base and the cluster's patches, and what is pending.
func (run configRun) target(ctx context.Context, spec *upgrade.MachineConfigStatusSpec) error {
	list, err := safe.ReaderListAll[*cluster.ConfigPatch](ctx, run.r, state.WithLabelQuery(resource.LabelEqual(cluster.LabelCluster, spec.Cluster)))
	if err != nil {
		return fmt.Errorf("listing config patches of cluster %q: %w", spec.Cluster, err)
	}

	all := slices.Collect(list.All())
	patches := cluster.PatchesFor(run.id, run.machine.TypedSpec().Role, all)
	spec.PatchSet = cluster.PatchSet(all)

	spec.Patches = spec.Patches[:0]
	for _, p := range patches {
		spec.Patches = append(spec.Patches, p.ID)
	}

	effective, err := machineconfig.Effective([]byte(spec.Base), patches)
	if err != nil {
		spec.TargetVersion, spec.Pending, spec.Diff = "", false, ""
		if !spec.Phase.InFlight() {
			spec.Error = "the effective config cannot be made: " + err.Error()
		}

		return nil
	}

	spec.Effective = string(effective)
	spec.TargetVersion, spec.Pending = machineconfig.Version(effective), machineconfig.Version(effective) != spec.AppliedVersion

	if spec.Diff, err = machineconfig.Diff([]byte(spec.Applied), effective, run.id+" applied "+spec.AppliedVersion, run.id+" effective "+spec.TargetVersion); err != nil {
		spec.Diff = "no diff: " + err.Error()
	}

	if spec.Error != "" && spec.Phase != upgrade.MachineFailed {
		spec.Error = "" // an earlier effective config failed; this one is made
	}

	return nil
}

// admitted reports whether the machine starts its pending change now: the config rollout admitted it, it is not
// locked, and its last change did not fail toward the same config (a retry makes that Queued again).
func (run configRun) admitted(ctx context.Context, spec upgrade.MachineConfigStatusSpec) (bool, error) {
	if !spec.Pending || spec.Phase == upgrade.MachineFailed && spec.ChangeVersion == spec.TargetVersion {
		return false, nil
	}

	crs, err := safe.ReaderGetByID[*upgrade.ConfigRolloutStatus](ctx, run.r, spec.Cluster)
	if err != nil {
		if state.IsNotFoundError(err) {
			return false, nil
		}

		return false, fmt.Errorf("reading config rollout status of cluster %q: %w", spec.Cluster, err)
	}

	if !slices.Contains(crs.TypedSpec().Admitted, run.id) {
		return false, nil
	}

	if _, err = safe.ReaderGetByID[*cluster.MachineLock](ctx, run.r, run.id); err == nil {
		return false, nil
	} else if !state.IsNotFoundError(err) {
		return false, fmt.Errorf("reading lock of machine %q: %w", run.id, err)
	}

	return true, nil
}

// steps are the side effects (nodeSteps) the recorded step of spec shares with a Talos upgrade; what the step
// waits for is recorded in spec (its Waiting).
func (run configRun) steps(spec *upgrade.MachineConfigStatusSpec) nodeSteps {
	return nodeSteps{
		conn: run.ctrl.conn, cfg: run.ctrl.cfg, r: run.r, logger: run.logger, id: run.id, machine: *run.machine.TypedSpec(),
		node: spec.NodeName, entered: spec.PhaseChangedAt, bootID: spec.PreRebootBootID, waiting: spec.Waiting,
		report: func(ctx context.Context, reason string) error {
			spec.Waiting = reason
			if !run.persist(ctx, *spec, false) {
				return ctx.Err()
			}

			return nil
		},
	}
}

// change is the executor of the recorded change: it runs the steps from the recorded one to Done or Failed, each
// recorded before its side effect. It returns before that only when ctx ends (the runtime stops or the machine is
// gone); the next run resumes the recorded step from what it observes.
func (run configRun) change(ctx context.Context, spec upgrade.MachineConfigStatusSpec) {
	for {
		fail, next, err := run.step(ctx, &spec)
		if ctx.Err() != nil {
			return
		}

		if err != nil {
			fail = fmt.Sprintf("%s: %v", spec.Phase, err)
		}

		spec.Waiting, spec.PhaseChangedAt = "", time.Now()

		switch {
		case fail != "" && afterCordon(spec.Phase):
			run.logger.Error("config change step failed; uncordoning", zap.String("step", string(spec.Phase)), zap.String("reason", fail))
			spec.Phase, spec.Error = upgrade.MachineUncordoning, fail
		case fail != "":
			spec.Phase, spec.Error = upgrade.MachineFailed, joinFailures(spec.Error, fail)
		case spec.Phase == upgrade.MachineUncordoning && spec.Error != "":
			spec.Phase = upgrade.MachineFailed
		default:
			spec.Phase = next
		}

		if spec.Phase == upgrade.MachineRebooting {
			// The boot ID is recorded before the reboot: a different one afterwards proves it happened.
			// spec is the next step, not recorded yet: a record of it half made (no boot ID) must not be written.
			ns := run.steps(&spec)
			ns.report = nil

			st, fail, err := ns.observeReachable(ctx, spec.PhaseChangedAt.Add(run.ctrl.cfg.StepTimeout))
			if err != nil {
				return
			}

			if fail != "" {
				spec.Phase, spec.Error = upgrade.MachineUncordoning, fail
			}

			spec.PreRebootBootID = st.BootID
		}

		switch spec.Phase {
		case upgrade.MachineDone:
			run.done(&spec)
			run.persist(ctx, spec, true)

			return
		case upgrade.MachineFailed:
			run.logger.Error("config change failed", zap.String("reason", spec.Error))
			run.persist(ctx, spec, true)

			return
		}

		if !run.persist(ctx, spec, false) {
			return
		}
	}
}

// afterCordon reports whether a step failing in phase p may leave the node cordoned, so it is uncordoned first.
func afterCordon(p upgrade.MachinePhase) bool {
	switch p { //nolint:exhaustive // the other phases come before the cordon or are the uncordon
	case upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineRebooting, upgrade.MachineWaitingReady:
		return true
	default:
		return false
	}
}

// step makes the side effect of the recorded step and returns the next one (see nodeSteps for fail and err).
func (run configRun) step(ctx context.Context, spec *upgrade.MachineConfigStatusSpec) (string, upgrade.MachinePhase, error) {
	ns := run.steps(spec)

	switch spec.Phase {
	case upgrade.MachineApplyingConfig:
		return run.apply(ctx, spec)
	case upgrade.MachineCheckingEtcd:
		fail, err := ns.waitEtcdGate(ctx)

		return fail, upgrade.MachineForfeitingLeadership, err
	case upgrade.MachineForfeitingLeadership:
		fail, err := ns.forfeitLeadership(ctx)

		return fail, upgrade.MachineCordoning, err
	case upgrade.MachineCordoning:
		fail, err := ns.cordon(ctx)

		return fail, upgrade.MachineDraining, err
	case upgrade.MachineDraining:
		fail, err := ns.drain(ctx)

		return fail, upgrade.MachineRebooting, err
	case upgrade.MachineRebooting:
		fail, err := ns.rebootOnce(ctx, "apply the config with a reboot", func(ctx context.Context, api talos.API) error {
			_, err := api.ApplyConfiguration(ctx, run.id, []byte(spec.Change), machineapi.ApplyConfigurationRequest_REBOOT, false)

			return err
		})

		return fail, upgrade.MachineWaitingReady, err
	case upgrade.MachineWaitingReady:
		return run.waitChanged(ctx, ns, spec.ChangeVersion)
	case upgrade.MachineUncordoning:
		fail, err := ns.uncordon(ctx)

		return fail, upgrade.MachineDone, err
	default:
		return fmt.Sprintf("unexpected step %q", spec.Phase), "", nil // a record this engine cannot continue
	}
}

// apply is the ApplyingConfig step: done at once when the machine already runs the change (it was sent before a
// restart); otherwise a NO_REBOOT dry run, and the change in NO_REBOOT mode when Talos can make it live. A change
// NO_REBOOT refuses and a REBOOT dry run accepts needs a reboot: the next step is Cordoning, for a control plane
// first CheckingEtcd and ForfeitingLeadership, the Talos upgrade's steps before its member leaves. An unreachable machine
// is waited for, up to the step timeout; the next try reads the running config first, so an apply whose answer
// was lost is not sent twice.
func (run configRun) apply(ctx context.Context, spec *upgrade.MachineConfigStatusSpec) (string, upgrade.MachinePhase, error) {
	ns := run.steps(spec)
	change := []byte(spec.Change)
	next := upgrade.MachineDone

	fail, err := ns.retry(ctx, "apply config", func() (string, error) {
		running, err := run.running(ctx)
		if err != nil || machineconfig.Version(running) == spec.ChangeVersion {
			return "", err
		}

		api, err := ns.talos(ctx)
		if err != nil {
			return "", err
		}

		live, err := api.ApplyConfiguration(ctx, run.id, change, machineapi.ApplyConfigurationRequest_NO_REBOOT, true)
		if err == nil {
			_, err = api.ApplyConfiguration(ctx, run.id, change, machineapi.ApplyConfigurationRequest_NO_REBOOT, false)

			return refusal(err)
		}

		if !refused(err) {
			return "", err
		}

		if _, rerr := api.ApplyConfiguration(ctx, run.id, change, machineapi.ApplyConfigurationRequest_REBOOT, true); rerr != nil {
			return refusal(rerr)
		}

		st, oerr := ns.observe(ctx)
		if oerr != nil {
			return "", oerr
		}

		run.logger.Info("the config change needs a reboot", zap.String("talos", err.Error()), zap.String("dry run", live))
		spec.NodeName, next = nodeName(run.id, st.NodeName), upgrade.MachineCordoning

		if run.machine.TypedSpec().Role == cluster.RoleControlPlane {
			next = upgrade.MachineCheckingEtcd // its etcd member leaves with the reboot
		}

		return "", nil
	})

	return fail, next, err
}

// refusal splits an ApplyConfiguration error into a failure of the step (Talos refused the config) and an error
// worth another try.
func refusal(err error) (string, error) {
	if refused(err) {
		return "config: " + err.Error(), nil
	}

	return "", err
}

// waitChanged is the WaitingReady step: the machine back from its reboot (nodeSteps.waitBack), running the change.
func (run configRun) waitChanged(ctx context.Context, ns nodeSteps, version string) (string, upgrade.MachinePhase, error) {
	if _, fail, err := ns.waitBack(ctx, func(talos.MachineStatus) string { return "" }); fail != "" || err != nil {
		return fail, "", err
	}

	fail, err := ns.retry(ctx, "read the config after the reboot", func() (string, error) {
		running, err := run.running(ctx)
		if err != nil {
			return "", err
		}

		if v := machineconfig.Version(running); v != version {
			return fmt.Sprintf("the machine came back running config %s instead of %s", v, version), nil
		}

		return "", nil
	})

	return fail, upgrade.MachineUncordoning, err
}

// done records the change as the config the machine runs.
func (run configRun) done(spec *upgrade.MachineConfigStatusSpec) {
	var err error

	spec.Applied, spec.AppliedVersion, spec.Error = spec.Change, spec.ChangeVersion, ""
	spec.Pending = spec.AppliedVersion != spec.TargetVersion

	if spec.Diff, err = machineconfig.Diff([]byte(spec.Applied), []byte(spec.Effective), run.id+" applied", run.id+" effective"); err != nil || !spec.Pending {
		spec.Diff = ""
	}

	run.logger.Info("config applied", zap.String("version", spec.AppliedVersion), zap.Bool("rebooted", spec.PreRebootBootID != ""))
}

// persist records spec, again after the retry delay while the store fails, until ctx ends; the last write (last)
// also frees the machine for the next reconcile (execution.finish). It reports whether spec was recorded.
func (run configRun) persist(ctx context.Context, spec upgrade.MachineConfigStatusSpec, last bool) bool {
	for {
		write := func() error { return run.record(ctx, spec) }

		var err error
		if last {
			err = run.x.finish(write)
		} else {
			err = write()
		}

		if err == nil {
			return true
		}

		run.logger.Error("recording the config change failed; retrying", zap.Error(err))

		if sleep(ctx, run.ctrl.cfg.RetryDelay) != nil {
			return false
		}
	}
}

func refused(err error) bool {
	var te *talos.Error

	return errors.As(err, &te) && te.Kind == talos.KindRefused
}

func (run configRun) record(ctx context.Context, spec upgrade.MachineConfigStatusSpec) error {
	if err := safe.WriterModify(ctx, run.r, upgrade.NewMachineConfigStatus(run.id), func(s *upgrade.MachineConfigStatus) error {
		s.Metadata().Labels().Set(cluster.LabelCluster, spec.Cluster)
		*s.TypedSpec() = spec

		return nil
	}); err != nil {
		return fmt.Errorf("recording config status of machine %q: %w", run.id, err)
	}

	return nil
}
