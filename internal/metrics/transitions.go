package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Messages of the transition log lines. Every line carries the fields cluster, machine, step and reason (empty
// when they do not apply), so that one search by machine or cluster finds everything that happened to it.
const (
	MsgMachineStep    = "machine upgrade step"
	MsgClusterPhase   = "cluster upgrade phase"
	MsgKubernetesStep = "kubernetes upgrade step"
)

// rewatchDelay is the pause before a watch that failed (lapped by the state's history) is opened again.
const rewatchDelay = time.Second

// transitions turns the changes of the upgrade statuses into counts, durations and log lines.
type transitions struct {
	m *Metrics
	// bootstrapped, when set, is told when a watch has read the initial contents of its type (tests wait for it).
	bootstrapped func(resource.Type)
}

func newTransitions(m *Metrics) *transitions {
	return &transitions{m: m}
}

// watchedTypes are the types whose changes are transitions, each with its handler.
func watchedTypes(t *transitions) map[resource.Type]func(ev state.Event) {
	return map[resource.Type]func(ev state.Event){
		upgrade.MachineUpgradeStatusType:    t.machine,
		upgrade.TalosUpgradeStatusType:      t.talos,
		upgrade.KubernetesUpgradeStatusType: t.kubernetes,
		upgrade.MachineConfigStatusType:     t.machineConfig,
		upgrade.ConfigRolloutStatusType:     t.configRollout,
	}
}

// run watches the upgrade status types until ctx ends.
func (t *transitions) run(ctx context.Context) {
	var wg sync.WaitGroup

	for typ, handle := range watchedTypes(t) {
		wg.Go(func() { t.watch(ctx, typ, handle) })
	}

	wg.Wait()
}

// watch hands every update of typ after the initial contents to handle. The initial contents are no transition:
// they are where things stood when the engine (or the watch) started. A watch that fails is opened again; the
// transitions in between are neither counted nor logged.
func (t *transitions) watch(ctx context.Context, typ resource.Type, handle func(ev state.Event)) {
	for ctx.Err() == nil {
		ch := make(chan state.Event)
		watchCtx, cancel := context.WithCancel(ctx)

		err := t.m.state.WatchKind(watchCtx, resource.NewMetadata(resources.Namespace, typ, "", resource.VersionUndefined), ch,
			state.WithBootstrapContents(true))
		if err == nil {
			err = t.consume(watchCtx, typ, ch, handle)
		}

		cancel()

		if ctx.Err() != nil {
			return
		}

		t.m.logger.Warn("watching upgrade transitions failed; watching again (transitions in between are not counted)",
			zap.String("type", string(typ)), zap.Error(err))

		select {
		case <-ctx.Done():
			return
		case <-time.After(rewatchDelay):
		}
	}
}

// consume reads ch until it fails or ctx ends.
func (t *transitions) consume(ctx context.Context, typ resource.Type, ch <-chan state.Event, handle func(ev state.Event)) error {
	bootstrapped := false

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-ch:
			switch ev.Type {
			case state.Errored:
				return ev.Error
			case state.Bootstrapped:
				bootstrapped = true

				if t.bootstrapped != nil {
					t.bootstrapped(typ)
				}
			case state.Created, state.Updated:
				if bootstrapped {
					handle(ev)
				}
			case state.Destroyed, state.Noop:
			}
		}
	}
}

// machine counts and logs a machine's change of step.
func (t *transitions) machine(ev state.Event) {
	now, ok := ev.Resource.(*upgrade.MachineUpgradeStatus)
	if !ok {
		return
	}

	var before upgrade.MachineUpgradeStatusSpec
	if old, ok := ev.Old.(*upgrade.MachineUpgradeStatus); ok {
		before = *old.TypedSpec()
	}

	after := now.TypedSpec()
	if before.Phase == after.Phase {
		return
	}

	if before.Phase.InFlight() {
		if took := after.PhaseChangedAt.Sub(before.PhaseChangedAt); !before.PhaseChangedAt.IsZero() && took >= 0 {
			t.m.machineStepSeconds.WithLabelValues(string(before.Phase)).Observe(took.Seconds())
		}
	}

	level, reason := zapcore.InfoLevel, ""

	switch after.Phase {
	case upgrade.MachineDone:
		if before.Phase.InFlight() {
			t.m.machineUpgradesDone.WithLabelValues(after.Cluster).Inc()

			if !after.StartedAt.IsZero() && after.FinishedAt.After(after.StartedAt) {
				t.m.machineUpgradeSeconds.Observe(after.FinishedAt.Sub(after.StartedAt).Seconds())
			}
		}
	case upgrade.MachineFailed:
		level, reason = zapcore.WarnLevel, after.FailureReason()
		t.m.machineUpgradesFailed.WithLabelValues(after.Cluster, reason).Inc()
	default:
		if after.Error != "" { // on its way to Failed (Uncordoning first)
			reason = after.FailureReason()
		}
	}

	t.m.logger.Log(level, MsgMachineStep,
		zap.String("upgrade", UpgradeTalos), zap.String("cluster", after.Cluster), zap.String("machine", now.Metadata().ID()),
		zap.String("step", string(after.Phase)), zap.String("from", string(before.Phase)), zap.String("reason", reason),
		zap.String("error", after.Error), zap.String("to_version", after.ToVersion), zap.Int("attempt", after.Attempt))
}

// machineConfig logs a machine's change of step in a config change (not counted: the machine upgrade metrics are
// of Talos upgrades).
func (t *transitions) machineConfig(ev state.Event) {
	now, ok := ev.Resource.(*upgrade.MachineConfigStatus)
	if !ok {
		return
	}

	var before upgrade.MachinePhase
	if old, ok := ev.Old.(*upgrade.MachineConfigStatus); ok {
		before = old.TypedSpec().Phase
	}

	after := now.TypedSpec()
	if before == after.Phase {
		return
	}

	level, reason := zapcore.InfoLevel, ""
	if after.Phase == upgrade.MachineFailed {
		level, reason = zapcore.WarnLevel, after.Error
	}

	t.m.logger.Log(level, MsgMachineStep,
		zap.String("upgrade", UpgradeConfig), zap.String("cluster", after.Cluster), zap.String("machine", now.Metadata().ID()),
		zap.String("step", string(after.Phase)), zap.String("from", string(before)), zap.String("reason", reason),
		zap.String("to_version", after.ChangeVersion))
}

// configRollout logs a change of phase of a cluster's config rollout.
func (t *transitions) configRollout(ev state.Event) {
	now, ok := ev.Resource.(*upgrade.ConfigRolloutStatus)
	if !ok {
		return
	}

	var before upgrade.ClusterPhase
	if old, ok := ev.Old.(*upgrade.ConfigRolloutStatus); ok {
		before = old.TypedSpec().Phase
	}

	s := now.TypedSpec()
	t.clusterPhase(UpgradeConfig, now.Metadata().ID(), s.FailedMachine, before, s.Phase, s.Error, s.Reason, "")
}

// talos logs a change of phase of a cluster's Talos rollout.
func (t *transitions) talos(ev state.Event) {
	now, ok := ev.Resource.(*upgrade.TalosUpgradeStatus)
	if !ok {
		return
	}

	var before upgrade.ClusterPhase
	if old, ok := ev.Old.(*upgrade.TalosUpgradeStatus); ok {
		before = old.TypedSpec().Phase
	}

	s := now.TypedSpec()
	t.clusterPhase(UpgradeTalos, now.Metadata().ID(), s.FailedMachine, before, s.Phase, s.Error, s.Reason, s.ToVersion)
}

// kubernetes logs a change of phase of a cluster's Kubernetes upgrade, and each change of state of its steps.
func (t *transitions) kubernetes(ev state.Event) {
	now, ok := ev.Resource.(*upgrade.KubernetesUpgradeStatus)
	if !ok {
		return
	}

	var (
		before      upgrade.ClusterPhase
		beforeSteps = map[kubernetesStepKey]upgrade.StepState{}
	)

	if old, ok := ev.Old.(*upgrade.KubernetesUpgradeStatus); ok {
		before = old.TypedSpec().Phase

		for _, step := range old.TypedSpec().Steps {
			beforeSteps[keyOf(step)] = step.State
		}
	}

	clusterID, s := now.Metadata().ID(), now.TypedSpec()

	for _, step := range s.Steps {
		was, known := beforeSteps[keyOf(step)]
		if was == step.State || (!known && step.State == upgrade.StepPending) {
			continue
		}

		level := zapcore.InfoLevel

		switch step.State {
		case upgrade.StepDone:
			if !step.StartedAt.IsZero() && step.FinishedAt.After(step.StartedAt) {
				t.m.kubernetesStepSeconds.WithLabelValues(string(step.Kind)).Observe(step.FinishedAt.Sub(step.StartedAt).Seconds())
			}
		case upgrade.StepFailed:
			level = zapcore.WarnLevel
		case upgrade.StepPending, upgrade.StepRunning, upgrade.StepSkipped:
		}

		t.m.logger.Log(level, MsgKubernetesStep,
			zap.String("upgrade", UpgradeKubernetes), zap.String("cluster", clusterID), zap.String("machine", step.Machine),
			zap.String("step", string(step.Kind)), zap.String("state", string(step.State)), zap.String("from", string(was)),
			zap.String("reason", step.Error), zap.String("to_version", step.Version))
	}

	t.clusterPhase(UpgradeKubernetes, clusterID, "", before, s.Phase, s.Error, s.Reason, s.ToVersion)
}

// clusterPhase logs a cluster-wide upgrade's change of phase; its step is the phase, its machine the one that
// failed (if any), its reason the error or else what the upgrade waits for.
func (t *transitions) clusterPhase(which, clusterID, machine string, before, after upgrade.ClusterPhase, failure, waiting, target string) {
	if before == after {
		return
	}

	level, reason := zapcore.InfoLevel, waiting
	if failure != "" {
		reason = failure
	}

	if after == upgrade.PhaseFailed || after == upgrade.PhaseBlocked {
		level = zapcore.WarnLevel
	}

	t.m.logger.Log(level, MsgClusterPhase,
		zap.String("upgrade", which), zap.String("cluster", clusterID), zap.String("machine", machine),
		zap.String("step", string(after)), zap.String("from", string(before)), zap.String("reason", reason),
		zap.String("to_version", target))
}

// kubernetesStepKey names a step of a Kubernetes upgrade across versions of its status (its index may change
// with a new plan).
type kubernetesStepKey struct {
	kind    upgrade.StepKind
	machine string
	version string
}

func keyOf(s upgrade.KubernetesUpgradeStep) kubernetesStepKey {
	return kubernetesStepKey{kind: s.Kind, machine: s.Machine, version: s.Version}
}
