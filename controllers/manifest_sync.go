package controllers

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// AutoRequestBy is the writer a ManifestSync records for an apply that auto mode started.
const AutoRequestBy = "auto"

// ManifestSyncController keeps each cluster's ManifestSync: how the bootstrap objects Talos renders differ from the
// live ones, and the applies users ask for (ManifestSyncRequest) or auto mode makes (docs/architecture.md, "Bootstrap
// manifests").
//
// The diff is computed again when an upgrade finishes or a control plane's Talos version changes (the rendered
// manifests may have changed), and on an interval, so drift made inside the cluster is found too. A reconcile never
// waits on the network: checks and applies run in one goroutine per cluster, which reports by writing the
// ManifestSync (itself an input, so its final write wakes the reconcile). An apply records every object's diff
// (phase Applying) before it changes anything, then each object's outcome; a restart in the middle finds phase
// Applying and makes the same request again, from a fresh diff (server-side apply and update are idempotent).
type ManifestSyncController struct {
	conn ManifestConnector
	cfg  UpgradeConfig
	now  func() time.Time

	exec executors // the clusters' check or apply, by cluster ID

	mu sync.Mutex
	// started is when each cluster's last job started: its diff is that fresh. It is kept here, not in the
	// ManifestSync, so that a check finding what the last one found writes nothing (see syncJob.write).
	started map[string]time.Time
	// applied is the ID of each cluster's last apply started in this run. A reconcile may read a ManifestSync older
	// than the last job's writes (the runtime's cache lags behind them): it must not make that apply again.
	applied map[string]string
}

// NewManifestSyncController returns the controller; conn reaches the clusters' Talos and Kubernetes APIs.
func NewManifestSyncController(conn ManifestConnector, cfg UpgradeConfig) *ManifestSyncController {
	return &ManifestSyncController{conn: conn, cfg: cfg, now: time.Now, started: map[string]time.Time{}, applied: map[string]string{}}
}

// Name implements controller.QController.
func (ctrl *ManifestSyncController) Name() string { return "ManifestSyncController" }

// Settings implements controller.QController.
func (ctrl *ManifestSyncController) Settings() controller.QSettings {
	return controller.QSettings{
		Inputs: qInputs(cluster.ClusterType, cluster.ManifestSyncRequestType, cluster.CredentialsType, cluster.MachineType,
			observe.MachineStatusType, upgrade.TalosUpgradeStatusType, upgrade.KubernetesUpgradeStatusType, manifest.ManifestSyncType),
		Outputs:     []controller.Output{{Type: manifest.ManifestSyncType, Kind: controller.OutputExclusive}},
		Concurrency: ctrl.cfg.concurrency(),
		RunHook:     ctrl.exec.runHook, // jobs stop with the runtime; the next run resumes an apply from its ManifestSync
	}
}

// MapInput implements controller.QController: every per-cluster input by its ID, machines and their statuses by
// their cluster.
func (ctrl *ManifestSyncController) MapInput(ctx context.Context, _ *zap.Logger, r controller.QRuntime, ptr controller.ReducedResourceMetadata) ([]resource.Pointer, error) {
	switch ptr.Type() {
	case cluster.MachineType, observe.MachineStatusType:
		return mapToCluster(ctx, r, ptr)
	default:
		return []resource.Pointer{cluster.NewCluster(ptr.ID()).Metadata()}, nil
	}
}

// syncInputs is what a reconcile reads of a cluster to decide whether to check or apply.
type syncInputs struct {
	cluster *cluster.ClusterSpec
	current *manifest.ManifestSyncSpec // nil before the first check
	request *cluster.ManifestSyncRequest
	// upgrading is set while a Talos or Kubernetes upgrade runs: not Done, and not Blocked on nothing but locked
	// machines (WaitsOnlyOnLocks), which change nothing until unlocked.
	upgrading bool
	// checkedFor sums up what the rendered manifests depend on (see ManifestSyncSpec.CheckedFor).
	checkedFor string
	legacy     bool
	node       string // the control plane to read the manifests from
	endpoint   string
}

// Reconcile implements controller.QController.
func (ctrl *ManifestSyncController) Reconcile(ctx context.Context, logger *zap.Logger, r controller.QRuntime, ptr resource.Pointer) error {
	id := ptr.ID()

	in, err := readSyncInputs(ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			ctrl.forget(id)

			return destroyIfExists(ctx, r, manifest.NewManifestSync(id).Metadata())
		}

		return err
	}

	// A job's last write wakes the next reconcile only when it changed something; one that finds what the last
	// one found writes nothing, so the cluster is looked at again after the interval in any case.
	if ctrl.exec.running(id) {
		return controller.NewRequeueInterval(ctrl.cfg.ManifestCheckInterval)
	}

	if in.node == "" {
		return controller.NewRequeueInterval(ctrl.cfg.ManifestCheckInterval) // no control plane observed yet
	}

	job := &syncJob{ctrl: ctrl, r: r, logger: logger.With(zap.String("cluster", id)), id: id, in: in}

	// A started job is looked at again after an interval at the latest, should its last write fail.
	switch req, ok := ctrl.nextApply(in); {
	case ok && ctrl.lastApply(id) != req.ID:
		job.request = req.ID
		ctrl.start(ctx, job, func(ctx context.Context) { job.apply(ctx, req) })

		return controller.NewRequeueInterval(ctrl.cfg.ManifestCheckInterval)
	case ctrl.checkDue(id, in):
		ctrl.start(ctx, job, job.check)

		return controller.NewRequeueInterval(ctrl.cfg.ManifestCheckInterval)
	}

	return controller.NewRequeueInterval(ctrl.cfg.ManifestCheckInterval - ctrl.now().Sub(ctrl.lastStart(id)))
}

// nextApply is the apply to make now, if any: one an earlier run left Applying, a user's new request, or, in auto
// mode, the changes of a diff found after the last apply, once no upgrade runs. A diff an apply left behind (held
// back, refused, failed) is not applied again by auto mode until a check finds it changed.
func (ctrl *ManifestSyncController) nextApply(in syncInputs) (manifest.Request, bool) {
	current := in.current

	if current != nil && current.Phase == manifest.PhaseApplying {
		return current.Request, true
	}

	if in.request != nil && (current == nil || in.request.TypedSpec().RequestID != current.Request.ID) {
		spec := in.request.TypedSpec()
		by, _ := in.request.Metadata().Annotations().Get(resources.WriterAnnotation)

		return manifest.Request{ID: spec.RequestID, By: by, DryRun: spec.DryRun, Prune: spec.Prune, ForceConflicts: spec.ForceConflicts}, true
	}

	if in.cluster.ManifestSync != cluster.ManifestSyncAuto || in.upgrading || current == nil || current.CheckedFor != in.checkedFor {
		return manifest.Request{}, false
	}

	if !current.CheckedAt.After(current.Request.Finished) || !slices.ContainsFunc(current.Diffs, autoApplicable) {
		return manifest.Request{}, false
	}

	return manifest.Request{ID: fmt.Sprintf("auto-%d", current.CheckedAt.UnixNano()), By: AutoRequestBy}, true
}

// autoApplicable reports whether auto mode may apply an object: it changes, and nobody else set its fields, and the
// API server did not refuse it.
func autoApplicable(d manifest.ObjectDiff) bool {
	return d.Action != "" && len(d.Conflicts) == 0 && d.Refused == ""
}

// checkDue reports whether the diff must be computed: never computed, its inputs changed (and no upgrade runs), or
// not computed by this run for the check interval.
func (ctrl *ManifestSyncController) checkDue(id string, in syncInputs) bool {
	switch {
	case in.current == nil || in.current.CheckedAt.IsZero():
		return true
	case in.current.CheckedFor != in.checkedFor && !in.upgrading:
		return true
	default:
		return ctrl.now().Sub(ctrl.lastStart(id)) >= ctrl.cfg.ManifestCheckInterval
	}
}

// readSyncInputs reads a cluster's Cluster (not found when it is gone), ManifestSync, request, upgrades and control
// planes.
func readSyncInputs(ctx context.Context, r controller.Reader, id string) (syncInputs, error) {
	c, err := safe.ReaderGetByID[*cluster.Cluster](ctx, r, id)
	if err != nil {
		return syncInputs{}, err
	}

	in := syncInputs{cluster: c.TypedSpec()}

	if ms, err := safe.ReaderGetByID[*manifest.ManifestSync](ctx, r, id); err == nil {
		in.current = ms.TypedSpec()
	} else if !state.IsNotFoundError(err) {
		return syncInputs{}, fmt.Errorf("reading manifest sync of cluster %q: %w", id, err)
	}

	if in.request, err = safe.ReaderGetByID[*cluster.ManifestSyncRequest](ctx, r, id); err != nil && !state.IsNotFoundError(err) {
		return syncInputs{}, fmt.Errorf("reading manifest sync request of cluster %q: %w", id, err)
	}

	var parts []string

	if tus, err := safe.ReaderGetByID[*upgrade.TalosUpgradeStatus](ctx, r, id); err == nil {
		in.upgrading = in.upgrading || running(tus.TypedSpec().Phase) && !tus.TypedSpec().WaitsOnlyOnLocks()
		parts = append(parts, "talos="+string(tus.TypedSpec().Phase)+"/"+tus.TypedSpec().ToVersion)
	} else if !state.IsNotFoundError(err) {
		return syncInputs{}, fmt.Errorf("reading Talos upgrade status of cluster %q: %w", id, err)
	}

	if kus, err := safe.ReaderGetByID[*upgrade.KubernetesUpgradeStatus](ctx, r, id); err == nil {
		in.upgrading = in.upgrading || running(kus.TypedSpec().Phase) && !kus.TypedSpec().WaitsOnlyOnLocks()
		// The version too: the manifests render kube-proxy (and what else follows Kubernetes) for it, and an
		// upgrade ends Done like the status before it, so the phase alone would not make a check due.
		parts = append(parts, "kubernetes="+string(kus.TypedSpec().Phase)+"/"+kus.TypedSpec().ToVersion)
	} else if !state.IsNotFoundError(err) {
		return syncInputs{}, fmt.Errorf("reading Kubernetes upgrade status of cluster %q: %w", id, err)
	}

	machines, err := clusterMachines(ctx, r, id)
	if err != nil {
		return syncInputs{}, err
	}

	for _, m := range machines {
		ms, err := safe.ReaderGetByID[*observe.MachineStatus](ctx, r, m.Metadata().ID())
		if err != nil {
			if state.IsNotFoundError(err) {
				continue
			}

			return syncInputs{}, fmt.Errorf("reading status of machine %q: %w", m.Metadata().ID(), err)
		}

		version := ms.TypedSpec().TalosVersion
		if version != "" && !supportsSSA(version) {
			in.legacy = true
		}

		if m.TypedSpec().Role != cluster.RoleControlPlane {
			continue
		}

		parts = append(parts, m.Metadata().ID()+"="+version)

		if in.node == "" && ms.TypedSpec().Reachable {
			in.node, in.endpoint = m.Metadata().ID(), m.TypedSpec().Endpoint
		}
	}

	in.checkedFor = strings.Join(parts, " ")

	return in, nil
}

// supportsSSA reports whether a Talos version syncs its manifests by server-side apply (1.13 and later).
func supportsSSA(version string) bool {
	v, err := versions.Parse(version)

	return err != nil || v.SupportsLifecycleService()
}

// running reports whether an upgrade in phase p is under way.
func running(p upgrade.ClusterPhase) bool {
	return p != "" && p != upgrade.PhaseDone
}

// start runs body for the cluster of job in the background (executors.start), and records when it started and
// which apply it makes.
func (ctrl *ManifestSyncController) start(ctx context.Context, job *syncJob, body func(context.Context)) {
	started := ctrl.now()

	if !ctrl.exec.start(ctx, job.id, func(ctx context.Context, x *execution) {
		job.x = x
		body(ctx)
	}) {
		return
	}

	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()

	ctrl.started[job.id] = started

	if job.request != "" {
		ctrl.applied[job.id] = job.request
	}
}

// lastStart is when the cluster's last job started in this run; zero before the first.
func (ctrl *ManifestSyncController) lastStart(id string) time.Time {
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()

	return ctrl.started[id]
}

// lastApply is the ID of the cluster's last apply started in this run; empty before the first.
func (ctrl *ManifestSyncController) lastApply(id string) string {
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()

	return ctrl.applied[id]
}

// forget drops what the controller keeps of a deleted cluster.
func (ctrl *ManifestSyncController) forget(id string) {
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()

	delete(ctrl.started, id)
	delete(ctrl.applied, id)
}

// syncJob is one check or apply of one cluster's bootstrap manifests.
type syncJob struct {
	ctrl   *ManifestSyncController
	r      controller.QRuntime
	logger *zap.Logger
	id     string
	in     syncInputs
	x      *execution
	// request is the ID of the apply the job makes; empty for a check.
	request string
}

// write changes the cluster's ManifestSync. An edit that changes nothing but CheckedAt (a check that found what the
// last one found) keeps the old CheckedAt, so nothing is written: every write is an event in the log, and `upshift
// history` would otherwise fill with identical checks. CheckedAt is thus when the diff last changed.
func (job *syncJob) write(ctx context.Context, edit func(*manifest.ManifestSyncSpec)) error {
	return safe.WriterModify(ctx, job.r, manifest.NewManifestSync(job.id), func(ms *manifest.ManifestSync) error {
		s := ms.TypedSpec()
		before := s.DeepCopy()

		edit(s)

		if checked := s.CheckedAt; !checked.Equal(before.CheckedAt) {
			s.CheckedAt = before.CheckedAt
			if !reflect.DeepEqual(*s, before) {
				s.CheckedAt = checked
			}
		}

		return nil
	})
}

// finish writes the job's last result and ends the job in the same step (execution.finish).
func (job *syncJob) finish(ctx context.Context, edit func(*manifest.ManifestSyncSpec)) error {
	return job.x.finish(func() error { return job.write(ctx, edit) })
}

// checked is the diff of every rendered object, as read now.
type checked struct {
	objects  []kube.Object
	diffs    []manifest.ObjectDiff // the objects that differ, conflict or were refused, in render order
	prunable []string
	client   kube.BootstrapObjects
}

func (c checked) outOfSync() int { return len(c.diffs) }

// diff reads the rendered manifests and compares each with its live object.
func (job *syncJob) diff(ctx context.Context) (checked, error) {
	access, err := readAccess(ctx, job.r, job.id, job.in.endpoint)
	if err != nil {
		return checked{}, err
	}

	objects, err := job.ctrl.conn.BootstrapManifests(ctx, access, job.in.node)
	if err != nil {
		return checked{}, fmt.Errorf("reading the bootstrap manifests of %s: %w", job.in.node, err)
	}

	client, err := job.ctrl.conn.BootstrapObjects(ctx, access)
	if err != nil {
		return checked{}, err
	}

	out := checked{objects: objects, client: client}

	for _, obj := range objects {
		check, err := client.Check(ctx, obj, job.in.legacy)
		if err != nil {
			return checked{}, fmt.Errorf("checking %s: %w", kube.Describe(obj), err)
		}

		if check.Action == "" && len(check.Conflicts) == 0 && check.Error == "" {
			continue
		}

		out.diffs = append(out.diffs, manifest.ObjectDiff{
			Object: kube.Describe(obj), Action: check.Action, Diff: check.Diff, Refused: check.Error, Conflicts: conflictNames(check.Conflicts),
		})
	}

	if !job.in.legacy {
		if out.prunable, err = client.Prunable(ctx, objects); err != nil {
			return checked{}, err
		}
	}

	return out, nil
}

// recorded is the edit that records a fresh diff, then keep's changes. The objects the last apply held back or
// failed keep that outcome while they still differ, and a failed apply stays Failed, with its error, until the
// diff is clean or another apply runs.
func (job *syncJob) recorded(c checked, keep func(*manifest.ManifestSyncSpec)) func(*manifest.ManifestSyncSpec) {
	return func(s *manifest.ManifestSyncSpec) {
		s.Diffs, s.OutOfSync, s.Prunable = carryOutcomes(c.diffs, s.Diffs, notApplied), c.outOfSync(), c.prunable
		s.CheckedAt, s.CheckedFor, s.Legacy, s.Node = job.ctrl.now(), job.in.checkedFor, job.in.legacy, job.in.node

		switch {
		case s.OutOfSync == 0:
			s.Phase, s.Error = manifest.PhaseUpToDate, ""
		case s.Phase != manifest.PhaseFailed:
			s.Phase, s.Error = manifest.PhaseOutOfSync, ""
		}

		if keep != nil {
			keep(s)
		}
	}
}

// check computes the diff and records it; a failure is recorded as the ManifestSync's Error.
func (job *syncJob) check(ctx context.Context) {
	c, err := job.diff(ctx)
	if err == nil {
		err = job.finish(ctx, job.recorded(c, nil))
	} else if ctx.Err() == nil {
		err = job.finish(ctx, func(s *manifest.ManifestSyncSpec) {
			s.Error, s.CheckedAt, s.CheckedFor = err.Error(), job.ctrl.now(), job.in.checkedFor
			if s.Phase == "" {
				s.Phase = manifest.PhaseOutOfSync
			}
		})
	}

	if err != nil && ctx.Err() == nil {
		job.logger.Warn("checking bootstrap manifests", zap.Error(err))
	}
}

// apply makes one apply: diff and record it (phase Applying), apply each object not held back, prune if asked and
// possible, wait for the rollouts, and record the outcome from a fresh diff.
func (job *syncJob) apply(ctx context.Context, req manifest.Request) {
	if err := job.applyOnce(ctx, req); err != nil && ctx.Err() == nil {
		job.logger.Warn("applying bootstrap manifests", zap.String("request", req.ID), zap.Error(err))

		if werr := job.finish(ctx, func(s *manifest.ManifestSyncSpec) {
			s.Phase, s.Error = manifest.PhaseFailed, err.Error()
			s.Request.Finished, s.Request.Outcome = job.ctrl.now(), "failed: "+err.Error()
		}); werr != nil {
			job.logger.Warn("recording the failed apply", zap.Error(werr))
		}
	}
}

func (job *syncJob) applyOnce(ctx context.Context, req manifest.Request) error {
	c, err := job.diff(ctx)
	if err != nil {
		return err
	}

	req.Started, req.Finished, req.Outcome = job.ctrl.now(), time.Time{}, ""

	if req.DryRun {
		req.Outcome = fmt.Sprintf("dry run: %d objects would change", c.outOfSync())

		return job.finish(ctx, job.recorded(c, func(s *manifest.ManifestSyncSpec) {
			s.Request = req
			s.Request.Finished = s.CheckedAt // the diff is as of the request's end: auto mode applies only later ones
		}))
	}

	for i := range c.diffs {
		d := &c.diffs[i]

		switch {
		case d.Refused != "":
			d.Status, d.Reason = manifest.ObjectPending, "the dry run was refused; applying anyway to report the API server's answer"
		case len(d.Conflicts) > 0 && !req.ForceConflicts:
			d.Status, d.Reason = manifest.ObjectHeldBack, heldBack(d.Conflicts)
		default:
			d.Status = manifest.ObjectPending
		}
	}

	// Every change is recorded before the first object is applied.
	if err = job.write(ctx, job.recorded(c, func(s *manifest.ManifestSyncSpec) {
		s.Phase, s.Request, s.Pruned, s.Error = manifest.PhaseApplying, req, nil, ""
	})); err != nil {
		return err
	}

	var applied []kube.Object

	failures := 0

	for _, obj := range c.objects {
		i := slices.IndexFunc(c.diffs, func(d manifest.ObjectDiff) bool { return d.Object == kube.Describe(obj) })
		if i < 0 || c.diffs[i].Status != manifest.ObjectPending {
			continue
		}

		// The client checks for conflicts again as it applies: a field another manager set since the diff is held
		// back too, unless the request forces conflicts.
		var conflict *kube.ConflictError

		status, reason := manifest.ObjectApplied, ""

		switch err = c.client.Apply(ctx, obj, job.in.legacy, req.ForceConflicts); {
		case errors.As(err, &conflict):
			c.diffs[i].Conflicts = conflictNames(conflict.Conflicts)
			status, reason = manifest.ObjectHeldBack, heldBack(c.diffs[i].Conflicts)
		case err != nil:
			status, reason = manifest.ObjectFailed, err.Error()
			failures++
		default:
			applied = append(applied, obj)
		}

		c.diffs[i].Status, c.diffs[i].Reason = status, reason

		if err = job.write(ctx, func(s *manifest.ManifestSyncSpec) { s.Diffs = slices.Clone(c.diffs) }); err != nil {
			return err
		}
	}

	heldBack := len(c.diffs) - len(applied) - failures

	pruned, pruneNote, err := job.prune(ctx, c, req, heldBack+failures)
	if err != nil {
		return err
	}

	rollout := ""
	if err = c.client.WaitRollout(ctx, applied, job.ctrl.cfg.ManifestRolloutTimeout); err != nil {
		rollout = err.Error()
	}

	after, err := job.diff(ctx)
	if err != nil {
		return err
	}

	var failed []string

	for _, d := range c.diffs {
		if d.Status == manifest.ObjectFailed {
			failed = append(failed, d.Object+": "+d.Reason)
		}
	}

	if rollout != "" {
		failed = append(failed, rollout)
	}

	req.Outcome = fmt.Sprintf("applied %d, held back %d, failed %d", len(applied), heldBack, failures) + pruneNote

	return job.finish(ctx, job.recorded(after, func(s *manifest.ManifestSyncSpec) {
		s.Request, s.LastApplied, s.Pruned = req, s.CheckedAt, pruned
		s.Request.Finished = s.CheckedAt // the diff is as of the apply's end: auto mode applies only later ones
		s.Diffs = carryOutcomes(s.Diffs, c.diffs, anyOutcome)

		if len(failed) > 0 {
			s.Phase, s.Error = manifest.PhaseFailed, strings.Join(failed, "; ")
		} else if s.OutOfSync > 0 {
			s.Phase = manifest.PhaseOutOfSync
		}
	}))
}

// prune deletes the objects Talos no longer renders when the request asks for it and every object applied; it says
// why it did not otherwise.
func (job *syncJob) prune(ctx context.Context, c checked, req manifest.Request, notApplied int) ([]string, string, error) {
	switch {
	case !req.Prune:
		return nil, "", nil
	case job.in.legacy:
		return nil, "; not pruned: the legacy path (Talos < 1.13) keeps no inventory", nil
	case notApplied > 0:
		return nil, "; not pruned: some objects were not applied", nil
	case len(c.prunable) == 0:
		return nil, "; nothing to prune", nil
	}

	pruned, err := c.client.Prune(ctx, c.objects)
	if err != nil {
		return nil, "", err
	}

	return pruned, fmt.Sprintf("; pruned %d", len(pruned)), nil
}

// conflictNames words conflicts as ManifestSync shows them: "spec.replicas set by kubectl-edit".
func conflictNames(conflicts []kube.Conflict) []string {
	var out []string
	for _, c := range conflicts {
		out = append(out, c.Field+" set by "+c.Manager)
	}

	return out
}

// heldBack is the reason an object with conflicts was not applied.
func heldBack(conflicts []string) string {
	return "fields set by another field manager: " + strings.Join(conflicts, "; ") + " (sync --force-conflicts overwrites them)"
}

// carryOutcomes copies onto the objects of a fresh diff that have no outcome yet the outcome an apply gave them in
// last (held back, failed, and why), where keep says so.
func carryOutcomes(fresh, last []manifest.ObjectDiff, keep func(manifest.ObjectDiff) bool) []manifest.ObjectDiff {
	for i := range fresh {
		j := slices.IndexFunc(last, func(d manifest.ObjectDiff) bool { return d.Object == fresh[i].Object })
		if fresh[i].Status == "" && j >= 0 && keep(last[j]) {
			fresh[i].Status, fresh[i].Reason = last[j].Status, last[j].Reason
		}
	}

	return fresh
}

// notApplied reports whether an apply held the object back or failed it: an outcome a later check keeps showing
// while the object still differs.
func notApplied(d manifest.ObjectDiff) bool {
	return d.Status == manifest.ObjectHeldBack || d.Status == manifest.ObjectFailed
}

// anyOutcome keeps every outcome: the one apply's own result.
func anyOutcome(manifest.ObjectDiff) bool { return true }
