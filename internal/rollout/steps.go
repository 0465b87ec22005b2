// Package rollout holds the pure rules of a Talos rollout (docs/architecture.md, "Where each rule lives"): the
// per-machine step sequence of both upgrade flows as data, the hops each machine takes to the cluster's target,
// which machines of a cluster start next and what the cluster's upgrade status says (Decide), how an in-flight
// machine follows a changed target, and the etcd gate a control plane must pass before it leaves. Nothing here does I/O or reads
// a clock, so the controllers that persist and act on these decisions can be tested around them, and the rules
// can be checked exhaustively.
package rollout

import (
	"fmt"
	"slices"

	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Flow is the way a machine's Talos is replaced, chosen from its running and target versions.
type Flow int

// Upgrade flows.
const (
	// FlowLifecycle is Talos >= 1.13: ImageService.Pull and LifecycleService.Upgrade stage the new release
	// while the node keeps serving; the engine then checks etcd, cordons, drains and reboots it.
	FlowLifecycle Flow = iota
	// FlowLegacy is Talos < 1.13: the engine checks etcd, cordons and drains, then MachineService.Upgrade with
	// preserve=true installs and reboots in one call (Installing is the reboot step).
	FlowLegacy
)

// String names the flow for logs and status.
func (f Flow) String() string {
	if f == FlowLegacy {
		return "legacy"
	}

	return "lifecycle"
}

// FlowOf is the flow of an upgrade from one version to another: the lifecycle flow when both serve it, the legacy
// one otherwise (an unparsable version gets the lifecycle flow, whose install can be refused without harm).
func FlowOf(from, to string) Flow {
	f, errFrom := versions.Parse(from)
	t, errTo := versions.Parse(to)

	if errFrom == nil && errTo == nil && !versions.UsesLifecycleFlow(f, t) {
		return FlowLegacy
	}

	return FlowLifecycle
}

var steps = map[Flow]map[cluster.Role][]upgrade.MachinePhase{
	FlowLifecycle: {
		cluster.RoleControlPlane: {
			upgrade.MachineQueued, upgrade.MachinePullingImage, upgrade.MachineInstalling, upgrade.MachineCheckingEtcd, upgrade.MachineForfeitingLeadership,
			upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineRebooting, upgrade.MachineWaitingReady, upgrade.MachineUncordoning, upgrade.MachineDone,
		},
		cluster.RoleWorker: {
			upgrade.MachineQueued, upgrade.MachinePullingImage, upgrade.MachineInstalling,
			upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineRebooting, upgrade.MachineWaitingReady, upgrade.MachineUncordoning, upgrade.MachineDone,
		},
	},
	FlowLegacy: {
		cluster.RoleControlPlane: {
			upgrade.MachineQueued, upgrade.MachineCheckingEtcd, upgrade.MachineForfeitingLeadership,
			upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineInstalling, upgrade.MachineWaitingReady, upgrade.MachineUncordoning, upgrade.MachineDone,
		},
		cluster.RoleWorker: {
			upgrade.MachineQueued, upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineInstalling, upgrade.MachineWaitingReady, upgrade.MachineUncordoning, upgrade.MachineDone,
		},
	},
}

// HoldsForLock reports whether a machine whose upgrade is in flight, found locked as a step ends, stops before
// next, the step it would enter. It does up to and including the step that puts the new version on the machine,
// the point of no return: Installing, which stages the install on the lifecycle flow and sends the upgrade with
// its reboot on the legacy flow. Such a machine is uncordoned if it was cordoned and goes back to Queued, on its old
// version and configuration, as a lock promises. Past that point it finishes the upgrade: an install staged on the
// lifecycle flow would boot at the machine's next reboot whatever the engine does, and a machine left cordoned and
// drained to wait for an unlock would be worse than one upgraded (the same line Retarget draws).
func HoldsForLock(flow Flow, role cluster.Role, next upgrade.MachinePhase) bool {
	s := steps[flow][role]
	i := slices.Index(s, next)

	return i > 0 && i <= slices.Index(s, upgrade.MachineInstalling)
}

// Steps returns the ordered phases a machine of role goes through in flow, from Queued to Done. The slice is
// a copy; Failed is not in it, since any step may end there.
func Steps(flow Flow, role cluster.Role) []upgrade.MachinePhase {
	return slices.Clone(steps[flow][role])
}

// RebootStep is the phase whose side effect reboots the machine in flow: the engine records the boot ID before
// entering it, and a restart of the engine inside or after it never repeats it.
func RebootStep(flow Flow) upgrade.MachinePhase {
	if flow == FlowLegacy {
		return upgrade.MachineInstalling
	}

	return upgrade.MachineRebooting
}

// Next returns the phase after current for a machine of role in flow. Done, Failed and phases that are not
// part of the flow have no next phase and give an error.
func Next(flow Flow, role cluster.Role, current upgrade.MachinePhase) (upgrade.MachinePhase, error) {
	i, err := index(flow, role, current)
	if err != nil {
		return "", err
	}

	seq := steps[flow][role]
	if i == len(seq)-1 {
		return "", fmt.Errorf("phase %s of a %s in the %s flow is final", current, role, flow)
	}

	return seq[i+1], nil
}

func index(flow Flow, role cluster.Role, p upgrade.MachinePhase) (int, error) {
	seq, ok := steps[flow][role]
	if !ok {
		return 0, fmt.Errorf("unknown flow %d or role %q", flow, role)
	}

	i := slices.Index(seq, p)
	if i < 0 {
		return 0, fmt.Errorf("phase %q is not a step of a %s in the %s flow", p, role, flow)
	}

	return i, nil
}

// Retarget decides how a machine in phase current follows a change of the cluster's target made while it was
// in flight (a revert, or a new version), once its current step has finished. newTargetRunning says whether the
// machine already runs the new target.
//
// The rule: once the old target is on the machine's disk (lifecycle flow, from Installing on) or the machine is
// rebooting into it (from the reboot on), the upgrade is carried to its end with the old target; the scheduler
// then takes the machine to the new target like any other. Installing the new target over a staged one before the
// reboot is what this avoids: Talos' installer picks its slot from the bootloader's default entry, which the first
// install already flipped to the staged version, so a second install overwrites the slot of the version the
// machine runs, its fallback (grub's Config.flip in Talos). Before that, the machine changes course at once: it is
// done when it already runs the new target (uncordoned first if it was cordoned) and otherwise goes on toward the
// new target. keepOldTarget tells the caller which target next belongs to.
func Retarget(flow Flow, role cluster.Role, current upgrade.MachinePhase, newTargetRunning bool) (next upgrade.MachinePhase, keepOldTarget bool, err error) {
	i, err := index(flow, role, current)
	if err != nil {
		return "", false, err
	}

	seq := steps[flow][role]
	reboot := slices.Index(seq, RebootStep(flow))
	cordon := slices.Index(seq, upgrade.MachineCordoning)

	switch {
	case current == upgrade.MachineDone:
		return upgrade.MachineDone, false, nil
	case i >= reboot, flow == FlowLifecycle && i >= slices.Index(seq, upgrade.MachineInstalling):
		next, err := Next(flow, role, current)

		return next, true, err
	case newTargetRunning && i >= cordon:
		return upgrade.MachineUncordoning, false, nil
	case newTargetRunning:
		return upgrade.MachineDone, false, nil
	case current == upgrade.MachineQueued:
		return upgrade.MachineQueued, false, nil
	case current == upgrade.MachinePullingImage:
		return upgrade.MachinePullingImage, false, nil
	default:
		next, err := Next(flow, role, current)

		return next, false, err
	}
}

// AfterUnconfirmedInstall decides the step after WaitingReady for a machine of the lifecycle flow whose install was
// not confirmed (the engine restarted inside Installing and did not send it again) and that came back from its
// reboot on the version it ran before. The install may never have reached the machine, so the reboot changed
// nothing: this is no rollback. With the target unchanged the machine installs again, in a round of its own that
// sends the install once, and stays cordoned through it. When the target changed meanwhile the machine follows it
// as if it had not rebooted yet: done (after its uncordon) when it already runs the new target, which installs
// nothing needlessly; otherwise it starts over toward the new target. keepOldTarget tells the caller which target
// next belongs to.
func AfterUnconfirmedInstall(targetChanged, newTargetRunning bool) (next upgrade.MachinePhase, keepOldTarget bool) {
	switch {
	case !targetChanged:
		return upgrade.MachineInstalling, true
	case newTargetRunning:
		return upgrade.MachineUncordoning, false
	default:
		return upgrade.MachinePullingImage, false
	}
}
