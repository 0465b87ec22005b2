package adopt_test

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/upshift-io/upshift/internal/adopt"
	"github.com/upshift-io/upshift/resources/cluster"
)

func changes(p adopt.Plan) []string {
	var out []string
	for _, c := range p.Changes {
		out = append(out, c.String())
	}

	return out
}

func machineIDs(p adopt.Plan) []string {
	var out []string
	for _, m := range p.Machines {
		out = append(out, m.Metadata().ID())
	}

	return out
}

func TestPlanNewClusterWantsWhatItRuns(t *testing.T) {
	res := adopt.Result{
		Machines: []adopt.Machine{
			{Name: "cp-1", Role: cluster.RoleControlPlane, Endpoint: "10.5.0.2:50000", TalosVersion: "v1.14.1"},
			{Name: "w-1", Role: cluster.RoleWorker, Endpoint: "10.5.0.3:50000", TalosVersion: "v1.14.1"},
		},
		TalosVersion: "v1.14.1", KubernetesVersion: "v1.36.3", Kubeconfig: []byte("kc"),
	}

	p := adopt.NewPlan("prod", res, []byte("tc"), adopt.Current{})

	spec := p.Cluster.TypedSpec()
	if !p.New || p.Cluster.Metadata().ID() != "prod" || spec.TalosVersion != "v1.14.1" || spec.KubernetesVersion != "v1.36.3" || spec.Paused {
		t.Errorf("cluster %s %+v (new %v)", p.Cluster.Metadata().ID(), spec, p.New)
	}

	if creds := p.Credentials.TypedSpec(); creds.Talosconfig != "tc" || creds.Kubeconfig != "kc" || p.Credentials.Metadata().ID() != "prod" {
		t.Errorf("credentials %+v", creds)
	}

	want := []string{
		"added machine cp-1 (controlplane, 10.5.0.2:50000, Talos v1.14.1)",
		"added machine w-1 (worker, 10.5.0.3:50000, Talos v1.14.1)",
	}
	if got := changes(p); !slices.Equal(got, want) {
		t.Errorf("changes %q, want %q", got, want)
	}

	for _, m := range p.Machines {
		if label, _ := m.Metadata().Labels().Get(cluster.LabelCluster); m.TypedSpec().Cluster != "prod" || label != "prod" || m.TypedSpec().InstallerImage != "" {
			t.Errorf("machine %s: %+v, cluster label %q", m.Metadata().ID(), m.TypedSpec(), label)
		}
	}

	res.MixedTalos = true
	if p = adopt.NewPlan("prod", res, nil, adopt.Current{}); !p.Cluster.TypedSpec().Paused {
		t.Error("a cluster running mixed versions is not imported paused")
	}
}

func TestPlanReimportFollowsMembers(t *testing.T) {
	current := adopt.Current{
		Cluster: &cluster.ClusterSpec{TalosVersion: "v1.14.2", KubernetesVersion: "v1.36.3", Parallelism: "2"},
		Machines: map[string]cluster.MachineSpec{
			"cp-1": {Cluster: "prod", Role: cluster.RoleControlPlane, Endpoint: "10.5.0.2:50000", InstallerImage: "registry.example/installer"},
			"w-1":  {Cluster: "prod", Role: cluster.RoleWorker, Endpoint: "10.5.0.3:50000"},
			"w-2":  {Cluster: "prod", Role: cluster.RoleWorker, Endpoint: "10.5.0.4:50000"},
			"w-3":  {Cluster: "prod", Role: cluster.RoleWorker, Endpoint: "10.5.0.5:50000"},
		},
	}
	res := adopt.Result{
		Machines: []adopt.Machine{
			{Name: "cp-1", Role: cluster.RoleControlPlane, Endpoint: "10.5.0.2:50000", TalosVersion: "v1.14.1"},
			{Name: "w-1", Role: cluster.RoleWorker, Endpoint: "10.5.0.9:50000", TalosVersion: "v1.14.1"},
			{Name: "w-4", Role: cluster.RoleWorker, Endpoint: "10.5.0.6:50000", TalosVersion: "v1.14.1"},
		},
		Unreachable:  []adopt.Unreachable{{Name: "w-3", Role: cluster.RoleWorker, Err: errors.New("down")}},
		TalosVersion: "v1.14.1", KubernetesVersion: "v1.36.3",
	}

	p := adopt.NewPlan("prod", res, nil, current)

	if p.New || !reflect.DeepEqual(p.Cluster.TypedSpec(), current.Cluster) {
		t.Errorf("re-import changed the cluster's spec to %+v", p.Cluster.TypedSpec())
	}

	want := []string{
		"changed machine w-1 (endpoint 10.5.0.3:50000 -> 10.5.0.9:50000)",
		"removed machine w-2 (worker, 10.5.0.4:50000, no longer a member)",
		"added machine w-4 (worker, 10.5.0.6:50000, Talos v1.14.1)",
	}
	if got := changes(p); !slices.Equal(got, want) {
		t.Errorf("changes %q, want %q", got, want)
	}

	if got := machineIDs(p); !slices.Equal(got, []string{"cp-1", "w-1", "w-4", "w-3"}) || !slices.Equal(p.Remove, []string{"w-2"}) {
		t.Errorf("writes %v, removes %v; want the members (w-3 kept as it was) and w-2 removed", got, p.Remove)
	}

	if img := p.Machines[0].TypedSpec().InstallerImage; img != "registry.example/installer" {
		t.Errorf("cp-1's installer image became %q", img)
	}

	if w3 := p.Machines[3].TypedSpec(); *w3 != current.Machines["w-3"] {
		t.Errorf("unreachable w-3 was changed to %+v", w3)
	}
}
