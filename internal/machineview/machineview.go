// Package machineview pairs what the engine observed of a machine (its MachineStatus, polled) with where the
// machine's upgrade stands (its MachineUpgradeStatus, written by the step machine). The two are written by
// different controllers at different times, so a view that shows both side by side can pair a new phase with an
// observation made before it: a machine Done on v1.14.1 still "seen" on v1.13.4 and unreachable, from the poll
// made during its reboot. Every view (the demo, `upshift status`) and the observing controller decide with the
// rules here, so what the engine confirmed in a step is also what it shows.
package machineview

import (
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Stale reports whether the observation was made before the upgrade entered its current phase: the step machine
// has dealt with the machine since, so the observation's reachability is not the latest word, and its version is
// not either once the upgrade is Done. Without an observation or an upgrade there is nothing to be stale against.
func Stale(status *observe.MachineStatusSpec, up *upgrade.MachineUpgradeStatusSpec) bool {
	return status != nil && up != nil && !up.PhaseChangedAt.IsZero() && status.ObservedAt.Before(up.PhaseChangedAt)
}

// Machine is what a view shows of a machine next to its upgrade phase.
type Machine struct {
	// Version is the Talos version the machine runs as far as the engine knows; empty when nothing says.
	Version string
	// Unreachable says that the latest word on the machine is an observation that could not reach it.
	Unreachable bool
}

// Pair is what to show of a machine given its last observation and its upgrade (either may be nil). An upgrade
// that finished after the observation was made shows the version its last steps confirmed (the machine came back
// ready on it), and the older observation's "unreachable" is not shown; otherwise the observation speaks.
func Pair(status *observe.MachineStatusSpec, up *upgrade.MachineUpgradeStatusSpec) Machine {
	stale := Stale(status, up)

	if up != nil && up.Phase == upgrade.MachineDone && (status == nil || stale) {
		return Machine{Version: up.ToVersion}
	}

	if status == nil {
		return Machine{}
	}

	return Machine{Version: status.TalosVersion, Unreachable: !status.Reachable && !stale}
}
