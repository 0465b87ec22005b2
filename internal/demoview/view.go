// Package demoview turns the engine's resources into what `upshift demo` shows: a live screen (one row per
// machine with its phase and a progress bar, the cluster's phase and hop, etcd's health), plain progress lines
// (one per transition, for a log or CI) and the closing summary (versions, time per phase). The View is pure: it
// folds resources in as the demo's watches deliver them and renders text, so every line of it is unit-tested. The
// Console writes it: redrawn in place on a terminal, as plain lines elsewhere, with the demo's own messages and
// the closing pointers to the event log; the demo's command only starts the engine and the fleet and drives the
// run.
//
// Each cluster-wide upgrade is a track of the view: the Talos upgrade, then the Kubernetes upgrade (kubernetes.go)
// under it in the same cluster section; the bootstrap-manifest diff the engine computes after them closes the
// summary.
package demoview

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"

	"github.com/upshift-io/upshift/internal/machineview"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// View is what the demo knows of the fleet: the last version of every resource it follows, and the history it
// needs for the summary (first versions seen, time spent per phase, hops, failures).
type View struct {
	start    time.Time
	clusters map[string]*clusterState
	machines map[string]*machineState
}

type clusterState struct {
	id    string
	talos *upgrade.TalosUpgradeStatusSpec
	etcd  *observe.EtcdStatusSpec
	// hops are the Talos hops in the order the cluster went to them, with when each became the target.
	hops []hop
	// plan is the last plan seen (the status drops it once Done): the versions the cluster went from, then its hops.
	plan string
	// finished is when the Talos upgrade was first seen Done after it had a plan.
	finished time.Time
	lastLine string
	etcdLine string
	// kube is the cluster's Kubernetes upgrade as last seen, kubeLine its last plain line.
	kube     *upgrade.KubernetesUpgradeStatusSpec
	kubeLine string
	// sync is the cluster's bootstrap-manifest diff as last seen.
	sync *manifest.ManifestSyncSpec
}

type hop struct {
	version string
	started time.Time
}

type machineState struct {
	id, cluster string
	role        cluster.Role
	status      *observe.MachineStatusSpec
	firstSeen   string // the first Talos version observed
	upgrade     *upgrade.MachineUpgradeStatusSpec
	lastClean   upgrade.MachinePhase // the last step of the current run seen without an error
	failedAt    upgrade.MachinePhase // the step a failed upgrade was in
	failures    []failure
	phases      map[upgrade.MachinePhase]*PhaseTime
}

// New returns an empty view of a demo that started at start (plain lines show the time since then).
func New(start time.Time) *View {
	return &View{start: start, clusters: map[string]*clusterState{}, machines: map[string]*machineState{}}
}

// Update folds one created or updated resource into the view and returns the plain progress lines its change
// makes (none when nothing a user follows changed). Types the view does not follow are ignored.
func (v *View) Update(r resource.Resource) []string {
	switch r := r.(type) {
	case *cluster.Machine:
		m := v.machine(r.Metadata().ID())
		m.cluster, m.role = r.TypedSpec().Cluster, r.TypedSpec().Role
		v.cluster(m.cluster)
	case *observe.MachineStatus:
		m := v.machine(r.Metadata().ID())
		spec := r.TypedSpec().DeepCopy()
		m.status, m.cluster = &spec, spec.Cluster

		if m.firstSeen == "" {
			m.firstSeen = spec.TalosVersion
		}
	case *observe.EtcdStatus:
		c := v.cluster(r.Metadata().ID())
		spec := r.TypedSpec().DeepCopy()
		c.etcd = &spec

		return c.changed(&c.etcdLine, c.id+" "+etcdSummary(&spec), v.since(r.Metadata().Updated()))
	case *upgrade.TalosUpgradeStatus:
		return v.updateTalos(r.Metadata().ID(), r.TypedSpec().DeepCopy(), r.Metadata().Updated())
	case *upgrade.MachineUpgradeStatus:
		return v.updateMachineUpgrade(r.Metadata().ID(), r.TypedSpec().DeepCopy())
	case *upgrade.KubernetesUpgradeStatus:
		return v.updateKubernetes(r.Metadata().ID(), r.TypedSpec().DeepCopy(), r.Metadata().Updated())
	case *manifest.ManifestSync:
		v.updateManifests(r.Metadata().ID(), r.TypedSpec().DeepCopy())
	}

	return nil
}

func (v *View) updateTalos(id string, spec upgrade.TalosUpgradeStatusSpec, at time.Time) []string {
	c := v.cluster(id)
	c.talos = &spec

	if len(spec.Plan) > 0 {
		c.plan = planLine(&spec)
	}

	if spec.Target != "" && len(spec.Plan) > 0 && (len(c.hops) == 0 || c.hops[len(c.hops)-1].version != spec.Target) {
		c.hops = append(c.hops, hop{version: spec.Target, started: at})
	}

	if spec.Phase == upgrade.PhaseDone && len(c.hops) > 0 && c.finished.IsZero() {
		c.finished = at
	} else if spec.Phase != upgrade.PhaseDone {
		c.finished = time.Time{}
	}

	return c.changed(&c.lastLine, c.id+" "+talosLine(&spec), v.since(at))
}

func (v *View) updateMachineUpgrade(id string, spec upgrade.MachineUpgradeStatusSpec) []string {
	m := v.machine(id)
	m.cluster = spec.Cluster
	prev := m.upgrade
	m.upgrade = &spec

	sameRun := prev != nil && prev.Attempt == spec.Attempt && prev.ToVersion == spec.ToVersion

	if sameRun && prev.Phase == spec.Phase {
		return nil
	}

	if sameRun && prev.Phase != upgrade.MachineDone && prev.Phase != upgrade.MachineFailed && !prev.PhaseChangedAt.IsZero() {
		m.phaseTime(prev.Phase).add(spec.PhaseChangedAt.Sub(prev.PhaseChangedAt))
	}

	// A step that fails may lead through another one (Uncordoning) before Failed: the failed step is the last one
	// seen without the error.
	if !sameRun {
		m.lastClean = ""
	}

	if spec.Error == "" {
		m.lastClean = spec.Phase
	}

	if spec.Phase == upgrade.MachineFailed {
		m.failedAt = m.lastClean
		m.failures = append(m.failures, failure{from: spec.FromVersion, to: spec.ToVersion, attempt: spec.Attempt, step: m.failedAt, reason: spec.Error})
	}

	done, total := m.progress()
	line := fmt.Sprintf("%s %-20s %s → %s  step %d/%d", id, spec.Phase, orUnknown(spec.FromVersion), spec.ToVersion, done, total)

	switch {
	case spec.Error != "":
		line += "  " + spec.Error
	case spec.Waiting != "":
		line += "  waiting: " + spec.Waiting
	}

	return []string{stamp(v.since(spec.PhaseChangedAt), line)}
}

// failure is one failed upgrade of a machine.
type failure struct {
	from, to string
	attempt  int
	step     upgrade.MachinePhase
	reason   string
}

// changed returns the line stamped with its time when it differs from the last one remembered in last.
func (c *clusterState) changed(last *string, line string, at time.Duration) []string {
	if *last == line {
		return nil
	}

	*last = line

	return []string{stamp(at, line)}
}

func (v *View) since(t time.Time) time.Duration {
	if t.IsZero() || t.Before(v.start) {
		return 0
	}

	return t.Sub(v.start)
}

func stamp(d time.Duration, line string) string {
	return fmt.Sprintf("%7.1fs  %s", d.Seconds(), line)
}

func (v *View) cluster(id string) *clusterState {
	if id == "" {
		return nil
	}

	c, ok := v.clusters[id]
	if !ok {
		c = &clusterState{id: id}
		v.clusters[id] = c
	}

	return c
}

func (v *View) machine(id string) *machineState {
	m, ok := v.machines[id]
	if !ok {
		m = &machineState{id: id, phases: map[upgrade.MachinePhase]*PhaseTime{}}
		v.machines[id] = m
	}

	return m
}

func (m *machineState) phaseTime(p upgrade.MachinePhase) *PhaseTime {
	t, ok := m.phases[p]
	if !ok {
		t = &PhaseTime{Phase: p}
		m.phases[p] = t
	}

	return t
}

// progress is how many steps of its flow the machine's current upgrade has done, out of how many it has.
func (m *machineState) progress() (done, total int) {
	if m.upgrade == nil {
		return 0, 0
	}

	role := cluster.RoleWorker // until its Machine is seen, a machine is shown with a worker's steps
	if m.role == cluster.RoleControlPlane {
		role = cluster.RoleControlPlane
	}

	steps := rollout.Steps(rollout.FlowOf(m.upgrade.FromVersion, m.upgrade.ToVersion), role)
	total = len(steps) - 1

	phase := m.upgrade.Phase
	if phase == upgrade.MachineFailed {
		phase = m.failedAt
	}

	if i := slices.Index(steps, phase); i >= 0 {
		return i, total
	}

	return 0, total
}

// shown is the machine's version and reachability as the view shows them next to its upgrade phase.
func (m *machineState) shown() machineview.Machine {
	return machineview.Pair(m.status, m.upgrade)
}

// version is the Talos version the machine runs as far as the engine knows.
func (m *machineState) version() string {
	return m.shown().Version
}

// clusterIDs are the clusters in name order.
func (v *View) clusterIDs() []string {
	return slices.Sorted(maps.Keys(v.clusters))
}

// machinesOf are the cluster's machines: control planes first, then workers, each in name order.
func (v *View) machinesOf(clusterID string) []*machineState {
	var out []*machineState

	for _, m := range v.machines {
		if m.cluster == clusterID {
			out = append(out, m)
		}
	}

	slices.SortFunc(out, func(a, b *machineState) int {
		if (a.role == cluster.RoleControlPlane) != (b.role == cluster.RoleControlPlane) {
			if a.role == cluster.RoleControlPlane {
				return -1
			}

			return 1
		}

		return strings.Compare(a.id, b.id)
	})

	return out
}

// talosLine says where a cluster's Talos upgrade stands, in one line: the headline, then the error or reason.
func talosLine(s *upgrade.TalosUpgradeStatusSpec) string {
	line := talosHeadline(s)

	switch {
	case s.Error != "":
		line += "  " + s.Error
	case s.Reason != "" && s.Phase != upgrade.PhaseDone:
		line += "  (" + s.Reason + ")"
	}

	return line
}

// etcdSummary says how a cluster's etcd is, in one line.
func etcdSummary(s *observe.EtcdStatusSpec) string {
	if s.Error != "" {
		return "etcd unobservable: " + s.Error
	}

	healthy, voters, leader := 0, 0, "none"

	for _, m := range s.Members {
		if m.Learner {
			continue
		}

		voters++

		if m.Started && m.Healthy {
			healthy++
		}

		if m.ID == s.Leader {
			leader = m.Machine
		}
	}

	line := fmt.Sprintf("etcd %d/%d healthy, leader %s, ", healthy, voters, leader)
	if s.CanLoseMember {
		return line + "one member may leave"
	}

	if s.Reason != "" {
		return line + "no member may leave: " + s.Reason
	}

	return line + "no member may leave"
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}

	return s
}
