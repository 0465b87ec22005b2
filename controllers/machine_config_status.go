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
// A change is applied without a reboot: ApplyConfiguration in NO_REBOOT mode, checked first with a dry run. The
// step is recorded (ApplyingConfig with the config it applies) before anything is sent, and every run of it first
// reads the config the machine runs: when that is already the change, the step is done, so a restart never sends
// it again. A change Talos can only make with a reboot is refused by the dry run, and the machine fails with
// Talos' reason. A locked machine is never started; one locked in the middle of its step finishes it.
type MachineConfigStatusController struct {
	conn Connector
	cfg  UpgradeConfig
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
		crs, err := safe.ReaderGetByID[*upgrade.ConfigRolloutStatus](ctx, r, ptr.ID())
		if err != nil {
			if state.IsNotFoundError(err) {
				return nil, nil
			}

			return nil, fmt.Errorf("reading config rollout status of cluster %q: %w", ptr.ID(), err)
		}

		out := make([]resource.Pointer, 0, len(crs.TypedSpec().Admitted))
		for _, id := range crs.TypedSpec().Admitted {
			out = append(out, cluster.NewMachine(id).Metadata())
		}

		return out, nil
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
			return destroyIfExists(ctx, r, upgrade.NewMachineConfigStatus(id).Metadata())
		}

		return fmt.Errorf("reading machine %q: %w", id, err)
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

	if spec.Phase != upgrade.MachineApplyingConfig {
		start, err := run.admitted(ctx, spec)
		if err != nil {
			return err
		}

		if !start {
			return run.record(ctx, spec)
		}

		// The step is recorded, with the config it applies, before anything is sent.
		spec.Phase, spec.ChangeVersion, spec.Change, spec.Error, spec.PhaseChangedAt = upgrade.MachineApplyingConfig, spec.TargetVersion, spec.Effective, "", time.Now()
		if err = run.record(ctx, spec); err != nil {
			return err
		}
	}

	return run.apply(ctx, spec)
}

// configRun is one reconcile of one machine's config.
type configRun struct {
	ctrl    *MachineConfigStatusController
	r       controller.QRuntime
	logger  *zap.Logger
	id      string
	machine *cluster.Machine
}

func (run configRun) api(ctx context.Context) (talos.API, error) {
	access, err := readAccess(ctx, run.r, run.machine.TypedSpec().Cluster, run.machine.TypedSpec().Endpoint)
	if err != nil {
		return nil, err
	}

	return run.ctrl.conn.Talos(ctx, access)
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
		if spec.Phase != upgrade.MachineApplyingConfig {
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
// locked, and its last change did not fail toward the same config.
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

// apply makes the recorded change: done at once when the machine already runs it (the change was sent before a
// restart); otherwise a dry run in NO_REBOOT mode, then the change. An unreachable machine is waited for, up to
// the step timeout counted from the step's start.
func (run configRun) apply(ctx context.Context, spec upgrade.MachineConfigStatusSpec) error {
	fail := func(reason string) error {
		spec.Phase, spec.Error, spec.Waiting, spec.PhaseChangedAt = upgrade.MachineFailed, reason, "", time.Now()
		run.logger.Error("config change failed", zap.String("reason", reason))

		return run.record(ctx, spec)
	}

	wait := func(err error) error {
		if time.Since(spec.PhaseChangedAt) > run.ctrl.cfg.StepTimeout {
			return fail("timeout: " + err.Error())
		}

		spec.Waiting = err.Error()
		if werr := run.record(ctx, spec); werr != nil {
			return werr
		}

		return controller.NewRequeueInterval(run.ctrl.cfg.RetryDelay)
	}

	running, err := run.running(ctx)
	if err != nil {
		return wait(err)
	}

	if machineconfig.Version(running) != spec.ChangeVersion {
		api, err := run.api(ctx)
		if err != nil {
			return wait(err)
		}

		if _, err = api.ApplyConfiguration(ctx, run.id, []byte(spec.Change), machineapi.ApplyConfigurationRequest_NO_REBOOT, true); err != nil {
			if refused(err) {
				return fail("config: " + err.Error())
			}

			return wait(err)
		}

		if _, err = api.ApplyConfiguration(ctx, run.id, []byte(spec.Change), machineapi.ApplyConfigurationRequest_NO_REBOOT, false); err != nil {
			if refused(err) {
				return fail("config: " + err.Error())
			}

			return wait(err) // whether it was applied, the next run reads from the machine
		}
	}

	spec.Phase, spec.Applied, spec.AppliedVersion, spec.Waiting, spec.Error, spec.PhaseChangedAt = upgrade.MachineDone, spec.Change, spec.ChangeVersion, "", "", time.Now()
	spec.Pending = spec.AppliedVersion != spec.TargetVersion

	if spec.Diff, err = machineconfig.Diff([]byte(spec.Applied), []byte(spec.Effective), run.id+" applied", run.id+" effective"); err != nil || !spec.Pending {
		spec.Diff = ""
	}

	run.logger.Info("config applied without a reboot", zap.String("version", spec.AppliedVersion))

	return run.record(ctx, spec)
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
