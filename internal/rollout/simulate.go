package rollout

import (
	"errors"
	"fmt"
	"slices"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Start is one machine starting its upgrade to one hop, in a simulated rollout.
type Start struct {
	Machine string
	Role    cluster.Role
	From    string
	To      string
}

// Simulation is what a rollout of a cluster to a target would do, as Simulate found it.
type Simulation struct {
	// Status is the cluster's upgrade status when the rollout is first decided: its plan, direction and hops.
	Status upgrade.TalosUpgradeStatusSpec
	// Starts lists every machine start, in the order the engine makes them.
	Starts []Start
	// End is the status once nothing more can start: Done, or Blocked on the locked machines.
	End upgrade.TalosUpgradeStatusSpec
}

// ErrNoPlan is wrapped by Simulate when no plan leads to the target; the simulation's Status says why.
var ErrNoPlan = errors.New("no plan to the target")

// errNoProgress stops a simulation that neither starts nor finishes a machine, which a rule change could cause.
var errNoProgress = errors.New("the simulated rollout stopped making progress")

// Simulate runs Decide the way the engine does for view's cluster going to target, assuming every machine
// upgrades cleanly, machines finish in the order they started, and etcd is healthy whenever a control plane asks;
// it changes nothing. Because the engine's scheduler takes the next machine in a fixed order, the order of starts
// does not depend on which machine in flight finishes first, so it is the order the engine will follow. The CLI's
// dry run prints it.
func Simulate(policy Policy, view ClusterView, target string) (Simulation, error) {
	spec := *view.Cluster
	spec.TalosVersion, spec.Paused = target, false
	view.Cluster = &spec
	view.Machines = slices.Clone(view.Machines)
	view.Etcd = healthy(view)

	var (
		sim      Simulation
		prev     upgrade.TalosUpgradeStatusSpec
		inFlight []int // indexes into view.Machines, in the order they started
	)

	for round := 0; ; round++ {
		if round > 4*len(view.Machines)*max(1, len(sim.Status.Plan))+8 {
			return sim, errNoProgress
		}

		next, _ := Decide(policy, view, prev)
		if round == 0 {
			sim.Status = next
		}

		if next.Phase == upgrade.PhaseBlocked && len(next.Plan) == 0 {
			return sim, fmt.Errorf("%w Talos %s: %s", ErrNoPlan, target, next.Error)
		}

		started := 0

		for _, id := range next.Admitted {
			i := slices.IndexFunc(view.Machines, func(m MachineView) bool { return m.ID == id })
			if m := view.Machines[i]; m.Upgrade != nil && m.Upgrade.Phase.InFlight() {
				continue
			}

			m := &view.Machines[i]
			from := m.Version()
			hop := MachineTarget(next.Plan, next.ToVersion, from)
			m.Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachinePullingImage, FromVersion: from, ToVersion: hop}
			sim.Starts = append(sim.Starts, Start{Machine: id, Role: m.Role, From: from, To: hop})
			inFlight = append(inFlight, i)
			started++
		}

		switch {
		case started > 0:
		case len(inFlight) > 0:
			m := &view.Machines[inFlight[0]]
			inFlight = inFlight[1:]
			done := *m.Upgrade
			done.Phase = upgrade.MachineDone
			m.Upgrade = &done
		default:
			sim.End = next

			return sim, nil
		}

		prev = next
	}
}

// healthy is the etcd a simulation assumes: every control plane's member started and healthy, led by the observed
// leader, which the plan records as the control plane that goes last (where leadership moves later does not matter).
func healthy(view ClusterView) *observe.EtcdStatusSpec {
	leader := etcdLeader(view.Etcd)
	etcd := &observe.EtcdStatusSpec{Healthy: true, CanLoseMember: true}

	for _, m := range view.Machines {
		if m.Role != cluster.RoleControlPlane {
			continue
		}

		member := observe.EtcdMember{ID: "member-" + m.ID, Machine: m.ID, Started: true, Healthy: true}
		if m.ID == leader {
			etcd.Leader = member.ID
		}

		etcd.Members = append(etcd.Members, member)
	}

	return etcd
}
