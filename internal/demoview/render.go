package demoview

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// barWidth is the number of cells of a machine's progress bar.
const barWidth = 10

// Screen renders the live view: per cluster its Talos upgrade (phase, hop, progress, plan, failure), its
// Kubernetes upgrade once it has steps (phase, steps done, the stage it is at and what runs), its etcd health and one row per machine (version, phase, progress bar, what it waits for), each line cut to width
// columns; at most height lines (the last one then says how many were left out). A width or height below 1 means
// no limit.
func (v *View) Screen(width, height int) []string {
	var lines []string

	for _, id := range v.clusterIDs() {
		lines = append(lines, v.clusterScreen(id, width)...)
	}

	if height > 0 && len(lines) > height {
		left := len(lines) - height + 1
		lines = append(lines[:height-1], fmt.Sprintf("… %d more lines: `upshift get machineupgradestatuses` lists them", left))
	}

	for i, l := range lines {
		lines[i] = cut(l, width)
	}

	return lines
}

func (v *View) clusterScreen(id string, width int) []string {
	c := v.clusters[id]
	lines := []string{"cluster " + id}

	if t := c.talos; t != nil {
		lines[0] += "  " + talosHeadline(t)

		if len(t.Plan) > 0 {
			lines = append(lines, "  plan  "+planLine(t))
		}

		switch {
		case t.Error != "":
			lines = append(lines, wrap("  ✗ "+t.Error, "    ", width, 3)...)
		case t.Reason != "" && t.Phase != upgrade.PhaseDone:
			lines = append(lines, "  "+t.Reason)
		}
	}

	lines = append(lines, kubeScreen(c.kube, width)...)

	if c.etcd != nil {
		lines = append(lines, "  "+etcdSummary(c.etcd))
	}

	machines := v.machinesOf(id)
	name := len("MACHINE")

	for _, m := range machines {
		name = max(name, len(m.id))
	}

	row := func(id, version, phase, bar, steps, note string) string {
		return strings.TrimRight(fmt.Sprintf("  %-*s %-8s %-20s %s %5s  %s", name, id, version, phase, bar, steps, note), " ")
	}

	lines = append(lines, row("MACHINE", "TALOS", "PHASE", fmt.Sprintf("%-*s", barWidth, "PROGRESS"), "", ""))

	for _, m := range machines {
		phase, bar, steps, note := "-", strings.Repeat("·", barWidth), "", ""

		if u := m.upgrade; u != nil && !m.doneBefore(c.talos) {
			done, total := m.progress()
			phase, bar, steps = string(u.Phase), progressBar(done, total), fmt.Sprintf("%d/%d", done, total)

			switch {
			case u.Phase == upgrade.MachineFailed && m.failedAt != "":
				note = "at " + string(m.failedAt) + ": " + u.Error
			case u.Phase == upgrade.MachineFailed:
				note = u.Error
			case u.Waiting != "":
				note = u.Waiting
			case u.Phase != upgrade.MachineDone:
				note = "→ " + u.ToVersion
			}
		}

		shown := m.shown()
		if shown.Unreachable && note == "" {
			note = "unreachable"
		}

		if note == "" {
			note = kubeStepOn(c.kube, m.id)
		}

		lines = append(lines, row(m.id, orUnknown(shown.Version), phase, bar, steps, note))
	}

	return lines
}

// doneBefore reports whether the machine's last upgrade finished a hop before the one the cluster is on now: it waits
// for its turn in this one.
func (m *machineState) doneBefore(t *upgrade.TalosUpgradeStatusSpec) bool {
	return t != nil && t.Target != "" && m.upgrade.Phase == upgrade.MachineDone && m.upgrade.ToVersion != t.Target
}

// talosHeadline is a cluster's Talos upgrade phase, hop and count, without the reason or error.
func talosHeadline(t *upgrade.TalosUpgradeStatusSpec) string {
	line := "Talos " + string(t.Phase)

	if i := slices.Index(t.Plan, t.Target); i >= 0 && t.Phase != upgrade.PhaseDone {
		line += fmt.Sprintf("  hop %d/%d → %s", i+1, len(t.Plan), t.Target)
	} else if t.ToVersion != "" {
		line += "  → " + t.ToVersion
	}

	if t.Total > 0 {
		line += fmt.Sprintf("  %d/%d machines", t.Done, t.Total)
	}

	return line
}

func planLine(t *upgrade.TalosUpgradeStatusSpec) string {
	return strings.ReplaceAll(orUnknown(t.FromVersion), ",", "+") + " ⇒ " + strings.Join(t.Plan, " → ")
}

func progressBar(done, total int) string {
	if total <= 0 {
		return strings.Repeat("·", barWidth)
	}

	full := done * barWidth / total

	return strings.Repeat("█", full) + strings.Repeat("░", barWidth-full)
}

// cut shortens s to width columns (runes; the view prints no wide characters), marking the cut with "…".
func cut(s string, width int) string {
	r := []rune(s)
	if width < 1 || len(r) <= width {
		return s
	}

	return string(r[:width-1]) + "…"
}

// wrap breaks s into at most maxLines lines of width columns, the following ones indented; the last is cut.
func wrap(s, indent string, width, maxLines int) []string {
	if width < 1 {
		return []string{s}
	}

	var lines []string

	rest := []rune(s)

	for len(rest) > width && len(lines) < maxLines-1 {
		lines = append(lines, string(rest[:width]))
		rest = append([]rune(indent), rest[width:]...)
	}

	return append(lines, cut(string(rest), width))
}

// PhaseTime is the time machines spent in one step of their upgrade, over every machine and hop.
type PhaseTime struct {
	Phase   upgrade.MachinePhase
	Count   int
	Total   time.Duration
	Longest time.Duration
}

func (p *PhaseTime) add(d time.Duration) {
	p.Count++
	p.Total += d
	p.Longest = max(p.Longest, d)
}

// Average is the mean time of one pass through the step.
func (p PhaseTime) Average() time.Duration {
	if p.Count == 0 {
		return 0
	}

	return p.Total / time.Duration(p.Count)
}

// PhaseTimes sums the time spent in each machine step over every machine, in the order of the steps.
func (v *View) PhaseTimes() []PhaseTime {
	sums := map[upgrade.MachinePhase]*PhaseTime{}

	for _, m := range v.machines {
		for p, t := range m.phases {
			s, ok := sums[p]
			if !ok {
				s = &PhaseTime{Phase: p}
				sums[p] = s
			}

			s.Count += t.Count
			s.Total += t.Total
			s.Longest = max(s.Longest, t.Longest)
		}
	}

	out := make([]PhaseTime, 0, len(sums))
	for _, s := range sums {
		out = append(out, *s)
	}

	slices.SortFunc(out, func(a, b PhaseTime) int { return phaseOrder(a.Phase) - phaseOrder(b.Phase) })

	return out
}

// phaseOrder ranks the phases in the order a machine goes through them (the lifecycle flow of a control plane).
func phaseOrder(p upgrade.MachinePhase) int {
	order := []upgrade.MachinePhase{
		upgrade.MachineQueued, upgrade.MachinePullingImage, upgrade.MachineInstalling, upgrade.MachineCheckingEtcd,
		upgrade.MachineForfeitingLeadership, upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineRebooting,
		upgrade.MachineWaitingReady, upgrade.MachineUncordoning, upgrade.MachineDone, upgrade.MachineFailed,
	}

	if i := slices.Index(order, p); i >= 0 {
		return i
	}

	return len(order)
}

// Summary renders what the demo did: per cluster the Talos upgrade (outcome, plan, time per hop), the Kubernetes
// upgrade (outcome, plan, time per step kind), every machine
// from the version first seen to the one it runs now, the failures met on the way; then the time per step.
// Failure reasons are wrapped at width columns (no limit below 1).
func (v *View) Summary(width int) []string {
	var lines []string

	for _, id := range v.clusterIDs() {
		lines = append(lines, v.clusterSummary(id, width)...)
	}

	if times := v.PhaseTimes(); len(times) > 0 {
		lines = append(lines, "Time per machine step (every machine, every hop):",
			fmt.Sprintf("  %-20s %5s %9s %9s", "STEP", "TIMES", "AVERAGE", "LONGEST"))

		for _, t := range times {
			lines = append(lines, fmt.Sprintf("  %-20s %5d %9s %9s", t.Phase, t.Count, round(t.Average()), round(t.Longest)))
		}
	}

	return lines
}

func (v *View) clusterSummary(id string, width int) []string {
	c := v.clusters[id]
	lines := []string{"cluster " + id}

	if t := c.talos; t != nil {
		head := fmt.Sprintf("  Talos upgrade: %s", t.Phase)
		if !c.finished.IsZero() && len(c.hops) > 0 {
			head += " in " + round(c.finished.Sub(c.hops[0].started)).String()
		}

		lines = append(lines, head)

		if c.plan != "" {
			lines = append(lines, "  plan  "+c.plan)
		}

		if hops := c.hopTimes(); hops != "" {
			lines = append(lines, "  hops  "+hops)
		}

		if t.Error != "" {
			lines = append(lines, "  ✗ "+t.Error)
		}
	}

	lines = append(lines, kubeSummary(c.kube, width)...)
	lines = append(lines, fmt.Sprintf("  %-10s %-13s %-9s %-9s %s", "MACHINE", "ROLE", "FROM", "NOW", "FAILURES"))

	for _, m := range v.machinesOf(id) {
		lines = append(lines, fmt.Sprintf("  %-10s %-13s %-9s %-9s %d", m.id, roleName(m.role), orUnknown(m.firstSeen), orUnknown(m.version()), len(m.failures)))
	}

	for _, m := range v.machinesOf(id) {
		for _, f := range m.failures {
			head := fmt.Sprintf("  %s failed", m.id)
			if f.step != "" {
				head += " at " + string(f.step)
			}

			lines = append(lines, fmt.Sprintf("%s (attempt %d, %s → %s):", head, f.attempt, orUnknown(f.from), f.to))
			lines = append(lines, wrap("    "+f.reason, "    ", width, 3)...)
		}
	}

	return lines
}

// hopTimes says how long each hop took, e.g. "v1.12.6 38s, v1.13.4 35s".
func (c *clusterState) hopTimes() string {
	var parts []string

	for i, h := range c.hops {
		end := c.finished
		if i+1 < len(c.hops) {
			end = c.hops[i+1].started
		}

		if end.IsZero() {
			parts = append(parts, h.version+" (unfinished)")

			continue
		}

		parts = append(parts, fmt.Sprintf("%s %s", h.version, round(end.Sub(h.started))))
	}

	return strings.Join(parts, ", ")
}

func roleName(r cluster.Role) string {
	if r == "" {
		return "?"
	}

	return string(r)
}

// round shortens a duration for people: hundredths of a second under a second, tenths under a minute, whole
// seconds above.
func round(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(10 * time.Millisecond)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond)
	}

	return d.Round(time.Second)
}

// TalosUpgrade returns a copy of the cluster's Talos upgrade status as last seen, and whether there was one.
func (v *View) TalosUpgrade(clusterID string) (upgrade.TalosUpgradeStatusSpec, bool) {
	c, ok := v.clusters[clusterID]
	if !ok || c.talos == nil {
		return upgrade.TalosUpgradeStatusSpec{}, false
	}

	return c.talos.DeepCopy(), true
}

// Failed returns the machines of the cluster that failed an upgrade at least once, in name order.
func (v *View) Failed(clusterID string) []string {
	var out []string

	for _, m := range v.machinesOf(clusterID) {
		if len(m.failures) > 0 {
			out = append(out, m.id)
		}
	}

	return out
}

// OnVersion reports whether the cluster has machines and every one runs Talos version, as far as the engine knows
// (its observation, or what its upgrade confirmed since).
func (v *View) OnVersion(clusterID, version string) bool {
	machines := v.machinesOf(clusterID)

	for _, m := range machines {
		if strings.TrimPrefix(m.version(), "v") != strings.TrimPrefix(version, "v") {
			return false
		}
	}

	return len(machines) > 0
}

// Versions returns the Talos version each machine of the cluster runs as far as the engine knows, by machine ID.
func (v *View) Versions(clusterID string) map[string]string {
	out := map[string]string{}

	for _, m := range v.machinesOf(clusterID) {
		out[m.id] = m.version()
	}

	return out
}

// offVersion says which machine of the cluster, first in name order, does not run Talos version as far as the
// engine knows; nil when every one does.
func (v *View) offVersion(clusterID, version string) error {
	versions := v.Versions(clusterID)

	for _, m := range slices.Sorted(maps.Keys(versions)) {
		if got := versions[m]; strings.TrimPrefix(got, "v") != strings.TrimPrefix(version, "v") {
			return fmt.Errorf("machine %s runs %s, not %s", m, got, version)
		}
	}

	return nil
}
