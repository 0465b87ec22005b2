package rollout_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func TestSteps(t *testing.T) {
	for _, tc := range []struct {
		flow rollout.Flow
		role cluster.Role
		want string
	}{
		{rollout.FlowLifecycle, cluster.RoleControlPlane, "[Queued PullingImage Installing CheckingEtcd ForfeitingLeadership Cordoning Draining Rebooting WaitingReady Uncordoning Done]"},
		{rollout.FlowLifecycle, cluster.RoleWorker, "[Queued PullingImage Installing Cordoning Draining Rebooting WaitingReady Uncordoning Done]"},
		{rollout.FlowLegacy, cluster.RoleControlPlane, "[Queued CheckingEtcd ForfeitingLeadership Cordoning Draining Installing WaitingReady Uncordoning Done]"},
		{rollout.FlowLegacy, cluster.RoleWorker, "[Queued Cordoning Draining Installing WaitingReady Uncordoning Done]"},
	} {
		t.Run(tc.flow.String()+"/"+string(tc.role), func(t *testing.T) {
			seq := rollout.Steps(tc.flow, tc.role)
			if got := fmt.Sprint(seq); got != tc.want {
				t.Fatalf("Steps = %s, want %s", got, tc.want)
			}

			// Walking Next from Queued visits the same sequence and stops at Done.
			walked := []upgrade.MachinePhase{upgrade.MachineQueued}
			for p := upgrade.MachineQueued; p != upgrade.MachineDone; {
				next, err := rollout.Next(tc.flow, tc.role, p)
				if err != nil {
					t.Fatalf("Next(%s): %v", p, err)
				}

				walked, p = append(walked, next), next
			}

			if !slices.Equal(walked, seq) {
				t.Errorf("walk = %v", walked)
			}

			if _, err := rollout.Next(tc.flow, tc.role, upgrade.MachineDone); err == nil {
				t.Error("Next(Done) succeeded")
			}

			if _, err := rollout.Next(tc.flow, tc.role, upgrade.MachineFailed); err == nil {
				t.Error("Next(Failed) succeeded")
			}

			// The engine cordons and drains before the reboot step, in both flows.
			reboot := slices.Index(seq, rollout.RebootStep(tc.flow))
			if reboot < slices.Index(seq, upgrade.MachineDraining) || reboot < 0 {
				t.Errorf("reboot step %s at %d comes before draining", rollout.RebootStep(tc.flow), reboot)
			}
		})
	}

	seq := rollout.Steps(rollout.FlowLifecycle, cluster.RoleWorker)
	seq[0] = upgrade.MachineDone

	if rollout.Steps(rollout.FlowLifecycle, cluster.RoleWorker)[0] != upgrade.MachineQueued {
		t.Error("Steps returned the package's own slice")
	}

	if _, err := rollout.Next(rollout.FlowLifecycle, cluster.RoleWorker, upgrade.MachineCheckingEtcd); err == nil {
		t.Error("a worker has no etcd check")
	}

	if _, err := rollout.Next(rollout.Flow(7), cluster.RoleWorker, upgrade.MachineQueued); err == nil {
		t.Error("unknown flow accepted")
	}
}

func TestRetarget(t *testing.T) {
	for _, tc := range []struct {
		flow    rollout.Flow
		role    cluster.Role
		current upgrade.MachinePhase
		running bool
		next    upgrade.MachinePhase
		keepOld bool
	}{
		// Nothing changed on the machine yet: follow the new target at once.
		{rollout.FlowLifecycle, cluster.RoleWorker, upgrade.MachineQueued, false, upgrade.MachineQueued, false},
		{rollout.FlowLifecycle, cluster.RoleWorker, upgrade.MachinePullingImage, true, upgrade.MachineDone, false},
		{rollout.FlowLifecycle, cluster.RoleWorker, upgrade.MachinePullingImage, false, upgrade.MachinePullingImage, false},
		// The old target is on disk: never install another over it before the reboot; finish on it first.
		{rollout.FlowLifecycle, cluster.RoleControlPlane, upgrade.MachineInstalling, true, upgrade.MachineCheckingEtcd, true},
		{rollout.FlowLifecycle, cluster.RoleControlPlane, upgrade.MachineCheckingEtcd, true, upgrade.MachineForfeitingLeadership, true},
		{rollout.FlowLifecycle, cluster.RoleWorker, upgrade.MachineDraining, false, upgrade.MachineRebooting, true},
		// The reboot happened or is happening: finish on the old target first.
		{rollout.FlowLifecycle, cluster.RoleWorker, upgrade.MachineRebooting, true, upgrade.MachineWaitingReady, true},
		{rollout.FlowLifecycle, cluster.RoleControlPlane, upgrade.MachineWaitingReady, true, upgrade.MachineUncordoning, true},
		{rollout.FlowLifecycle, cluster.RoleWorker, upgrade.MachineUncordoning, true, upgrade.MachineDone, true},
		// Legacy: the disk only changes in Installing, which also reboots.
		{rollout.FlowLegacy, cluster.RoleControlPlane, upgrade.MachineCheckingEtcd, true, upgrade.MachineDone, false},
		{rollout.FlowLegacy, cluster.RoleControlPlane, upgrade.MachineCheckingEtcd, false, upgrade.MachineForfeitingLeadership, false},
		{rollout.FlowLegacy, cluster.RoleWorker, upgrade.MachineCordoning, true, upgrade.MachineUncordoning, false},
		{rollout.FlowLegacy, cluster.RoleWorker, upgrade.MachineDraining, true, upgrade.MachineUncordoning, false},
		{rollout.FlowLegacy, cluster.RoleWorker, upgrade.MachineDraining, false, upgrade.MachineInstalling, false},
		{rollout.FlowLegacy, cluster.RoleWorker, upgrade.MachineInstalling, true, upgrade.MachineWaitingReady, true},
		{rollout.FlowLegacy, cluster.RoleWorker, upgrade.MachineDone, false, upgrade.MachineDone, false},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s/running=%v", tc.flow, tc.role, tc.current, tc.running), func(t *testing.T) {
			next, keepOld, err := rollout.Retarget(tc.flow, tc.role, tc.current, tc.running)
			if err != nil {
				t.Fatal(err)
			}

			if next != tc.next || keepOld != tc.keepOld {
				t.Errorf("Retarget = %s, keepOld=%v; want %s, %v", next, keepOld, tc.next, tc.keepOld)
			}
		})
	}

	if _, _, err := rollout.Retarget(rollout.FlowLegacy, cluster.RoleWorker, upgrade.MachinePullingImage, false); err == nil {
		t.Error("Retarget accepted a phase the flow does not have")
	}
}

func TestAfterUnconfirmedInstall(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		targetChanged, running bool
		next                   upgrade.MachinePhase
		keepOld                bool
	}{
		// The install may not have reached the machine: install again, once, toward the same target.
		{"same target", false, false, upgrade.MachineInstalling, true},
		// Reverted to the version the machine runs: it is done there, without an install.
		{"reverted", true, true, upgrade.MachineUncordoning, false},
		// Another target: start over toward it.
		{"new target", true, false, upgrade.MachinePullingImage, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, keepOld := rollout.AfterUnconfirmedInstall(tc.targetChanged, tc.running)
			if next != tc.next || keepOld != tc.keepOld {
				t.Errorf("AfterUnconfirmedInstall = %s, keepOld=%v; want %s, %v", next, keepOld, tc.next, tc.keepOld)
			}

			// The next step is one the machine can take in the lifecycle flow, whatever its role.
			for _, role := range []cluster.Role{cluster.RoleWorker, cluster.RoleControlPlane} {
				if !slices.Contains(rollout.Steps(rollout.FlowLifecycle, role), next) {
					t.Errorf("%s is not a step of a %s", next, role)
				}
			}
		})
	}
}

func TestEtcdGate(t *testing.T) {
	healthy := func(id string) rollout.EtcdMember {
		return rollout.EtcdMember{ID: id, Name: "cp-" + id, Started: true, Healthy: true}
	}

	for _, tc := range []struct {
		name    string
		members []rollout.EtcdMember
		leaving string
		safe    bool
		reason  string
	}{
		{"three healthy", []rollout.EtcdMember{healthy("1"), healthy("2"), healthy("3")}, "2", true, ""},
		{"five healthy", []rollout.EtcdMember{healthy("1"), healthy("2"), healthy("3"), healthy("4"), healthy("5")}, "5", true, ""},
		{"single member", []rollout.EtcdMember{healthy("1")}, "1", true, ""},
		{
			"two members", []rollout.EtcdMember{healthy("1"), healthy("2")}, "1", false,
			"etcd has 2 members and loses quorum when either goes down; add a third control plane first",
		},
		{
			"unhealthy member", []rollout.EtcdMember{healthy("1"), {ID: "2", Name: "cp-2", Started: true}, healthy("3")}, "1", false,
			"all etcd members must be started and healthy: member 2 (cp-2) is not healthy",
		},
		{
			"member not started", []rollout.EtcdMember{healthy("1"), healthy("2"), {ID: "3"}}, "1", false,
			"all etcd members must be started and healthy: member 3 is not started",
		},
		{"leaving member unknown", []rollout.EtcdMember{healthy("1"), healthy("2"), healthy("3")}, "9", false, "member 9 is not in the etcd member list"},
		{"no members", nil, "1", false, "etcd reports no members"},
		{
			"learner does not make two voters safe", []rollout.EtcdMember{healthy("1"), healthy("2"), learner(healthy("3"))}, "1", false,
			"etcd has 2 members and loses quorum when either goes down; add a third control plane first",
		},
		{"three voters and a learner", []rollout.EtcdMember{healthy("1"), healthy("2"), healthy("3"), learner(healthy("4"))}, "4", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			safe, reason := rollout.EtcdGate(tc.members, tc.leaving)
			if safe != tc.safe || reason != tc.reason {
				t.Errorf("EtcdGate = %v, %q; want %v, %q", safe, reason, tc.safe, tc.reason)
			}
		})
	}
}

func learner(m rollout.EtcdMember) rollout.EtcdMember {
	m.Learner = true

	return m
}

func TestEtcdGateProperty(t *testing.T) {
	// For every cluster of up to 7 members with any health, the gate never lets a member go when the members
	// left would not form a quorum or when any member is unhealthy.
	for n := 1; n <= 7; n++ {
		for mask := range 1 << n {
			members := make([]rollout.EtcdMember, n)
			for i := range members {
				members[i] = rollout.EtcdMember{ID: fmt.Sprint(i), Started: true, Healthy: mask&(1<<i) == 0}
			}

			for leave := range n {
				safe, reason := rollout.EtcdGate(members, fmt.Sprint(leave))

				healthyLeft := 0
				for i, m := range members {
					if i != leave && m.Healthy {
						healthyLeft++
					}
				}

				if safe && (mask != 0 || n == 2 || (n > 1 && healthyLeft < n/2+1)) {
					t.Fatalf("n=%d mask=%b leave=%d judged safe", n, mask, leave)
				}

				if !safe && reason == "" {
					t.Fatalf("n=%d mask=%b leave=%d refused without a reason", n, mask, leave)
				}

				if !safe && mask == 0 && n != 2 {
					t.Fatalf("n=%d all healthy leave=%d refused: %s", n, leave, reason)
				}
			}
		}
	}
}

func TestEtcdCanLoseAny(t *testing.T) {
	member := func(id string, healthy bool) rollout.EtcdMember {
		return rollout.EtcdMember{ID: id, Started: true, Healthy: healthy}
	}

	for _, tc := range []struct {
		members []rollout.EtcdMember
		safe    bool
		reason  string
	}{
		{[]rollout.EtcdMember{member("1", true), member("2", true), member("3", true)}, true, ""},
		{[]rollout.EtcdMember{member("1", true), member("2", false), member("3", true)}, false, "all etcd members must be started and healthy: member 2 is not healthy"},
		{[]rollout.EtcdMember{member("1", true), member("2", true)}, false, "etcd has 2 members and loses quorum when either goes down; add a third control plane first"},
		{nil, false, "etcd reports no members"},
	} {
		if safe, reason := rollout.EtcdCanLoseAny(tc.members); safe != tc.safe || reason != tc.reason {
			t.Errorf("EtcdCanLoseAny(%v) = %v, %q; want %v, %q", tc.members, safe, reason, tc.safe, tc.reason)
		}
	}
}

// A machine locked in flight stops before its install, never after: the install is the point of no return.
func TestHoldsForLock(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		flow  rollout.Flow
		role  cluster.Role
		holds []upgrade.MachinePhase
	}{
		{rollout.FlowLifecycle, cluster.RoleWorker, []upgrade.MachinePhase{upgrade.MachinePullingImage, upgrade.MachineInstalling}},
		{rollout.FlowLifecycle, cluster.RoleControlPlane, []upgrade.MachinePhase{upgrade.MachinePullingImage, upgrade.MachineInstalling}},
		{rollout.FlowLegacy, cluster.RoleWorker, []upgrade.MachinePhase{upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineInstalling}},
	} {
		var got []upgrade.MachinePhase

		for _, p := range rollout.Steps(tc.flow, tc.role) {
			if rollout.HoldsForLock(tc.flow, tc.role, p) {
				got = append(got, p)
			}
		}

		if !slices.Equal(got, tc.holds) {
			t.Errorf("%s %s: holds before %v, want %v", tc.flow, tc.role, got, tc.holds)
		}
	}
}
