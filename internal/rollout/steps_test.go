package rollout_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/upshift-io/upshift/internal/rollout"
)

func TestSteps(t *testing.T) {
	for _, tc := range []struct {
		flow rollout.Flow
		role rollout.Role
		want string
	}{
		{rollout.FlowLifecycle, rollout.ControlPlane, "[Queued PullingImage Installing CheckingEtcd ForfeitingLeadership Cordoning Draining Rebooting WaitingReady Uncordoning Done]"},
		{rollout.FlowLifecycle, rollout.Worker, "[Queued PullingImage Installing Cordoning Draining Rebooting WaitingReady Uncordoning Done]"},
		{rollout.FlowLegacy, rollout.ControlPlane, "[Queued CheckingEtcd ForfeitingLeadership Cordoning Draining Installing WaitingReady Uncordoning Done]"},
		{rollout.FlowLegacy, rollout.Worker, "[Queued Cordoning Draining Installing WaitingReady Uncordoning Done]"},
	} {
		t.Run(tc.flow.String()+"/"+tc.role.String(), func(t *testing.T) {
			seq := rollout.Steps(tc.flow, tc.role)
			if got := fmt.Sprint(seq); got != tc.want {
				t.Fatalf("Steps = %s, want %s", got, tc.want)
			}

			// Walking Next from Queued visits the same sequence and stops at Done.
			walked := []rollout.Phase{rollout.PhaseQueued}
			for p := rollout.PhaseQueued; p != rollout.PhaseDone; {
				next, err := rollout.Next(tc.flow, tc.role, p)
				if err != nil {
					t.Fatalf("Next(%s): %v", p, err)
				}

				walked, p = append(walked, next), next
			}

			if !slices.Equal(walked, seq) {
				t.Errorf("walk = %v", walked)
			}

			if _, err := rollout.Next(tc.flow, tc.role, rollout.PhaseDone); err == nil {
				t.Error("Next(Done) succeeded")
			}

			if _, err := rollout.Next(tc.flow, tc.role, rollout.PhaseFailed); err == nil {
				t.Error("Next(Failed) succeeded")
			}

			// The engine cordons and drains before the reboot step, in both flows.
			reboot := slices.Index(seq, rollout.RebootStep(tc.flow))
			if reboot < slices.Index(seq, rollout.PhaseDraining) || reboot < 0 {
				t.Errorf("reboot step %s at %d comes before draining", rollout.RebootStep(tc.flow), reboot)
			}
		})
	}

	seq := rollout.Steps(rollout.FlowLifecycle, rollout.Worker)
	seq[0] = rollout.PhaseDone

	if rollout.Steps(rollout.FlowLifecycle, rollout.Worker)[0] != rollout.PhaseQueued {
		t.Error("Steps returned the package's own slice")
	}

	if _, err := rollout.Next(rollout.FlowLifecycle, rollout.Worker, rollout.PhaseCheckingEtcd); err == nil {
		t.Error("a worker has no etcd check")
	}

	if _, err := rollout.Next(rollout.Flow(7), rollout.Worker, rollout.PhaseQueued); err == nil {
		t.Error("unknown flow accepted")
	}
}

func TestRetarget(t *testing.T) {
	for _, tc := range []struct {
		flow    rollout.Flow
		role    rollout.Role
		current rollout.Phase
		running bool
		next    rollout.Phase
		keepOld bool
	}{
		// Nothing changed on the machine yet: follow the new target at once.
		{rollout.FlowLifecycle, rollout.Worker, rollout.PhaseQueued, false, rollout.PhaseQueued, false},
		{rollout.FlowLifecycle, rollout.Worker, rollout.PhasePullingImage, true, rollout.PhaseDone, false},
		{rollout.FlowLifecycle, rollout.Worker, rollout.PhasePullingImage, false, rollout.PhasePullingImage, false},
		// The old target is on disk: never install another over it before the reboot; finish on it first.
		{rollout.FlowLifecycle, rollout.ControlPlane, rollout.PhaseInstalling, true, rollout.PhaseCheckingEtcd, true},
		{rollout.FlowLifecycle, rollout.ControlPlane, rollout.PhaseCheckingEtcd, true, rollout.PhaseForfeitingLeadership, true},
		{rollout.FlowLifecycle, rollout.Worker, rollout.PhaseDraining, false, rollout.PhaseRebooting, true},
		// The reboot happened or is happening: finish on the old target first.
		{rollout.FlowLifecycle, rollout.Worker, rollout.PhaseRebooting, true, rollout.PhaseWaitingReady, true},
		{rollout.FlowLifecycle, rollout.ControlPlane, rollout.PhaseWaitingReady, true, rollout.PhaseUncordoning, true},
		{rollout.FlowLifecycle, rollout.Worker, rollout.PhaseUncordoning, true, rollout.PhaseDone, true},
		// Legacy: the disk only changes in Installing, which also reboots.
		{rollout.FlowLegacy, rollout.ControlPlane, rollout.PhaseCheckingEtcd, true, rollout.PhaseDone, false},
		{rollout.FlowLegacy, rollout.ControlPlane, rollout.PhaseCheckingEtcd, false, rollout.PhaseForfeitingLeadership, false},
		{rollout.FlowLegacy, rollout.Worker, rollout.PhaseCordoning, true, rollout.PhaseUncordoning, false},
		{rollout.FlowLegacy, rollout.Worker, rollout.PhaseDraining, true, rollout.PhaseUncordoning, false},
		{rollout.FlowLegacy, rollout.Worker, rollout.PhaseDraining, false, rollout.PhaseInstalling, false},
		{rollout.FlowLegacy, rollout.Worker, rollout.PhaseInstalling, true, rollout.PhaseWaitingReady, true},
		{rollout.FlowLegacy, rollout.Worker, rollout.PhaseDone, false, rollout.PhaseDone, false},
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

	if _, _, err := rollout.Retarget(rollout.FlowLegacy, rollout.Worker, rollout.PhasePullingImage, false); err == nil {
		t.Error("Retarget accepted a phase the flow does not have")
	}
}

func TestAfterUnconfirmedInstall(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		targetChanged, running bool
		next                   rollout.Phase
		keepOld                bool
	}{
		// The install may not have reached the machine: install again, once, toward the same target.
		{"same target", false, false, rollout.PhaseInstalling, true},
		// Reverted to the version the machine runs: it is done there, without an install.
		{"reverted", true, true, rollout.PhaseUncordoning, false},
		// Another target: start over toward it.
		{"new target", true, false, rollout.PhasePullingImage, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, keepOld := rollout.AfterUnconfirmedInstall(tc.targetChanged, tc.running)
			if next != tc.next || keepOld != tc.keepOld {
				t.Errorf("AfterUnconfirmedInstall = %s, keepOld=%v; want %s, %v", next, keepOld, tc.next, tc.keepOld)
			}

			// The next step is one the machine can take in the lifecycle flow, whatever its role.
			for _, role := range []rollout.Role{rollout.Worker, rollout.ControlPlane} {
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
