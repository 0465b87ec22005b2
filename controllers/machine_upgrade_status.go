package controllers

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// MachineUpgradeStatusController drives each machine the rollout admitted through its steps (docs/architecture.md,
// "One machine's upgrade: the step machine"), recording every step in its MachineUpgradeStatus before the step's
// side effect.
//
// A reconcile never waits on a machine: it starts (or, after a restart, resumes) one executor goroutine per
// machine in flight, which runs the steps one after the other and reports back by writing the resource. So a slow
// pull, drain or reboot delays nobody else. Each step first looks at the machine (boot ID, stage, version) to see
// whether its side effect already happened, so a restart in the middle of a step never repeats a Reboot or a
// legacy Upgrade; a LifecycleService.Upgrade, which shows nothing until the reboot, is never sent by a resumed step
// (see installUnconfirmed). Failures are final until a user retries (upgrade.RetryAnnotation): "rolled back" when
// the machine comes back on its old version, "timeout" when it does not come back, "drain" when its drain does not
// finish (the node is uncordoned first); there is no automatic retry that could brick a node (the one second
// install, after an unconfirmed one, comes only once a reboot brought the machine back on its old version).
type MachineUpgradeStatusController struct {
	conn Connector
	cfg  UpgradeConfig
	exec executors // by machine ID
}

// NewMachineUpgradeStatusController returns the controller; conn reaches the machines and their nodes.
func NewMachineUpgradeStatusController(conn Connector, cfg UpgradeConfig) *MachineUpgradeStatusController {
	return &MachineUpgradeStatusController{conn: conn, cfg: cfg}
}

// Name implements controller.QController.
func (ctrl *MachineUpgradeStatusController) Name() string { return "MachineUpgradeStatusController" }

// Settings implements controller.QController. The controller's own output is also an input: an executor's final
// write wakes the machine's reconcile, which then sees it free for the next decision.
func (ctrl *MachineUpgradeStatusController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs: qInputs(cluster.MachineType, upgrade.MachineUpgradeStatusType, upgrade.TalosUpgradeStatusType,
			cluster.MachineLockType, observe.MachineStatusType, cluster.ClusterType, cluster.CredentialsType),
		Outputs:     []controller.Output{{Type: upgrade.MachineUpgradeStatusType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
		RunHook:     ctrl.exec.runHook, // executors stop with the runtime; the next run resumes them from their resources
	}
}

// MapInput implements controller.QController: a cluster's upgrade status wakes the machines it admitted; the
// per-machine inputs wake their machine; Cluster and Credentials are only read.
func (ctrl *MachineUpgradeStatusController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	switch ptr.Type() {
	case upgrade.MachineUpgradeStatusType, cluster.MachineLockType, observe.MachineStatusType:
		return []resource.Pointer{cluster.NewMachine(ptr.ID()).Metadata()}, nil
	case upgrade.TalosUpgradeStatusType:
		return admittedMachines(ctx, r, ptr.ID(), func(s *upgrade.TalosUpgradeStatus) []string { return s.TypedSpec().Admitted })
	default:
		return nil, nil
	}
}

// Reconcile implements controller.QController: it resumes a machine in flight, turns a retried failure back to
// Queued, or starts an admitted machine.
func (ctrl *MachineUpgradeStatusController) Reconcile(ctx context.Context, logger *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	machine, err := safe.ReaderGetByID[*cluster.Machine](ctx, r, id)
	if err != nil && !state.IsNotFoundError(err) {
		return fmt.Errorf("reading machine %q: %w", id, err)
	}

	if machine == nil {
		// A deleted machine's executor ends first, so nothing writes its status once destroyed.
		if ctrl.exec.stop(id) {
			logger.Warn("machine upgrade stopped: the machine was deleted", zap.String("machine", id))
		}

		return destroyIfExists(ctx, r, upgrade.NewMachineUpgradeStatus(id).Metadata())
	}

	if ctrl.exec.running(id) {
		return nil
	}

	var current *upgrade.MachineUpgradeStatusSpec

	if mus, err := safe.ReaderGetByID[*upgrade.MachineUpgradeStatus](ctx, r, id); err == nil {
		current = mus.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return fmt.Errorf("reading upgrade of machine %q: %w", id, err)
	}

	run := &machineRun{ctrl: ctrl, r: r, logger: logger.With(zap.String("machine", id)), id: id, machine: *machine.TypedSpec()}

	switch {
	case current != nil && current.Phase.InFlight():
		run.spec, run.resumed = *current, true
		ctrl.start(ctx, run, run.resume)

		return nil
	case current != nil && current.Phase == upgrade.MachineFailed && retryRequested(machine, current):
		queued := *current
		queued.Phase, queued.Error, queued.Waiting, queued.PhaseChangedAt = upgrade.MachineQueued, "", "", time.Now()
		queued.Held = false

		return run.record(ctx, queued)
	}

	way, admitted, err := admission(ctx, r, machine)
	if err != nil || !admitted {
		return err
	}

	if current != nil {
		if !way.startable(current) {
			return nil
		}

		run.spec = *current // begin counts the attempt on from it
	}

	ctrl.start(ctx, run, func(ctx context.Context) { run.begin(ctx, way) })

	return nil
}

// retryRequested reports whether the machine carries a retry of its failed attempt.
func retryRequested(machine *cluster.Machine, current *upgrade.MachineUpgradeStatusSpec) bool {
	v, ok := machine.Metadata().Annotations().Get(upgrade.RetryAnnotation)

	return ok && v == current.RetryValue()
}

// way is the cluster's way to its target as its TalosUpgradeStatus plans it: each machine's upgrade heads to
// rollout.MachineTarget on it.
type way struct {
	plan   []string
	target string
	// hop is the hop the cluster admits machines toward now (TalosUpgradeStatus.Target).
	hop string
}

// wayOf reads the way of the cluster of tus; ok is false while the cluster has no plan (pending or blocked).
func wayOf(tus *upgrade.TalosUpgradeStatusSpec) (way, bool) {
	if tus.ToVersion == "" || len(tus.Plan) == 0 {
		return way{}, false
	}

	return way{plan: tus.Plan, target: tus.ToVersion, hop: tus.Target}, true
}

// targetFrom is where an upgrade of a machine running version heads.
func (w way) targetFrom(version string) string {
	return rollout.MachineTarget(w.plan, w.target, version)
}

// startable reports whether an admitted machine whose last upgrade is current may begin a new one: it never had
// one, a retry queued it, it finished a hop and the next one is the hop the cluster admits toward now, or its
// failed upgrade is no longer on its way. The hop check keeps a machine that finished the hop it was admitted to,
// before the cluster's status dropped it from Admitted, from starting on toward the next hop ahead of its turn.
func (w way) startable(current *upgrade.MachineUpgradeStatusSpec) bool {
	switch current.Phase {
	case "", upgrade.MachineQueued:
		return true
	case upgrade.MachineDone:
		return rollout.SameVersion(rollout.NextHop(w.plan, current.ToVersion), w.hop)
	case upgrade.MachineFailed:
		way := w.targetFrom(current.FromVersion)

		return !rollout.SameVersion(current.ToVersion, way) && rollout.SameVersion(way, w.hop)
	default:
		return false
	}
}

// admission returns the way of the machine's cluster and whether the rollout admitted the (unlocked) machine.
func admission(ctx context.Context, r controller.Reader, machine *cluster.Machine) (way, bool, error) {
	id := machine.Metadata().ID()

	tus, err := safe.ReaderGetByID[*upgrade.TalosUpgradeStatus](ctx, r, machine.TypedSpec().Cluster)
	if err != nil {
		if state.IsNotFoundError(err) {
			return way{}, false, nil
		}

		return way{}, false, fmt.Errorf("reading Talos upgrade status of cluster %q: %w", machine.TypedSpec().Cluster, err)
	}

	w, planned := wayOf(tus.TypedSpec())
	if !planned || !slices.Contains(tus.TypedSpec().Admitted, id) {
		return way{}, false, nil
	}

	if _, err = safe.ReaderGetByID[*cluster.MachineLock](ctx, r, id); err == nil {
		return way{}, false, nil
	} else if !state.IsNotFoundError(err) {
		return way{}, false, fmt.Errorf("reading lock of machine %q: %w", id, err)
	}

	return w, true, nil
}

// start runs run's executor in the background (executors.start): body takes the machine to the end of its
// upgrade, or until the runtime stops or the machine is deleted.
func (ctrl *MachineUpgradeStatusController) start(ctx context.Context, run *machineRun, body func(context.Context)) {
	run.logger = run.logger.With(zap.String("cluster", run.machine.Cluster))

	ctrl.exec.start(ctx, run.id, func(ctx context.Context, x *execution) {
		run.x = x
		body(ctx)
	})
}

// machineRun is the executor of one machine's upgrade.
type machineRun struct {
	ctrl    *MachineUpgradeStatusController
	r       controller.QRuntime
	logger  *zap.Logger
	id      string
	machine cluster.MachineSpec
	spec    upgrade.MachineUpgradeStatusSpec // as last written
	// resumed says that the recorded step was entered by an earlier run (before a restart of the engine or of the
	// runtime), so its side effect may have happened already; it holds for that first step only.
	resumed bool
	x       *execution
}

// begin starts an admitted machine on its way: it observes the machine, then records the first step toward the
// machine's next hop. Attempt counts the tries of one target: a retry of it adds one, a new hop starts at 1.
func (run *machineRun) begin(ctx context.Context, w way) {
	now := time.Now()
	last := run.spec
	spec := upgrade.MachineUpgradeStatusSpec{Cluster: run.machine.Cluster, StartedAt: now, PhaseChangedAt: now}
	run.spec = spec

	st, fail, err := run.steps().observeReachable(ctx, now.Add(run.ctrl.cfg.StepTimeout))
	if err != nil {
		return // only when ctx ends, as below: the runtime stops or the machine is gone
	}

	hop := w.targetFrom(st.Version)
	spec.ToVersion, spec.Attempt = hop, 1

	switch {
	case last.Phase == upgrade.MachineQueued && last.Held && rollout.SameVersion(last.ToVersion, hop):
		spec.Attempt = last.Attempt // it held for a lock: the same attempt goes on
	case last.Phase == upgrade.MachineQueued && rollout.SameVersion(last.ToVersion, hop):
		spec.Attempt = last.Attempt + 1
	}

	if fail != "" {
		spec.Phase, spec.Error, spec.FinishedAt = upgrade.MachineFailed, fail, time.Now()
		run.finish(ctx, spec)

		return
	}

	spec.FromVersion, spec.NodeName, spec.Image = st.Version, nodeName(run.id, st.NodeName), run.image(hop)

	if rollout.SameVersion(st.Version, hop) {
		spec.Phase, spec.FinishedAt = upgrade.MachineDone, time.Now()
		run.finish(ctx, spec)

		return
	}

	spec.Phase = rollout.Steps(run.flow(spec), run.machine.Role)[1]
	spec.Cordoned = spec.Phase == upgrade.MachineCordoning // a legacy worker's first step: recorded before the cordon

	if run.write(ctx, spec) != nil {
		return
	}

	run.resume(ctx)
}

// resume runs the steps from the recorded one to Done or Failed. It returns before that only when ctx ends: an
// executor never leaves its machine in flight with nobody driving it.
func (run *machineRun) resume(ctx context.Context) {
	for {
		fail, err := run.do(ctx)
		if ctx.Err() != nil {
			return // the runtime stops, or the machine is gone; a next run resumes this step from what it observes
		}

		if err != nil {
			// Steps end with an error only when ctx does; making the step again after any other could repeat its
			// side effect, so the error fails it.
			fail = fmt.Sprintf("%s: %v", run.spec.Phase, err)
		}

		if fail != "" {
			run.logger.Error("machine upgrade step failed", zap.String("step", string(run.spec.Phase)), zap.String("reason", fail))
		}

		run.resumed = false

		next, err := run.advanceRetrying(ctx, fail)
		if err != nil {
			return
		}

		if next.Phase == upgrade.MachineDone || next.Phase == upgrade.MachineFailed || next.Phase == upgrade.MachineQueued {
			run.finish(ctx, next)

			return
		}

		if run.write(ctx, next) != nil {
			return
		}
	}
}

// advanceRetrying is advance, tried again after a growing pause while it fails (it reads the cluster's upgrade
// status, which the store may fail to give); each error is logged and shown in Waiting. An error that lasts the step
// timeout fails the step. It returns an error only when ctx ends.
func (run *machineRun) advanceRetrying(ctx context.Context, fail string) (upgrade.MachineUpgradeStatusSpec, error) {
	pause := run.backoff()
	giveUp := time.Now().Add(run.ctrl.cfg.StepTimeout)

	for {
		next, err := run.advance(ctx, fail)
		if err == nil || ctx.Err() != nil {
			return next, err
		}

		step := string(run.spec.Phase)

		if !time.Now().Before(giveUp) {
			fail = fmt.Sprintf("%s: %v", step, err)
			run.logger.Error("machine upgrade step failed: it could not advance within the step timeout", zap.String("step", step), zap.Error(err))

			continue // with fail set, advance reads nothing that can fail
		}

		run.logger.Error("machine upgrade step cannot advance; retrying", zap.String("step", step), zap.Error(err))
		run.showWaiting(ctx, fmt.Sprintf("%s cannot advance (retrying): %v", step, err))

		if err := pause(ctx); err != nil {
			return next, err
		}
	}
}

// showWaiting records why the machine waits, with one try: when that write fails too, the log says so.
func (run *machineRun) showWaiting(ctx context.Context, why string) {
	s := run.spec
	s.Waiting = why

	if err := run.record(ctx, s); err != nil && ctx.Err() == nil {
		run.logger.Error("recording why the machine waits failed", zap.String("step", string(s.Phase)), zap.Error(err))
	}
}

// maxBackoff bounds the growing pause between tries of a failing executor operation, in retry delays.
const maxBackoff = 32

// backoff returns the pause before each next try of an operation that keeps failing: the retry delay, doubling up
// to maxBackoff of them.
func (run *machineRun) backoff() func(context.Context) error {
	next := run.ctrl.cfg.RetryDelay

	return func(ctx context.Context) error {
		pause := next
		next = min(2*next, maxBackoff*run.ctrl.cfg.RetryDelay)

		return sleep(ctx, pause)
	}
}

// finish writes the last transition and frees the machine for the next reconcile in one step.
func (run *machineRun) finish(ctx context.Context, spec upgrade.MachineUpgradeStatusSpec) {
	if run.x.finish(func() error { return run.write(ctx, spec) }) == nil {
		level := zap.InfoLevel
		if spec.Phase == upgrade.MachineFailed {
			level = zap.ErrorLevel
		}

		run.logger.Log(level, "machine upgrade finished", zap.String("phase", string(spec.Phase)), zap.String("version", spec.ToVersion), zap.String("error", spec.Error))
	}
}

// write records spec durably, retrying after a growing pause until it is written or ctx ends.
func (run *machineRun) write(ctx context.Context, spec upgrade.MachineUpgradeStatusSpec) error {
	pause := run.backoff()

	for {
		if ctx.Err() != nil {
			return ctx.Err() // a stopped runtime records nothing more: its successor resumes from the last record
		}

		err := run.record(ctx, spec)
		if err == nil {
			return nil
		}

		if ctx.Err() != nil {
			return ctx.Err()
		}

		run.logger.Error("recording machine upgrade step failed; retrying", zap.String("step", string(spec.Phase)), zap.Error(err))

		if pause(ctx) != nil {
			return ctx.Err()
		}
	}
}

// record writes spec once.
func (run *machineRun) record(ctx context.Context, spec upgrade.MachineUpgradeStatusSpec) error {
	if err := safe.WriterModify(ctx, run.r, upgrade.NewMachineUpgradeStatus(run.id), func(s *upgrade.MachineUpgradeStatus) error {
		s.Metadata().Labels().Set(cluster.LabelCluster, spec.Cluster)
		*s.TypedSpec() = spec

		return nil
	}); err != nil {
		return fmt.Errorf("recording step %s of machine %q: %w", spec.Phase, run.id, err)
	}

	run.spec = spec

	return nil
}

// advance computes the transition that follows the recorded step, given how it ended (fail is empty on success).
func (run *machineRun) advance(ctx context.Context, fail string) (upgrade.MachineUpgradeStatusSpec, error) {
	s := run.spec
	flow, role := run.flow(s), run.machine.Role
	now := time.Now()
	s.Waiting, s.PhaseChangedAt = "", now
	uncordoned := fail == "" && s.Phase == upgrade.MachineUncordoning

	switch {
	case fail != "" && s.Phase == upgrade.MachineUncordoning:
		s.Phase, s.Error, s.FinishedAt = upgrade.MachineFailed, joinFailures(s.Error, fail), now
	case fail != "" && (s.Cordoned || mayBeCordoned(flow, role, s.Phase)): // the phase, for records older than Cordoned
		s.Phase, s.Error = upgrade.MachineUncordoning, fail // uncordon the node before failing
	case fail != "":
		s.Phase, s.Error, s.FinishedAt = upgrade.MachineFailed, fail, now
	case s.Phase == upgrade.MachineUncordoning && s.Error != "":
		s.Phase, s.FinishedAt = upgrade.MachineFailed, now
	case s.Phase == upgrade.MachineUncordoning && s.Held:
		s.Phase = upgrade.MachineQueued // uncordoned: it holds until unlocked
	default:
		next, err := run.nextPhase(ctx, &s)
		if err != nil {
			return s, err
		}

		if next, err = run.holdIfLocked(ctx, &s, next); err != nil {
			return s, err
		}

		s.Phase = next
		if next == upgrade.MachineDone {
			s.FinishedAt = now
		}
	}

	switch {
	case uncordoned:
		s.Cordoned = false
	case s.Phase == upgrade.MachineCordoning:
		s.Cordoned = true // recorded before the cordon, like every step
	}

	if s.Phase == rollout.RebootStep(run.flow(s)) {
		// The boot ID is recorded before the reboot: a different one afterwards proves it happened.
		st, fail, err := run.steps().observeReachable(ctx, now.Add(run.ctrl.cfg.StepTimeout))
		if err != nil {
			return s, err
		}

		if fail != "" {
			s.Phase, s.Error = upgrade.MachineUncordoning, fail

			return s, nil
		}

		s.PreRebootBootID = st.BootID
	}

	return s, nil
}

// holdIfLocked is the step after the recorded one when the machine may have been locked while the step ran: if
// next is not past the point of no return (rollout.HoldsForLock) and the machine is locked, it stops there, through
// Uncordoning when the node may be cordoned, and waits in Queued (Held) until it is unlocked and admitted again.
func (run *machineRun) holdIfLocked(ctx context.Context, s *upgrade.MachineUpgradeStatusSpec, next upgrade.MachinePhase) (upgrade.MachinePhase, error) {
	if !rollout.HoldsForLock(run.flow(*s), run.machine.Role, next) {
		return next, nil
	}

	if _, err := safe.ReaderGetByID[*cluster.MachineLock](ctx, run.r, run.id); err != nil {
		if state.IsNotFoundError(err) {
			return next, nil
		}

		return "", fmt.Errorf("reading lock of machine %q: %w", run.id, err)
	}

	run.logger.Info("machine locked during its upgrade: it stops before the install and holds", zap.String("step", string(s.Phase)), zap.String("next", string(next)))

	s.Held = true
	if s.Cordoned || mayBeCordoned(run.flow(*s), run.machine.Role, s.Phase) {
		return upgrade.MachineUncordoning, nil
	}

	return upgrade.MachineQueued, nil
}

// nextPhase is the step after the recorded one; when the cluster's target moved while the step ran (a revert or
// a new version), so that the machine's way now leads elsewhere (rollout.MachineTarget), rollout.Retarget decides,
// and s may head to the new target. Another machine's progress never retargets this one: each walks its own way.
func (run *machineRun) nextPhase(ctx context.Context, s *upgrade.MachineUpgradeStatusSpec) (upgrade.MachinePhase, error) {
	flow, role := run.flow(*s), run.machine.Role
	hop := s.ToVersion

	if tus, err := safe.ReaderGetByID[*upgrade.TalosUpgradeStatus](ctx, run.r, s.Cluster); err == nil {
		if w, planned := wayOf(tus.TypedSpec()); planned {
			hop = w.targetFrom(s.FromVersion)
		}
	} else if !state.IsNotFoundError(err) {
		return "", fmt.Errorf("reading Talos upgrade status of cluster %q: %w", s.Cluster, err)
	}

	retargeted := !rollout.SameVersion(hop, s.ToVersion)

	if s.Phase == upgrade.MachineWaitingReady && s.InstallUnconfirmed { // back on FromVersion: see waitReady
		return run.afterUnconfirmedInstall(s, hop, retargeted), nil
	}

	if !retargeted {
		next, err := rollout.Next(flow, role, s.Phase)

		return next, err
	}

	next, keepOld, err := rollout.Retarget(flow, role, s.Phase, rollout.SameVersion(s.FromVersion, hop))
	if err != nil {
		return "", err
	}

	if !keepOld {
		next = run.retarget(s, hop, next)
	}

	return next, nil
}

// afterUnconfirmedInstall is the step after the reboot of a machine whose install was not confirmed and that came
// back on its old version (rollout.AfterUnconfirmedInstall): it installs again, in a fresh round that sends the
// install once and says so in Waiting, unless the target moved meanwhile.
func (run *machineRun) afterUnconfirmedInstall(s *upgrade.MachineUpgradeStatusSpec, hop string, retargeted bool) upgrade.MachinePhase {
	next, keepOld := rollout.AfterUnconfirmedInstall(retargeted, rollout.SameVersion(s.FromVersion, hop))
	s.InstallUnconfirmed = false

	if !keepOld {
		return run.retarget(s, hop, next)
	}

	s.Waiting = fmt.Sprintf("install not confirmed before the engine restarted; the machine came back on %s: installing again", s.FromVersion)
	run.logger.Warn(s.Waiting, zap.String("to", s.ToVersion))

	return next
}

// retarget takes s to the cluster's new target hop, where rollout decided next; a machine whose install was not
// confirmed drops that doubt with the old target, whose steps it leaves.
func (run *machineRun) retarget(s *upgrade.MachineUpgradeStatusSpec, hop string, next upgrade.MachinePhase) upgrade.MachinePhase {
	run.logger.Info("machine upgrade retargeted", zap.String("from", s.ToVersion), zap.String("to", hop), zap.String("next", string(next)))

	s.ToVersion, s.Image, s.InstallUnconfirmed = hop, run.image(hop), false

	if steps := rollout.Steps(run.flow(*s), run.machine.Role); next != upgrade.MachineDone && !slices.Contains(steps, next) {
		next = steps[1] // the new target changes the flow: start its steps over
	}

	return next
}

// mayBeCordoned reports whether the node may be cordoned when phase fails, so it must be uncordoned first.
func mayBeCordoned(flow rollout.Flow, role cluster.Role, phase upgrade.MachinePhase) bool {
	steps := rollout.Steps(flow, role)
	i := slices.Index(steps, phase)

	return i >= slices.Index(steps, upgrade.MachineCordoning)
}

func joinFailures(first, then string) string {
	if first == "" {
		return then
	}

	return first + "; then " + then
}

// flow is the upgrade flow of s.
func (run *machineRun) flow(s upgrade.MachineUpgradeStatusSpec) rollout.Flow {
	return rollout.FlowOf(s.FromVersion, s.ToVersion)
}

// image is the installer image of version for this machine: the catalogue's installer tag in the machine's
// repository.
func (run *machineRun) image(version string) string {
	if v, err := versions.Parse(version); err == nil {
		if release, ok := run.ctrl.cfg.Catalogue.Lookup(v); ok {
			return release.Image(run.machine.InstallerImage)
		}
	}

	return run.machine.Image(version)
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
