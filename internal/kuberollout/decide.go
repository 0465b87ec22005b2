package kuberollout

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// DefaultPullConcurrency bounds the pre-pulls that run at once across a cluster.
const DefaultPullConcurrency = 4

// Policy is the engine's side of a decision.
type Policy struct {
	// Releases are the Kubernetes releases the engine knows (DefaultReleases when nil).
	Releases []string
	// PullConcurrency bounds concurrent pre-pulls (DefaultPullConcurrency when zero).
	PullConcurrency int
}

func (p Policy) releases() []string {
	if p.Releases == nil {
		return DefaultReleases
	}

	return p.Releases
}

// View is everything Decide reads about one cluster: the same view the Talos rollout decides from (machines with
// their roles, locks and observations, which carry the Talos and kubelet versions), the Cluster's retry
// annotation and the cluster's Talos rollout, which the Kubernetes upgrade never runs beside.
type View struct {
	rollout.ClusterView
	// Retry is the value of the Cluster's upgrade.KubernetesRetryAnnotation.
	Retry string
	// Talos is the cluster's TalosUpgradeStatus; nil before its first decision.
	Talos *upgrade.TalosUpgradeStatusSpec
}

// Decide computes a cluster's KubernetesUpgradeStatus from view, given the previous one. It plans (a new target,
// or a blocked plan that may have become possible), records the pre-check overrides, turns a retried failure back
// to Pending, and admits the next steps by marking them Running: the step's transition, which the controller
// writes before the executor makes the step's side effect. It never changes a step that is Running: only its
// executor ends it.
func Decide(policy Policy, view View, prev upgrade.KubernetesUpgradeStatusSpec) upgrade.KubernetesUpgradeStatusSpec {
	next := decide(policy, view, prev)
	next.Granted = ""

	if view.Talos != nil {
		next.Granted = view.Talos.YieldsTo
	}

	return next
}

func decide(policy Policy, view View, prev upgrade.KubernetesUpgradeStatusSpec) upgrade.KubernetesUpgradeStatusSpec {
	next := prev.DeepCopy()
	target := Canonical(view.Cluster.KubernetesVersion)

	if reason := unready(view); reason != "" {
		next.Phase, next.Reason = upgrade.PhasePending, reason
		if len(prev.Steps) == 0 {
			next.ToVersion = target
		}

		return next
	}

	nodes, lowest, highest := running(view)
	next.AvailableVersions = Available(nodes, lowest, highest, policy.releases())
	next.SkippedChecks = slices.Clone(view.Cluster.SkipKubernetesChecks)

	if replan := !SameVersion(prev.ToVersion, target) || (len(prev.Steps) == 0 && prev.Phase != upgrade.PhaseDone); replan {
		if step, ok := runningStep(prev.Steps); ok {
			next.Reason = fmt.Sprintf("the change to %s waits for step %s to finish", target, step)

			return next
		}

		available := next.AvailableVersions
		next = plan(policy, view, prev, nodes, lowest, highest, target)
		next.AvailableVersions = available

		if next.Phase == upgrade.PhaseBlocked || next.Phase == upgrade.PhaseDone {
			return next
		}
	}

	retry(view, prev, &next)

	return schedule(policy, view, next)
}

// plan makes a new plan toward target, or the Blocked status that says why none leads there.
func plan(policy Policy, view View, prev upgrade.KubernetesUpgradeStatusSpec, nodes []TalosNode, lowest, highest, target string) upgrade.KubernetesUpgradeStatusSpec {
	unfinished := len(prev.Steps) > 0 && prev.Phase != upgrade.PhaseDone
	if unfinished {
		highest = highestChanged(prev.Steps, highest)
	}

	next := upgrade.KubernetesUpgradeStatusSpec{
		ToVersion:     target,
		SkippedChecks: slices.Clone(view.Cluster.SkipKubernetesChecks),
	}

	p, err := NewPlan(lowest, highest, target, policy.releases())
	if err == nil {
		err = CheckTalos(nodes, p.Hops)
	}

	if err != nil {
		next.Phase, next.Error = upgrade.PhaseBlocked, err.Error()

		return next
	}

	next.FromVersion, next.Direction, next.Plan, next.Attempt = p.From, string(p.Direction), p.Hops, 1
	next.Reverting = unfinished && SameVersion(prev.FromVersion, target)

	if next.Reverting {
		next.FromVersion = prev.ToVersion
	}

	machines := make([]Machine, 0, len(view.Machines))
	for _, m := range view.Machines {
		machines = append(machines, Machine{ID: m.ID, Role: m.Role})
	}

	next.Steps = Steps(p, machines)
	next.Total = len(next.Steps)

	if len(next.Steps) == 0 {
		next.Phase = upgrade.PhaseDone
	}

	return next
}

// retry turns the failed step back to Pending when the Cluster asks for a retry of this attempt, or when the
// failed step is the pre-checks and the Cluster now skips a check it did not skip before.
func retry(view View, prev upgrade.KubernetesUpgradeStatusSpec, next *upgrade.KubernetesUpgradeStatusSpec) {
	i := slices.IndexFunc(next.Steps, func(s upgrade.KubernetesUpgradeStep) bool { return s.State == upgrade.StepFailed })
	if i < 0 {
		return
	}

	retried := view.Retry != "" && view.Retry == prev.RetryValue()
	newSkip := next.Steps[i].Kind == upgrade.StepPreChecks &&
		slices.ContainsFunc(next.SkippedChecks, func(c string) bool { return !slices.Contains(prev.SkippedChecks, c) })

	if !retried && !newSkip {
		return
	}

	next.Steps[i].State, next.Steps[i].Error, next.Steps[i].Progress = upgrade.StepPending, "", ""
	next.Steps[i].StartedAt, next.Steps[i].FinishedAt = time.Time{}, time.Time{}
	next.Error = ""

	if retried {
		next.Attempt++
	}
}

// schedule skips the steps of machines that left, admits the next steps and fills in phase and progress.
func schedule(policy Policy, view View, next upgrade.KubernetesUpgradeStatusSpec) upgrade.KubernetesUpgradeStatusSpec {
	machines := map[string]rollout.MachineView{}
	for _, m := range view.Machines {
		machines[m.ID] = m
	}

	for i, s := range next.Steps {
		if _, ok := machines[s.Machine]; s.Machine != "" && !ok && !s.State.Finished() && s.State != upgrade.StepRunning {
			next.Steps[i].State, next.Steps[i].Error = upgrade.StepSkipped, "the machine left the cluster"
		}
	}

	skipLockedPrePulls(next.Steps, machines)

	// The lists of machines waiting on a lock, and unlocked after waiting, are the last decision's until this one
	// admits steps: a pause, a failure or another rollout's turn keeps them, so no unlock loses its place.
	unlocked := rollout.UnlockOrder(view.ClusterView, next.WaitingOnLock, next.Unlocked)
	next.Reason, next.Error = "", ""
	next.Total = len(next.Steps)
	next.CurrentStep = slices.IndexFunc(next.Steps, func(s upgrade.KubernetesUpgradeStep) bool { return !s.State.Finished() })
	next.Done = len(next.Steps)

	if next.CurrentStep < 0 {
		next.CurrentStep, next.Phase, next.Reverting = len(next.Steps), upgrade.PhaseDone, false
		next.WaitingOnLock, next.Unlocked = nil, nil

		return next
	}

	next.Done = countFinished(next.Steps)

	if i := slices.IndexFunc(next.Steps, func(s upgrade.KubernetesUpgradeStep) bool { return s.State == upgrade.StepFailed }); i >= 0 {
		next.Phase, next.Error = upgrade.PhaseFailed, next.Steps[i].String()+": "+next.Steps[i].Error
		if next.Steps[i].Kind == upgrade.StepPreChecks {
			next.Phase = upgrade.PhaseBlocked // a check the target fails: nothing changed, the user decides
		}

		return next
	}

	group, limit := groupOf(policy, view, next.Steps, next.CurrentStep)
	group = unlockedFirst(group, next.Steps, unlocked)

	// Only locked kubelets left in the step: at rest whether or not it is the upgrade's turn, so it gives the turn
	// back (ClaimOf) instead of asking for it again.
	if locked, ok := onlyLocked(group, next.Steps, machines); ok {
		next.Phase, next.WaitingOnLock, next.Unlocked = upgrade.PhaseBlocked, locked, nil
		next.Error = "only locked machines are left in this step: " + strings.Join(locked, ", ")

		return next
	}

	if !MayProceed(view.Talos, next.ToVersion) {
		next.Phase, next.Reason = upgrade.PhasePending, waitingForTurn(view.Talos)
		if _, ok := runningStep(next.Steps); ok {
			next.Phase = phase(next)
		}

		return next
	}

	if view.Cluster.Paused {
		next.Phase = upgrade.PhasePaused

		return next
	}

	inFlight := 0
	next.WaitingOnLock, next.Unlocked = nil, nil

	for _, i := range group {
		if next.Steps[i].State == upgrade.StepRunning {
			inFlight++
		}
	}

	for _, i := range group {
		s := &next.Steps[i]
		if s.State != upgrade.StepPending {
			continue
		}

		if s.Kind == upgrade.StepKubelet && machines[s.Machine].Locked {
			next.WaitingOnLock = append(next.WaitingOnLock, s.Machine)

			continue
		}

		if inFlight < limit {
			s.State, s.StartedAt = upgrade.StepRunning, view.Now
			inFlight++
		}
	}

	for _, i := range group {
		if s := next.Steps[i]; s.State == upgrade.StepPending && !unlocked[s.Machine].IsZero() && !slices.Contains(next.Unlocked, s.Machine) {
			next.Unlocked = append(next.Unlocked, s.Machine)
		}
	}

	next.Phase = phase(next)

	if len(next.WaitingOnLock) > 0 {
		next.Reason = "locked, pending: " + strings.Join(next.WaitingOnLock, ", ")
	}

	return next
}

// skipLockedPrePulls skips the pre-pulls of locked machines once their hop's pre-pulls are the current steps. A
// locked machine is not touched, and a pre-pull changes nothing (it only makes the kubelet step quick and fails
// early on a missing image): waiting for the unlock would hold every other step of the upgrade, and the machine's
// kubelet step, which waits for the unlock, pulls the image itself. A machine unlocked before its hop's pre-pulls
// start is pre-pulled as any other.
func skipLockedPrePulls(steps []upgrade.KubernetesUpgradeStep, machines map[string]rollout.MachineView) {
	first := slices.IndexFunc(steps, func(s upgrade.KubernetesUpgradeStep) bool { return !s.State.Finished() })
	if first < 0 || steps[first].Kind != upgrade.StepPrePull {
		return
	}

	for i := first; i < len(steps) && steps[i].Kind == upgrade.StepPrePull && steps[i].Version == steps[first].Version; i++ {
		if s := &steps[i]; s.State == upgrade.StepPending && machines[s.Machine].Locked {
			s.State, s.Error = upgrade.StepSkipped, "locked: not pre-pulled; its kubelet step pulls the image once it is unlocked"
		}
	}
}

// onlyLocked reports whether nothing of the step group runs and every step of it left to run is the kubelet of a
// locked machine, and lists those machines.
func onlyLocked(group []int, steps []upgrade.KubernetesUpgradeStep, machines map[string]rollout.MachineView) ([]string, bool) {
	var locked []string

	for _, i := range group {
		switch s := steps[i]; {
		case s.State == upgrade.StepRunning:
			return nil, false
		case s.State != upgrade.StepPending:
		case s.Kind == upgrade.StepKubelet && machines[s.Machine].Locked:
			locked = append(locked, s.Machine)
		default:
			return nil, false
		}
	}

	return locked, len(locked) > 0
}

// unlockedFirst orders the group's steps of machines that were unlocked after waiting on a lock (rollout.UnlockOrder)
// before the others, in unlock order, as rollout.Schedule orders machines: the others keep the plan's order.
func unlockedFirst(group []int, steps []upgrade.KubernetesUpgradeStep, unlocked map[string]time.Time) []int {
	if len(unlocked) == 0 {
		return group
	}

	out := slices.Clone(group)
	slices.SortStableFunc(out, func(a, b int) int {
		ta, tb := unlocked[steps[a].Machine], unlocked[steps[b].Machine]

		switch {
		case ta.IsZero() && tb.IsZero():
			return 0
		case ta.IsZero():
			return 1
		case tb.IsZero():
			return -1
		default:
			return ta.Compare(tb)
		}
	})

	return out
}

func phase(s upgrade.KubernetesUpgradeStatusSpec) upgrade.ClusterPhase {
	if s.Reverting {
		return upgrade.PhaseReverting
	}

	return upgrade.PhaseUpgrading
}

// groupOf is the steps from first that may run side by side, and how many at once: the pre-pulls of a hop
// (PullConcurrency), the worker kubelets of a hop (the cluster's parallelism, as in the Talos rollout); any other
// step runs alone.
func groupOf(policy Policy, view View, steps []upgrade.KubernetesUpgradeStep, first int) ([]int, int) {
	role := func(id string) cluster.Role {
		for _, m := range view.Machines {
			if m.ID == id {
				return m.Role
			}
		}

		return ""
	}

	same := func(s upgrade.KubernetesUpgradeStep) bool {
		f := steps[first]

		switch {
		case s.Version != f.Version || s.Kind != f.Kind:
			return false
		case s.Kind == upgrade.StepPrePull:
			return true
		default:
			return s.Kind == upgrade.StepKubelet && role(s.Machine) == cluster.RoleWorker && role(f.Machine) == cluster.RoleWorker
		}
	}

	group := []int{first}
	for i := first + 1; i < len(steps) && same(steps[i]); i++ {
		group = append(group, i)
	}

	switch {
	case len(group) == 1:
		return group, 1
	case steps[first].Kind == upgrade.StepPrePull:
		return group, max(1, cmpOr(policy.PullConcurrency, DefaultPullConcurrency))
	default:
		workers := 0

		for _, m := range view.Machines {
			if m.Role == cluster.RoleWorker {
				workers++
			}
		}

		p, err := cluster.ParseParallelism(view.Cluster.Parallelism)
		if err != nil {
			return group, 1
		}

		return group, p.Of(workers)
	}
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}

	return b
}

// MayProceed reports whether the Kubernetes upgrade toward target may change the cluster: the turn is its own
// (rollout.Turn), which TalosUpgradeStatus.YieldsTo names with its target.
func MayProceed(talos *upgrade.TalosUpgradeStatusSpec, target string) bool {
	return talos != nil && talos.YieldsTo != "" && SameVersion(talos.YieldsTo, target)
}

// waitingForTurn says what the Kubernetes upgrade waits for while the turn is not its own.
func waitingForTurn(talos *upgrade.TalosUpgradeStatusSpec) string {
	if talos == nil {
		return "waiting for the cluster's first rollout decision"
	}

	switch turn := rollout.Rollout(talos.Turn); {
	case turn == rollout.RolloutTalos && len(talos.Current) > 0:
		return fmt.Sprintf("waiting for the Talos upgrade to %s to finish (in flight: %s)", talos.ToVersion, strings.Join(talos.Current, ", "))
	case turn == rollout.RolloutTalos:
		return rollout.WaitingFor(turn, talos.ToVersion)
	case turn == rollout.RolloutConfig:
		return rollout.WaitingFor(turn, "")
	default:
		return "waiting for its turn"
	}
}

// ClaimOf is the Kubernetes upgrade's claim on its cluster (rollout.Turn). It is decided by its own controller, from
// its read of the turn, so it is busy not only with a step running but as long as its last decision was made with
// the turn (Granted): a reconcile acting on that read may still start a step. It wants the turn while it has steps
// to run: not Done, and not at rest Blocked or Failed (only locked kubelets left, a pre-check refusing, a failed
// step), which wait for a user or a lock. So the turn leaves it in two steps: the Talos rollout's decision takes
// the grant back (YieldsTo empty), the upgrade decides once from that (Granted empty), and only then does another
// rollout start machines.
func ClaimOf(s *upgrade.KubernetesUpgradeStatusSpec) rollout.Claim {
	if s == nil {
		return rollout.Claim{}
	}

	_, running := runningStep(s.Steps)

	return rollout.Claim{Busy: running || s.Granted != "", Wants: Claims(s) && rollout.Wants(s.Phase)}
}

// Target is the version the Kubernetes upgrade goes to, "" without one.
func Target(s *upgrade.KubernetesUpgradeStatusSpec) string {
	if s == nil {
		return ""
	}

	return s.ToVersion
}

// Claims reports whether a Kubernetes upgrade holds its cluster: it has steps left (waiting, running, failed or
// blocked on a pre-check).
func Claims(s *upgrade.KubernetesUpgradeStatusSpec) bool {
	return s != nil && len(s.Steps) > 0 && s.Phase != upgrade.PhaseDone && s.Phase != ""
}

// unready says why view cannot be decided from yet: the Talos rollout's reasons (no machine, one not observed, a
// partial read), or a machine whose kubelet version is not observed.
func unready(view View) string {
	if reason := rollout.Unready(view.ClusterView); reason != "" {
		return reason
	}

	var missing []string

	for _, m := range view.Machines {
		if m.Status == nil || m.Status.KubeletVersion == "" {
			missing = append(missing, m.ID)
		}
	}

	if len(missing) > 0 {
		return "waiting for the kubelet version of: " + strings.Join(missing, ", ")
	}

	return ""
}

// running is each machine's Talos version and the lowest and highest kubelet version of the cluster.
func running(view View) (nodes []TalosNode, lowest, highest string) {
	for _, m := range view.Machines {
		nodes = append(nodes, TalosNode{Machine: m.ID, Talos: m.Version()})

		v := m.Status.KubeletVersion
		if lowest == "" || Compare(v, lowest) < 0 {
			lowest = v
		}

		if highest == "" || Compare(v, highest) > 0 {
			highest = v
		}
	}

	return nodes, lowest, highest
}

// highestChanged is the highest of highest and the hops of the steps that changed (or may have changed) a
// component: a revert starts from there.
func highestChanged(steps []upgrade.KubernetesUpgradeStep, highest string) string {
	for _, s := range steps {
		if Changes(s.Kind) && s.State != upgrade.StepPending && s.State != upgrade.StepSkipped && Compare(s.Version, highest) > 0 {
			highest = s.Version
		}
	}

	return highest
}

func runningStep(steps []upgrade.KubernetesUpgradeStep) (upgrade.KubernetesUpgradeStep, bool) {
	i := slices.IndexFunc(steps, func(s upgrade.KubernetesUpgradeStep) bool { return s.State == upgrade.StepRunning })
	if i < 0 {
		return upgrade.KubernetesUpgradeStep{}, false
	}

	return steps[i], true
}

func countFinished(steps []upgrade.KubernetesUpgradeStep) int {
	n := 0

	for _, s := range steps {
		if s.State.Finished() {
			n++
		}
	}

	return n
}
