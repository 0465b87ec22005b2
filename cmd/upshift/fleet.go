package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blang/semver/v4"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/internal/machineview"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// How much a cluster of the fleet view needs its operator; the fleet view lists clusters in this order.
const (
	rankAttention = iota // a rollout Failed or Blocked, or a machine failed
	rankUpgrading        // a rollout wanted or in progress
	rankIdle             // every rollout done (or none planned yet)
)

// fleetLine is one cluster of the fleet view: every column already written out.
type fleetLine struct {
	name                                         string
	rank                                         int
	talos, kubernetes, rollouts, machines, newer string
}

// loadFleet reads every cluster with its machines and rollouts.
func loadFleet(ctx context.Context, st state.State) ([]*clusterView, error) {
	clusters, err := safe.StateListAll[*cluster.Cluster](ctx, st)
	if err != nil {
		return nil, fmt.Errorf("listing clusters: %w", err)
	}

	f, err := loadFleetState(ctx, st)
	if err != nil {
		return nil, err
	}

	views := make([]*clusterView, 0, clusters.Len())
	for c := range clusters.All() {
		views = append(views, f.view(c))
	}

	return views, nil
}

// printFleet prints one line per cluster, those that need attention first, then those upgrading, then the idle
// ones, each group by name.
func printFleet(w io.Writer, views []*clusterView) error {
	lines := make([]fleetLine, 0, len(views))
	for _, v := range views {
		lines = append(lines, v.fleetLine())
	}

	slices.SortFunc(lines, func(a, b fleetLine) int { return cmp.Or(cmp.Compare(a.rank, b.rank), strings.Compare(a.name, b.name)) })

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)

	fmt.Fprintln(tw, "CLUSTER\tTALOS\tKUBERNETES\tROLLOUTS\tMACHINES\tNEWER AVAILABLE")

	for _, l := range lines {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.name, l.talos, l.kubernetes, l.rollouts, l.machines, orDash(l.newer))
	}

	if len(lines) == 0 {
		fmt.Fprintln(tw, "(no clusters)")
	}

	return tw.Flush()
}

// fleetLine sums the cluster up: the lowest version its machines run with the target beside it when they differ,
// each rollout not done with its progress, the machines that failed, are locked or cannot be reached, and the
// newer versions a user may pick.
func (v *clusterView) fleetLine() fleetLine {
	spec := v.cluster.TypedSpec()
	l := fleetLine{name: v.cluster.Metadata().ID(), rank: rankIdle}

	var talos, kubelets []string

	failed, locked, unreachable := 0, 0, 0

	for _, m := range v.machines {
		id := m.Metadata().ID()

		var (
			status *observe.MachineStatusSpec
			up     *upgrade.MachineUpgradeStatusSpec
		)

		if s, ok := v.statuses[id]; ok {
			status = s.TypedSpec()
			kubelets = append(kubelets, status.KubeletVersion)
		}

		if u, ok := v.upgrades[id]; ok {
			up = u.TypedSpec()

			if up.Phase == upgrade.MachineFailed {
				failed++
			}
		}

		shown := machineview.Pair(status, up)
		talos = append(talos, shown.Version)

		if shown.Unreachable {
			unreachable++
		}

		if _, ok := v.locks[id]; ok {
			locked++
		}
	}

	l.talos = fromTo(lowest(talos), spec.TalosVersion)
	l.kubernetes = fromTo(lowest(kubelets), spec.KubernetesVersion)

	var rollouts []string

	for _, r := range v.rollouts() {
		if r.phase == upgrade.PhaseDone || r.phase == "" {
			continue
		}

		rollout := r.name + " " + string(r.phase)
		if r.total > 0 {
			rollout += fmt.Sprintf(" %d/%d", r.done, r.total)
		}

		rollouts = append(rollouts, rollout)
		l.rank = min(l.rank, r.rank())
	}

	if failed > 0 {
		l.rank = rankAttention
	}

	l.rollouts = "up to date"
	if len(rollouts) > 0 {
		l.rollouts = strings.Join(rollouts, ", ")
	}

	counts := []string{fmt.Sprint(len(v.machines))}

	for _, c := range []struct {
		n    int
		what string
	}{{failed, "failed"}, {locked, "locked"}, {unreachable, "unreachable"}} {
		if c.n > 0 {
			counts = append(counts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}

	l.machines = strings.Join(counts, ", ")

	var newer []string

	if v.talos != nil {
		if n := newestPerMinor(newerTalos(v.talos.TypedSpec().AvailableVersions, spec.TalosVersion)); len(n) > 0 {
			newer = append(newer, "talos "+strings.Join(n, " "))
		}
	}

	if v.kube != nil {
		if n := newestPerMinor(v.kube.TypedSpec().AvailableVersions); len(n) > 0 {
			newer = append(newer, "kubernetes "+strings.Join(n, " "))
		}
	}

	l.newer = strings.Join(newer, "; ")

	return l
}

// rolloutState is where one of a cluster's rollouts stands.
type rolloutState struct {
	name        string
	phase       upgrade.ClusterPhase
	done, total int
}

// rank is how much the rollout needs its operator: a Failed or Blocked one needs them, one with work planned or
// under way is upgrading; one Pending with nothing planned waits for observations (a Kubernetes upgrade before any
// kubelet version is known), not for work, and counts as idle.
func (r rolloutState) rank() int {
	switch {
	case r.phase == upgrade.PhaseFailed || r.phase == upgrade.PhaseBlocked:
		return rankAttention
	case r.phase == upgrade.PhaseDone || r.phase == upgrade.PhasePending && r.total == 0:
		return rankIdle
	default:
		return rankUpgrading
	}
}

// rollouts are the cluster's Talos upgrade, Kubernetes upgrade and config rollout, those written so far.
func (v *clusterView) rollouts() []rolloutState {
	var out []rolloutState

	if v.talos != nil {
		s := v.talos.TypedSpec()
		out = append(out, rolloutState{"talos", s.Phase, s.Done, s.Total})
	}

	if v.kube != nil {
		s := v.kube.TypedSpec()
		out = append(out, rolloutState{"kubernetes", s.Phase, s.Done, s.Total})
	}

	if v.rollout != nil {
		s := v.rollout.TypedSpec()
		out = append(out, rolloutState{"config", s.Phase, s.Done, s.Total})
	}

	return out
}

// lowest is the lowest of versions that parse ("?" when none does): a cluster with mixed versions is only as far
// as its slowest machine.
func lowest(vs []string) string {
	var (
		low   semver.Version
		shown string
	)

	for _, s := range vs {
		v, err := semver.ParseTolerant(s)
		if err != nil {
			continue
		}

		if shown == "" || v.LT(low) {
			low, shown = v, s
		}
	}

	if shown == "" {
		return "?"
	}

	return shown
}

// newestPerMinor keeps the newest patch release of each minor in vs, in their order: one line per cluster has room
// for the releases a user would pick (`status CLUSTER` lists them all). Versions that do not parse are kept.
func newestPerMinor(vs []string) []string {
	newest := map[string]semver.Version{}

	for _, s := range vs {
		if v, err := semver.ParseTolerant(s); err == nil {
			minor := fmt.Sprintf("%d.%d", v.Major, v.Minor)
			if cur, ok := newest[minor]; !ok || v.GT(cur) {
				newest[minor] = v
			}
		}
	}

	var out []string

	for _, s := range vs {
		v, err := semver.ParseTolerant(s)
		if err != nil || v.EQ(newest[fmt.Sprintf("%d.%d", v.Major, v.Minor)]) {
			out = append(out, s)
		}
	}

	return out
}

// fromTo is "current -> target" when the cluster is not at its target yet, and the version alone when it is.
func fromTo(current, target string) string {
	c, errC := semver.ParseTolerant(current)
	t, errT := semver.ParseTolerant(target)

	if target == "" || errC == nil && errT == nil && c.EQ(t) {
		return current
	}

	return current + " -> " + target
}

// fleetTypes are the types the fleet view shows; `status --watch` prints it again when any of them changes.
var fleetTypes = []resource.Type{
	cluster.ClusterType, cluster.MachineType, cluster.MachineLockType, observe.MachineStatusType,
	upgrade.MachineUpgradeStatusType, upgrade.TalosUpgradeStatusType, upgrade.KubernetesUpgradeStatusType,
	upgrade.ConfigRolloutStatusType, upgrade.MachineConfigStatusType, manifest.ManifestSyncType,
}

// redrawEvery bounds how often `status --watch` prints: a rollout writes many statuses a second, and a person reads
// the view, not each write.
const redrawEvery = 500 * time.Millisecond

// watchStatus prints the view draw makes now and again after changes to the fleet, at most every redrawEvery,
// until ctx ends; clear starts each new view (a terminal clears the screen, a pipe gets a blank line).
func watchStatus(ctx context.Context, st state.State, clear string, w io.Writer, draw func(io.Writer) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	events := make(chan state.Event)

	for _, t := range fleetTypes {
		if err := st.WatchKind(ctx, resource.NewMetadata(resources.Namespace, t, "", resource.VersionUndefined), events); err != nil {
			return fmt.Errorf("watching %s: %w", t, err)
		}
	}

	if err := printView(w, "", draw); err != nil {
		return err
	}

	ticker := time.NewTicker(redrawEvery)
	defer ticker.Stop()

	dirty := false

	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-events:
			if e.Type == state.Errored {
				return fmt.Errorf("watching the fleet: %w", e.Error)
			}

			dirty = true
		case <-ticker.C:
			if !dirty {
				continue
			}

			if err := printView(w, clear, draw); err != nil {
				return err
			}

			dirty = false
		}
	}
}

// printView writes clear and the view draw makes in one write, so a terminal never shows half a view.
func printView(w io.Writer, clear string, draw func(io.Writer) error) error {
	var b strings.Builder

	b.WriteString(clear)

	if err := draw(&b); err != nil {
		return err
	}

	_, err := io.WriteString(w, b.String())

	return err
}
