package rollout_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// fuzzVersions are the versions a fuzzed machine byte picks from; the last slot is the fuzzed string itself.
var fuzzVersions = []string{"1.11.6", "1.12.6", "1.13.4", "1.14.1", "v1.14.1", ""}

// FuzzPlanRollout plans and simulates a rollout of a cluster whose machines (one byte each: role, version,
// lock, skip, upgrade in flight) and versions come from the fuzzer: Decide and Simulate never panic, a plan they
// make ends on the target, and every machine a decision admits is one of the cluster's, unlocked.
func FuzzPlanRollout(f *testing.F) {
	f.Add("v1.14.1", "v1.11.6", "v1.34.0", "1", "", []byte{0x01, 0x00, 0x10, 0x20})
	f.Add("1.13.4", "1.14.1", "1.35.0", "50%", "1.12.6", []byte{0x01, 0x03, 0x43, 0x83})
	f.Add("v1.12.6", "v1.12.6", "", "0", "garbage", []byte{0xff, 0x7f})
	f.Add("latest", "", "v1.99.0", "101%", "1.14.1", []byte{})

	f.Fuzz(func(t *testing.T, target, current, kubernetes, parallelism, odd string, machines []byte) {
		if len(machines) > 32 {
			machines = machines[:32]
		}

		spec := &cluster.ClusterSpec{TalosVersion: current, KubernetesVersion: kubernetes, Parallelism: parallelism}
		view := rollout.ClusterView{Cluster: spec, Now: now}

		var cps []string

		for i, b := range machines {
			id := fmt.Sprintf("m-%d", i)
			role := cluster.RoleWorker

			if b&0x01 != 0 {
				role = cluster.RoleControlPlane
				cps = append(cps, id)
			}

			version := odd
			if k := int(b>>1) & 0x07; k < len(fuzzVersions) {
				version = fuzzVersions[k]
			}

			m := rollout.MachineView{ID: id, Role: role, Locked: b&0x10 != 0,
				Status: &observe.MachineStatusSpec{Cluster: "c1", TalosVersion: version, Reachable: true}}

			if b&0x20 != 0 {
				m.SkipVersion = target
			}

			if b&0x40 != 0 {
				m.Upgrade = &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineInstalling, FromVersion: version, ToVersion: odd}
			}

			view.Machines = append(view.Machines, m)
			view.Observed = append(view.Observed, id)
		}

		view.Etcd = healthyEtcd(cps...)
		policy := rollout.Policy{Catalogue: versions.Shipped()}

		next, _ := rollout.Decide(policy, view, upgrade.TalosUpgradeStatusSpec{})
		checkDecision(t, view, next)

		// A second decision from the first, as the controller makes them.
		again, _ := rollout.Decide(policy, view, next)
		checkDecision(t, view, again)

		sim, err := rollout.Simulate(policy, view, target)
		if err == nil {
			checkDecision(t, view, sim.End)
		}
	})
}

func checkDecision(t *testing.T, view rollout.ClusterView, s upgrade.TalosUpgradeStatusSpec) {
	t.Helper()

	if len(s.Plan) > 0 && !rollout.SameVersion(s.Plan[len(s.Plan)-1], s.ToVersion) {
		t.Fatalf("plan %v does not end on the target %q", s.Plan, s.ToVersion)
	}

	for _, id := range s.Admitted {
		found := false

		for _, m := range view.Machines {
			if m.ID == id {
				found = true

				if m.Locked {
					t.Fatalf("locked machine %s admitted", id)
				}
			}
		}

		if !found {
			t.Fatalf("admitted %q, which is not a machine of the cluster (%s)", id, strings.Join(view.Observed, ","))
		}
	}
}
