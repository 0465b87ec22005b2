package integration

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// Talos API methods the rollout calls, as the journal names them.
const (
	methodLegacyUpgrade    = "/machine.MachineService/Upgrade"
	methodLifecycleUpgrade = "/machine.LifecycleService/Upgrade"
	methodReboot           = "/machine.MachineService/Reboot"
	methodForfeit          = "/machine.MachineService/EtcdForfeitLeadership"
)

// rollout is the fleet's journal read as a rollout: which node is a control plane, and the calls and events in
// order. Only calls the node accepted count (a call to a node that is down is recorded with an error).
type rollout struct {
	entries       []talosemu.Entry
	controlPlanes map[string]bool
}

func readRollout(fleet *talosemu.Fleet) rollout {
	r := rollout{controlPlanes: map[string]bool{}}

	for _, n := range fleet.Nodes() {
		r.controlPlanes[n.Name()] = n.ControlPlane()
	}

	for _, e := range fleet.Journal().Entries() {
		if e.Error == "" || e.Event != "" {
			r.entries = append(r.entries, e)
		}
	}

	return r
}

// isInstall reports an install call (either flow).
func isInstall(e talosemu.Entry) bool {
	return e.Method == methodLegacyUpgrade || e.Method == methodLifecycleUpgrade
}

// imageVersion is the version an installer image reference installs ("" when none).
func imageVersion(image string) string {
	_, tag, ok := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":")
	if !ok {
		return ""
	}

	return strings.TrimPrefix(tag, "v")
}

// interval is when one node was busy with one version: from its install call to its reboot-up on that version.
type interval struct {
	node       string
	version    string
	start, end time.Time
}

// installs returns one interval per install of a version on a node, in order of start. An install never followed by
// a reboot-up on its version (a failure, a rollback) ends at the node's next reboot-up or, failing that, never.
func (r rollout) installs() []interval {
	var (
		out  []interval
		open = map[string]int{} // node -> index in out of its open interval
	)

	for _, e := range r.entries {
		switch {
		case isInstall(e):
			if _, ok := open[e.Node]; ok {
				continue // a second call for the same install: reported by duplicates
			}

			open[e.Node] = len(out)
			out = append(out, interval{node: e.Node, version: imageVersion(e.Image), start: e.Time})
		case e.Event == talosemu.EventRebootUp:
			if i, ok := open[e.Node]; ok {
				out[i].end = e.Time
				delete(open, e.Node)
			}
		}
	}

	return out
}

// maxConcurrent returns the largest number of intervals matching keep that overlap at one moment.
func maxConcurrent(intervals []interval, keep func(interval) bool) int {
	type edge struct {
		at    time.Time
		delta int
	}

	var edges []edge

	for _, iv := range intervals {
		if !keep(iv) {
			continue
		}

		end := iv.end
		if end.IsZero() {
			end = time.Now()
		}

		edges = append(edges, edge{iv.start, 1}, edge{end, -1})
	}

	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}

		return a.delta - b.delta // an end before a start at the same instant
	})

	n, peak := 0, 0
	for _, e := range edges {
		n += e.delta
		peak = max(peak, n)
	}

	return peak
}

// controlPlanesDownAtOnce returns the most control planes down (between reboot-down and reboot-up) at one moment.
func (r rollout) controlPlanesDownAtOnce() int {
	down, peak := map[string]bool{}, 0

	for _, e := range r.entries {
		if !r.controlPlanes[e.Node] {
			continue
		}

		switch e.Event {
		case talosemu.EventRebootDown:
			down[e.Node] = true
		case talosemu.EventRebootUp:
			delete(down, e.Node)
		}

		peak = max(peak, len(down))
	}

	return peak
}

// controlPlanesFirst checks, for every version installed, that every control plane was back on it before the
// first worker's install of it started.
func (r rollout) controlPlanesFirst() error {
	cpBack := map[string]time.Time{}
	workerStart := map[string]time.Time{}

	for _, iv := range r.installs() {
		if r.controlPlanes[iv.node] {
			if iv.end.After(cpBack[iv.version]) {
				cpBack[iv.version] = iv.end
			}
		} else if t, ok := workerStart[iv.version]; !ok || iv.start.Before(t) {
			workerStart[iv.version] = iv.start
		}
	}

	for version, start := range workerStart {
		if back, ok := cpBack[version]; ok && !back.Before(start) {
			return fmt.Errorf("version %s: a worker started at %s before the last control plane was back at %s", version, start.Format(time.StampMicro), back.Format(time.StampMicro))
		}
	}

	return nil
}

// forfeitBeforeReboots checks that every control plane that went down for the reboot of an install had forfeited
// its etcd leadership since it last came up (the legacy flow forfeits before its install call, which reboots).
func (r rollout) forfeitBeforeReboots() error {
	installed, forfeited := map[string]bool{}, map[string]bool{}

	for _, e := range r.entries {
		if !r.controlPlanes[e.Node] {
			continue
		}

		switch {
		case isInstall(e):
			installed[e.Node] = true
		case e.Method == methodForfeit:
			forfeited[e.Node] = true
		case e.Event == talosemu.EventRebootUp:
			installed[e.Node], forfeited[e.Node] = false, false
		case e.Event == talosemu.EventRebootDown && installed[e.Node] && !forfeited[e.Node]:
			return fmt.Errorf("control plane %s went down for its reboot at %s without forfeiting etcd leadership", e.Node, e.Time.Format(time.StampMicro))
		}
	}

	return nil
}

// duplicate is an install or reboot call sent again for a step: a second install of the same image before the
// node rebooted, or a second reboot call before the node went down.
type duplicate struct {
	node, method string
	first, again time.Time
}

func (d duplicate) String() string {
	return fmt.Sprintf("%s: %s again at %s (first at %s)", d.node, d.method, d.again.Format(time.StampMicro), d.first.Format(time.StampMicro))
}

// duplicates lists the install and reboot calls sent again for one step.
func (r rollout) duplicates() []duplicate {
	type sent struct {
		image string
		at    time.Time
	}

	var (
		out       []duplicate
		installed = map[string]sent{}      // node -> install sent, until the node rebooted
		rebooting = map[string]time.Time{} // node -> reboot asked, until the node went down
	)

	for _, e := range r.entries {
		switch {
		case isInstall(e):
			if prev, ok := installed[e.Node]; ok && prev.image == e.Image {
				out = append(out, duplicate{node: e.Node, method: e.Method, first: prev.at, again: e.Time})

				continue
			}

			installed[e.Node] = sent{e.Image, e.Time}
		case e.Method == methodReboot:
			if prev, ok := rebooting[e.Node]; ok {
				out = append(out, duplicate{node: e.Node, method: e.Method, first: prev, again: e.Time})

				continue
			}

			rebooting[e.Node] = e.Time
		case e.Event == talosemu.EventRebootDown:
			delete(installed, e.Node)
			delete(rebooting, e.Node)
		case e.Event == talosemu.EventInstallFailed:
			delete(installed, e.Node)
		}
	}

	return out
}

// legacyWithoutPreserve lists the legacy upgrades sent without preserve=true.
func (r rollout) legacyWithoutPreserve() []string {
	var out []string

	for _, e := range r.entries {
		if e.Method == methodLegacyUpgrade && (e.Preserve == nil || !*e.Preserve) {
			out = append(out, fmt.Sprintf("%s at %s", e.Node, e.Time.Format(time.StampMicro)))
		}
	}

	return out
}

// count returns how many entries match.
func (r rollout) count(match func(talosemu.Entry) bool) int {
	n := 0

	for _, e := range r.entries {
		if match(e) {
			n++
		}
	}

	return n
}

// rebootDowns returns each node's reboot-down times, in order.
func (r rollout) rebootDowns() map[string][]time.Time {
	out := map[string][]time.Time{}

	for _, e := range r.entries {
		if e.Event == talosemu.EventRebootDown {
			out[e.Node] = append(out[e.Node], e.Time)
		}
	}

	return out
}
