package rollout

import (
	"fmt"
	"slices"
	"strings"

	"github.com/upshift-io/upshift/resources/observe"
)

// EtcdMember is what the etcd gate needs to know about one member of a cluster's etcd.
type EtcdMember struct {
	// ID identifies the member (Talos reports it as a hex string).
	ID string
	// Name is the member's name (its control plane's hostname), used in reasons.
	Name string
	// Started is false for a member that was added but never started (it has no name yet in the member list).
	Started bool
	// Healthy is true when the member answered its status without errors.
	Healthy bool
	// Learner is true for a non-voting member, which does not count toward quorum.
	Learner bool
}

func (m EtcdMember) label() string {
	if m.Name == "" {
		return m.ID
	}

	return fmt.Sprintf("%s (%s)", m.ID, m.Name)
}

// EtcdGate decides whether the member leaving may go down now for its control plane's reboot: every member
// must be started and healthy, and the voting members left must still form a quorum. A cluster of exactly two
// voting members is refused (losing either loses quorum; Talos refuses it too); a single-member cluster is
// allowed, since its one control plane cannot upgrade any other way. reason says why when safe is false.
func EtcdGate(members []EtcdMember, leaving string) (safe bool, reason string) {
	if len(members) == 0 {
		return false, "etcd reports no members"
	}

	var (
		voters, healthyVoters int
		found, leavingVotes   bool
		problems              []string
	)

	for _, m := range members {
		if m.ID == leaving {
			found, leavingVotes = true, !m.Learner
		}

		switch {
		case !m.Started:
			problems = append(problems, fmt.Sprintf("member %s is not started", m.label()))
		case !m.Healthy:
			problems = append(problems, fmt.Sprintf("member %s is not healthy", m.label()))
		}

		if !m.Learner {
			voters++

			if m.Started && m.Healthy {
				healthyVoters++
			}
		}
	}

	if !found {
		return false, fmt.Sprintf("member %s is not in the etcd member list", leaving)
	}

	if len(problems) > 0 {
		return false, "all etcd members must be started and healthy: " + strings.Join(problems, "; ")
	}

	if voters == 2 {
		return false, "etcd has 2 members and loses quorum when either goes down; add a third control plane first"
	}

	if voters == 1 {
		return true, ""
	}

	left, quorum := healthyVoters, voters/2+1
	if leavingVotes {
		left--
	}

	if left < quorum {
		return false, fmt.Sprintf("without member %s only %d of %d etcd members remain, quorum needs %d", leaving, left, voters, quorum)
	}

	return true, ""
}

// EtcdCanLoseAny says whether any one voting member may go down now (what EtcdStatus shows per cluster), with
// the reason when not: the gate of the first voting member it refuses.
func EtcdCanLoseAny(members []EtcdMember) (safe bool, reason string) {
	if len(members) == 0 {
		return EtcdGate(members, "")
	}

	for _, m := range members {
		if m.Learner {
			continue
		}

		if safe, reason := EtcdGate(members, m.ID); !safe {
			return false, reason
		}
	}

	return true, ""
}

// membersOf turns an observed etcd into the gate's members.
func membersOf(spec observe.EtcdStatusSpec) []EtcdMember {
	members := make([]EtcdMember, 0, len(spec.Members))

	for _, m := range spec.Members {
		members = append(members, EtcdMember{ID: m.ID, Name: m.Machine, Started: m.Started, Healthy: m.Healthy, Learner: m.Learner})
	}

	return members
}

// ObservedCanLoseAny is EtcdCanLoseAny for an observed etcd: what EtcdStatus reports as CanLoseMember.
func ObservedCanLoseAny(spec observe.EtcdStatusSpec) (safe bool, reason string) {
	return EtcdCanLoseAny(membersOf(spec))
}

// ControlPlaneMayLeave is the etcd gate for the control plane machine given the cluster's observed etcd (nil
// before the first observation): the scheduler asks it before admitting the machine and the machine's
// CheckingEtcd step asks it again, afresh, before it leaves.
func ControlPlaneMayLeave(etcd *observe.EtcdStatusSpec, machine string) (safe bool, reason string) {
	switch {
	case etcd == nil:
		return false, "etcd has not been observed yet"
	case etcd.Error != "":
		return false, "etcd could not be observed: " + etcd.Error
	}

	i := slices.IndexFunc(etcd.Members, func(m observe.EtcdMember) bool { return m.Machine == machine })
	if i < 0 {
		return false, fmt.Sprintf("machine %s has no etcd member", machine)
	}

	return EtcdGate(membersOf(*etcd), etcd.Members[i].ID)
}
