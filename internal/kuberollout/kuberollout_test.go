package kuberollout_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func TestNewPlan(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name, lowest, highest, target string
		dir                           kuberollout.Direction
		hops                          []string
		err                           string
	}{
		{name: "next minor", lowest: "v1.35.2", highest: "v1.35.2", target: "1.36.2", dir: kuberollout.Upgrade, hops: []string{"1.36.2"}},
		{name: "patch", lowest: "1.36.0", highest: "1.36.0", target: "v1.36.2", dir: kuberollout.Upgrade, hops: []string{"1.36.2"}},
		{name: "chain", lowest: "1.35.2", highest: "1.35.2", target: "1.37.2", dir: kuberollout.Upgrade, hops: []string{"1.36.2", "1.37.2"}},
		{name: "nothing to do", lowest: "1.36.2", highest: "1.36.2", target: "1.36.2", dir: kuberollout.Upgrade},
		{name: "mixed cluster goes from its lowest", lowest: "1.35.2", highest: "1.36.2", target: "1.36.2", dir: kuberollout.Upgrade, hops: []string{"1.36.2"}},
		{name: "downgrade", lowest: "1.37.2", highest: "1.37.2", target: "1.35.2", dir: kuberollout.Downgrade, hops: []string{"1.36.2", "1.35.2"}},
		{name: "revert half-way", lowest: "1.35.2", highest: "1.36.2", target: "1.35.2", dir: kuberollout.Downgrade, hops: []string{"1.35.2"}},
		{name: "no release to go through", lowest: "1.35.2", highest: "1.35.2", target: "1.37.2", err: "no known Kubernetes release of 1.36"},
		{name: "bad version", lowest: "x", highest: "1.35.2", target: "1.36.2", err: `"x" is not a Kubernetes version`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			releases := kuberollout.DefaultReleases
			if strings.Contains(tc.name, "no release") {
				releases = []string{"1.35.2", "1.37.2"}
			}

			p, err := kuberollout.NewPlan(tc.lowest, tc.highest, tc.target, releases)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}

				return
			}

			if err != nil {
				t.Fatal(err)
			}

			if p.Direction != tc.dir || !slices.Equal(p.Hops, tc.hops) {
				t.Fatalf("plan %+v, want %s over %v", p, tc.dir, tc.hops)
			}
		})
	}
}

func TestCheckTalosNamesNodeVersionAndRange(t *testing.T) {
	t.Parallel()

	nodes := []kuberollout.TalosNode{{Machine: "cp-1", Talos: "v1.14.1"}, {Machine: "w-1", Talos: "v1.12.6"}}

	if err := kuberollout.CheckTalos(nodes, []string{"1.35.2"}); err != nil {
		t.Fatalf("1.35 runs on Talos 1.12 and 1.14: %v", err)
	}

	err := kuberollout.CheckTalos(nodes, []string{"1.36.2", "1.37.2"})
	if err == nil {
		t.Fatal("Talos 1.12 was accepted for Kubernetes 1.36")
	}

	for _, want := range []string{"w-1", "v1.12.6", "1.30 to 1.35"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}

	if strings.Contains(err.Error(), "cp-1") {
		t.Errorf("error %q names a node that supports the plan", err)
	}
}

func TestStepsOrder(t *testing.T) {
	t.Parallel()

	machines := []kuberollout.Machine{
		{ID: "w-1", Role: cluster.RoleWorker}, {ID: "cp-2", Role: cluster.RoleControlPlane}, {ID: "cp-1", Role: cluster.RoleControlPlane},
	}

	names := func(steps []upgrade.KubernetesUpgradeStep) []string {
		out := make([]string, 0, len(steps))
		for _, s := range steps {
			out = append(out, strings.TrimSuffix(string(s.Kind)+" "+s.Machine, " "))
		}

		return out
	}

	up := kuberollout.Steps(kuberollout.Plan{Direction: kuberollout.Upgrade, Hops: []string{"1.36.2"}}, machines)
	want := []string{
		"pre-checks", "pre-pull cp-1", "pre-pull cp-2", "pre-pull w-1",
		"kube-apiserver cp-1", "kube-controller-manager cp-1", "kube-scheduler cp-1",
		"kube-apiserver cp-2", "kube-controller-manager cp-2", "kube-scheduler cp-2",
		"kube-proxy", "kubelet cp-1", "kubelet cp-2", "kubelet w-1",
	}

	if got := names(up); !slices.Equal(got, want) {
		t.Fatalf("upgrade steps\n got %v\nwant %v", got, want)
	}

	down := kuberollout.Steps(kuberollout.Plan{Direction: kuberollout.Downgrade, Hops: []string{"1.35.2"}}, machines)
	wantDown := append(slices.Clone(want[:4]), "kubelet w-1", "kubelet cp-2", "kubelet cp-1", "kube-proxy",
		"kube-scheduler cp-2", "kube-controller-manager cp-2", "kube-apiserver cp-2",
		"kube-scheduler cp-1", "kube-controller-manager cp-1", "kube-apiserver cp-1")

	if got := names(down); !slices.Equal(got, wantDown) {
		t.Fatalf("downgrade steps\n got %v\nwant %v", got, wantDown)
	}

	chain := kuberollout.Steps(kuberollout.Plan{Direction: kuberollout.Upgrade, Hops: []string{"1.36.2", "1.37.2"}}, machines)
	if len(chain) != 2*len(want) || chain[0].Version != "1.36.2" || chain[len(want)].Version != "1.37.2" || chain[len(want)].Kind != upgrade.StepPreChecks {
		t.Fatalf("a chain is not two full upgrades in order: %v", names(chain))
	}
}

func TestRetag(t *testing.T) {
	t.Parallel()

	for in, want := range map[string]string{
		"registry.k8s.io/kube-apiserver:v1.35.2":       "registry.k8s.io/kube-apiserver:v1.36.2",
		"ghcr.io/siderolabs/kubelet:v1.35.2-fat":       "ghcr.io/siderolabs/kubelet:v1.36.2-fat",
		"localhost:5000/kube-proxy:v1.35.2@sha256:abc": "localhost:5000/kube-proxy:v1.36.2",
		"localhost:5000/kube-scheduler":                "localhost:5000/kube-scheduler:v1.36.2",
	} {
		if got := kuberollout.Retag(in, "v1.36.2"); got != want {
			t.Errorf("Retag(%s) = %s, want %s", in, got, want)
		}
	}

	if got := kuberollout.ImageVersion("ghcr.io/siderolabs/kubelet:v1.35.2-fat"); got != "1.35.2" {
		t.Errorf("ImageVersion = %q", got)
	}
}

// fleet is a view of 2 control planes and 3 workers on Talos 1.14.1 and Kubernetes from.
func fleet(from, to string) kuberollout.View {
	c := &cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: to, Parallelism: "2"}
	view := kuberollout.View{ClusterView: rollout.ClusterView{Cluster: c, Now: time.Unix(1000, 0)}, Talos: &upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseDone, YieldsTo: kuberollout.Canonical(to)}}

	for _, m := range []struct {
		id   string
		role cluster.Role
	}{{"cp-1", cluster.RoleControlPlane}, {"cp-2", cluster.RoleControlPlane}, {"w-1", cluster.RoleWorker}, {"w-2", cluster.RoleWorker}, {"w-3", cluster.RoleWorker}} {
		view.Machines = append(view.Machines, rollout.MachineView{ID: m.id, Role: m.role, Status: &observe.MachineStatusSpec{TalosVersion: "v1.14.1", KubeletVersion: from}})
		view.Observed = append(view.Observed, m.id)
	}

	return view
}

func running(s upgrade.KubernetesUpgradeStatusSpec) []string {
	var out []string

	for _, st := range s.Steps {
		if st.State == upgrade.StepRunning {
			out = append(out, strings.TrimSuffix(string(st.Kind)+" "+st.Machine, " "))
		}
	}

	return out
}

// finish marks the running steps Done, as their executors would.
func finish(s upgrade.KubernetesUpgradeStatusSpec) upgrade.KubernetesUpgradeStatusSpec {
	for i := range s.Steps {
		if s.Steps[i].State == upgrade.StepRunning {
			s.Steps[i].State = upgrade.StepDone
		}
	}

	return s
}

func TestDecideWalksTheSteps(t *testing.T) {
	t.Parallel()

	view := fleet("v1.35.2", "v1.36.2")
	view.Machines[4].Locked = true
	policy := kuberollout.Policy{PullConcurrency: 2}

	s := kuberollout.Decide(policy, view, upgrade.KubernetesUpgradeStatusSpec{})
	if s.Phase != upgrade.PhaseUpgrading || s.Total != 18 || s.Direction != "upgrade" || !slices.Equal(running(s), []string{"pre-checks"}) {
		t.Fatalf("first decision: %s %d steps, running %v", s.Phase, s.Total, running(s))
	}

	if again := kuberollout.Decide(policy, view, s); !slices.Equal(running(again), running(s)) {
		t.Fatalf("a running step was admitted twice or dropped: %v", running(again))
	}

	var rounds [][]string

	for range 20 {
		s = kuberollout.Decide(policy, view, finish(s))
		if r := running(s); len(r) > 0 {
			rounds = append(rounds, r)
		} else {
			break
		}
	}

	want := [][]string{
		{"pre-pull cp-1", "pre-pull cp-2"}, {"pre-pull w-1", "pre-pull w-2"}, // w-3 locked: its pre-pull skipped
		{"kube-apiserver cp-1"}, {"kube-controller-manager cp-1"}, {"kube-scheduler cp-1"},
		{"kube-apiserver cp-2"}, {"kube-controller-manager cp-2"}, {"kube-scheduler cp-2"},
		{"kube-proxy"}, {"kubelet cp-1"}, {"kubelet cp-2"}, {"kubelet w-1", "kubelet w-2"},
	}

	if len(rounds) != len(want) {
		t.Fatalf("rounds %v, want %v", rounds, want)
	}

	for i := range want {
		if !slices.Equal(rounds[i], want[i]) {
			t.Fatalf("round %d: %v, want %v", i, rounds[i], want[i])
		}
	}

	prePull := s.Steps[slices.IndexFunc(s.Steps, func(st upgrade.KubernetesUpgradeStep) bool {
		return st.Kind == upgrade.StepPrePull && st.Machine == "w-3"
	})]
	if prePull.State != upgrade.StepSkipped || !strings.Contains(prePull.Error, "locked") {
		t.Fatalf("the locked worker's pre-pull: %s %q, want Skipped because locked", prePull.State, prePull.Error)
	}

	if s.Phase != upgrade.PhaseBlocked || !slices.Equal(s.WaitingOnLock, []string{"w-3"}) || !strings.Contains(s.Error, "w-3") {
		t.Fatalf("with only the locked worker left: %s %q, waiting on %v", s.Phase, s.Error, s.WaitingOnLock)
	}

	view.Machines[4].Locked = false
	s = finish(kuberollout.Decide(policy, view, s))

	if s = kuberollout.Decide(policy, view, s); s.Phase != upgrade.PhaseDone || s.Done != s.Total || s.CurrentStep != s.Total {
		t.Fatalf("after the unlock: %s %d/%d", s.Phase, s.Done, s.Total)
	}
}

func TestDecideRefusesWhatTalosDoesNotSupport(t *testing.T) {
	t.Parallel()

	view := fleet("v1.35.2", "v1.37.2")
	view.Machines[3].Status.TalosVersion = "v1.13.2"

	s := kuberollout.Decide(kuberollout.Policy{}, view, upgrade.KubernetesUpgradeStatusSpec{})
	if s.Phase != upgrade.PhaseBlocked || len(s.Steps) != 0 || !strings.Contains(s.Error, "w-2 runs Talos v1.13.2") || !strings.Contains(s.Error, "1.31 to 1.36") {
		t.Fatalf("%s %q with %d steps", s.Phase, s.Error, len(s.Steps))
	}

	if kuberollout.Claims(&s) {
		t.Fatal("a refused upgrade holds the cluster")
	}

	if slices.Contains(s.AvailableVersions, "1.37.2") || !slices.Contains(s.AvailableVersions, "1.36.2") {
		t.Fatalf("available %v: 1.36 runs on every node, 1.37 does not", s.AvailableVersions)
	}
}

func TestDecideWaitsForTalos(t *testing.T) {
	t.Parallel()

	view := fleet("v1.35.2", "v1.36.2")
	view.Talos = &upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseUpgrading, ToVersion: "v1.14.2", Current: []string{"cp-1"}, Turn: string(rollout.RolloutTalos)}

	s := kuberollout.Decide(kuberollout.Policy{}, view, upgrade.KubernetesUpgradeStatusSpec{})
	if s.Phase != upgrade.PhasePending || len(running(s)) != 0 || !strings.Contains(s.Reason, "Talos upgrade to v1.14.2") {
		t.Fatalf("%s %q, running %v", s.Phase, s.Reason, running(s))
	}

	if !kuberollout.Claims(&s) {
		t.Fatal("a waiting upgrade does not claim the cluster, so the Talos rollout would never yield")
	}

	// The turn, given by the decision of the Talos rollout (rollout.DecideCluster), from this upgrade's claim.
	policy := rollout.Policy{Catalogue: versions.Shipped()}
	turn := func(machines []rollout.MachineView, prev upgrade.TalosUpgradeStatusSpec) upgrade.TalosUpgradeStatusSpec {
		v := view.ClusterView
		v.Machines = machines

		return rollout.DecideCluster(policy, v, prev, upgrade.ConfigRolloutStatusSpec{}, kuberollout.ClaimOf(&s), kuberollout.Target(&s)).Talos
	}

	machines := slices.Clone(view.Machines)
	machines[0].Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineRebooting}

	if got := turn(machines, *view.Talos); got.YieldsTo != "" || got.Turn != string(rollout.RolloutTalos) {
		t.Fatalf("the turn leaves the Talos rollout with a machine in flight: %q %q", got.Turn, got.YieldsTo)
	}

	machines[0].Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDone, ToVersion: "v1.14.1"}

	if got := turn(machines, upgrade.TalosUpgradeStatusSpec{}); got.YieldsTo != "1.36.2" || got.Turn != string(rollout.RolloutKubernetes) {
		t.Fatalf("a Talos rollout with nothing to do leaves the turn to %q %q", got.Turn, got.YieldsTo)
	}

	to := turn(machines, upgrade.TalosUpgradeStatusSpec{}).YieldsTo

	view.Talos = &upgrade.TalosUpgradeStatusSpec{YieldsTo: to, Turn: string(rollout.RolloutKubernetes)}
	if s = kuberollout.Decide(kuberollout.Policy{}, view, s); !slices.Equal(running(s), []string{"pre-checks"}) {
		t.Fatalf("after the yield: %s %q, running %v", s.Phase, s.Reason, running(s))
	}
}

func TestDecideRetryAndSkippedChecks(t *testing.T) {
	t.Parallel()

	view := fleet("v1.35.2", "v1.36.2")
	s := kuberollout.Decide(kuberollout.Policy{}, view, upgrade.KubernetesUpgradeStatusSpec{})
	s.Steps[0].State, s.Steps[0].Error = upgrade.StepFailed, "removed-feature-gates: cp-1 kube-apiserver Foo"

	if s = kuberollout.Decide(kuberollout.Policy{}, view, s); s.Phase != upgrade.PhaseBlocked || !strings.Contains(s.Error, "Foo") || len(running(s)) != 0 {
		t.Fatalf("failed pre-check: %s %q", s.Phase, s.Error)
	}

	view.Cluster.SkipKubernetesChecks = []string{"removed-feature-gates"}
	if s = kuberollout.Decide(kuberollout.Policy{}, view, s); !slices.Equal(running(s), []string{"pre-checks"}) || !slices.Equal(s.SkippedChecks, view.Cluster.SkipKubernetesChecks) {
		t.Fatalf("a new skip does not run the checks again: %v, skipped %v", running(s), s.SkippedChecks)
	}

	s = finish(s)
	s = kuberollout.Decide(kuberollout.Policy{}, view, s)
	s.Steps[1].State, s.Steps[1].Error = upgrade.StepFailed, "pulling registry.k8s.io/kube-apiserver:v1.36.2 on cp-1: not found"

	if s = kuberollout.Decide(kuberollout.Policy{}, view, s); s.Phase != upgrade.PhaseFailed || !strings.Contains(s.Error, "pre-pull on cp-1") {
		t.Fatalf("failed pull: %s %q", s.Phase, s.Error)
	}

	view.Retry = "1.36.2/0"
	if again := kuberollout.Decide(kuberollout.Policy{}, view, s); again.Phase != upgrade.PhaseFailed {
		t.Fatal("a stale retry resumed the upgrade")
	}

	view.Retry = s.RetryValue()
	if s = kuberollout.Decide(kuberollout.Policy{}, view, s); s.Attempt != 2 || s.Steps[1].State != upgrade.StepRunning || s.Steps[0].State != upgrade.StepDone {
		t.Fatalf("retry: attempt %d, steps %v", s.Attempt, s.Steps[:2])
	}
}

func TestDecideRevertsStepByStep(t *testing.T) {
	t.Parallel()

	view := fleet("v1.35.2", "v1.36.2")
	s := kuberollout.Decide(kuberollout.Policy{}, view, upgrade.KubernetesUpgradeStatusSpec{})

	for !slices.Equal(running(s), []string{"kube-apiserver cp-2"}) {
		s = kuberollout.Decide(kuberollout.Policy{}, view, finish(s))
	}

	view.Cluster.KubernetesVersion = "v1.35.2"
	if held := kuberollout.Decide(kuberollout.Policy{}, view, s); held.ToVersion != "1.36.2" || !strings.Contains(held.Reason, "waits for step kube-apiserver on cp-2") {
		t.Fatalf("a revert replaced the plan under a running step: %s %q", held.ToVersion, held.Reason)
	}

	s = finish(s)
	view.Talos.YieldsTo = "1.35.2"
	s = kuberollout.Decide(kuberollout.Policy{}, view, s)

	if !s.Reverting || s.Phase != upgrade.PhaseReverting || s.Direction != "downgrade" || s.FromVersion != "1.36.2" || s.ToVersion != "1.35.2" {
		t.Fatalf("revert: %+v", s)
	}

	var order []string

	for range 30 {
		s = kuberollout.Decide(kuberollout.Policy{}, view, finish(s))
		order = append(order, running(s)...)
	}

	i := slices.Index(order, "kube-proxy")
	if i < 0 || slices.Index(order, "kubelet w-1") > i || slices.Index(order, "kube-apiserver cp-1") < i ||
		slices.Index(order, "kube-apiserver cp-2") > slices.Index(order, "kube-apiserver cp-1") {
		t.Fatalf("revert order: %v", order)
	}

	if s.Phase != upgrade.PhaseDone || s.Reverting {
		t.Fatalf("revert ends %s (reverting %v)", s.Phase, s.Reverting)
	}
}

// Worker kubelets unlocked after waiting on a lock run next, in the order they were unlocked, not in plan order.
func TestDecideRunsUnlockedKubeletsInUnlockOrder(t *testing.T) {
	t.Parallel()

	view := fleet("v1.35.2", "v1.36.2")
	view.Cluster.Parallelism = "1"
	view.Machines[2].Locked, view.Machines[3].Locked = true, true // w-1, w-2
	policy := kuberollout.Policy{PullConcurrency: 8}

	s := kuberollout.Decide(policy, view, upgrade.KubernetesUpgradeStatusSpec{})
	for range 20 {
		if slices.Equal(running(s), []string{"kubelet w-3"}) {
			break
		}

		s = kuberollout.Decide(policy, view, finish(s))
	}

	if !slices.Equal(running(s), []string{"kubelet w-3"}) || !slices.Equal(s.WaitingOnLock, []string{"w-1", "w-2"}) {
		t.Fatalf("the unlocked worker's kubelet runs, the locked ones wait: running %v, waiting %v", running(s), s.WaitingOnLock)
	}

	// w-2 is unlocked, then w-1, while w-3's kubelet holds the only slot.
	view.Machines[3].Locked, view.Machines[3].UnlockedAt = false, view.Now.Add(time.Second)
	view.Machines[2].Locked, view.Machines[2].UnlockedAt = false, view.Now.Add(2*time.Second)

	if s = kuberollout.Decide(policy, view, s); !slices.Equal(s.Unlocked, []string{"w-2", "w-1"}) {
		t.Fatalf("unlocked, in unlock order: %v", s.Unlocked)
	}

	if s = kuberollout.Decide(policy, view, finish(s)); !slices.Equal(running(s), []string{"kubelet w-2"}) || !slices.Equal(s.Unlocked, []string{"w-1"}) {
		t.Fatalf("the first unlocked goes first: running %v, unlocked %v", running(s), s.Unlocked)
	}

	if s = kuberollout.Decide(policy, view, finish(s)); !slices.Equal(running(s), []string{"kubelet w-1"}) {
		t.Fatalf("then the second: running %v", running(s))
	}
}

// The upgrade's claim on the turn: busy while its last decision was made with the turn or a step runs, wanting it
// only while it has steps it would run now.
func TestClaimOf(t *testing.T) {
	t.Parallel()

	view := fleet("v1.35.2", "v1.36.2")
	s := kuberollout.Decide(kuberollout.Policy{}, view, upgrade.KubernetesUpgradeStatusSpec{})

	if c := kuberollout.ClaimOf(&s); s.Granted != "1.36.2" || !c.Busy || !c.Wants {
		t.Fatalf("decided with the turn: granted %q, claim %+v", s.Granted, c)
	}

	view.Talos = &upgrade.TalosUpgradeStatusSpec{Phase: upgrade.PhaseDone}
	s = finish(s)
	s = kuberollout.Decide(kuberollout.Policy{}, view, s)

	if c := kuberollout.ClaimOf(&s); s.Granted != "" || c.Busy || !c.Wants {
		t.Fatalf("decided without the turn, steps left: granted %q, claim %+v", s.Granted, c)
	}

	// Everything done but a locked worker's kubelet: Blocked without the turn too, so it does not ask for it again.
	view.Machines[2].Locked = true

	for i, st := range s.Steps {
		if st.Kind != upgrade.StepKubelet || st.Machine != "w-1" {
			s.Steps[i].State = upgrade.StepDone
		}
	}

	s = kuberollout.Decide(kuberollout.Policy{}, view, s)
	if c := kuberollout.ClaimOf(&s); s.Phase != upgrade.PhaseBlocked || !slices.Equal(s.WaitingOnLock, []string{"w-1"}) || c.Wants || c.Busy {
		t.Fatalf("only a locked kubelet left, without the turn: %s %v, claim %+v", s.Phase, s.WaitingOnLock, c)
	}
}
