package adopt_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/internal/adopt"
	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
)

// fakeTalos is a cluster seen through the Talos API: discovery members as every machine sees them, versions,
// etcd members, a kubeconfig, and machines that do not answer.
type fakeTalos struct {
	members    []talos.Member
	versions   map[string]string
	etcd       []talos.EtcdMember
	kubeconfig []byte
	down       map[string]bool // machines whose API does not answer

	kubeconfigAsked []string
}

func unreachable(node, op string) error {
	return &talos.Error{Node: node, Op: op, Kind: talos.KindUnreachable, Err: status.Error(codes.Unavailable, "connection refused")}
}

func (f *fakeTalos) Members(_ context.Context, node string) ([]talos.Member, error) {
	if f.down[node] {
		return nil, unreachable(node, "listing cluster discovery members")
	}

	return slices.Clone(f.members), nil
}

func (f *fakeTalos) Kubeconfig(_ context.Context, node string) ([]byte, error) {
	f.kubeconfigAsked = append(f.kubeconfigAsked, node)

	if f.down[node] {
		return nil, unreachable(node, "reading the kubeconfig")
	}

	return f.kubeconfig, nil
}

func (f *fakeTalos) Version(_ context.Context, node string) (string, error) {
	if f.down[node] {
		return "", unreachable(node, "reading version")
	}

	return f.versions[node], nil
}

func (f *fakeTalos) EtcdMembers(_ context.Context, node string) ([]talos.EtcdMember, error) {
	if f.down[node] {
		return nil, unreachable(node, "listing etcd members")
	}

	return f.etcd, nil
}

type fakeKube struct{ nodes []kube.Node }

func (f fakeKube) List(context.Context) ([]kube.Node, error) { return f.nodes, nil }

// healthyCluster is 3 control planes and 2 workers on v1.14.1 and Kubernetes v1.36.3 whose sources all agree.
func healthyCluster() (*fakeTalos, *fakeKube) {
	ft := &fakeTalos{versions: map[string]string{}, down: map[string]bool{}, kubeconfig: []byte("kubeconfig of cp")}
	fk := &fakeKube{}

	// Discovery lists workers first here, as the resource IDs sort: the result puts control planes first.
	for i, name := range []string{"w-1", "w-2", "cp-1", "cp-2", "cp-3"} {
		cp := strings.HasPrefix(name, "cp")
		ft.members = append(ft.members, talos.Member{
			Name: name, Hostname: name, ControlPlane: cp,
			Addresses:       []netip.Addr{netip.AddrFrom4([4]byte{10, 5, 0, byte(10 + i)})},
			OperatingSystem: "Talos (v1.14.1)",
		})
		ft.versions[name] = "v1.14.1"
		fk.nodes = append(fk.nodes, kube.Node{Name: name, ControlPlane: cp, KubeletVersion: "v1.36.3"})

		if cp {
			ft.etcd = append(ft.etcd, talos.EtcdMember{ID: uint64(i), Hostname: name})
		}
	}

	return ft, fk
}

func source(ft *fakeTalos, fk *fakeKube) adopt.Source {
	return adopt.Source{
		Talos: ft, Ask: []string{"cp-1"}, Port: "50000",
		Kubernetes: func(kubeconfig []byte) (adopt.Kubernetes, error) {
			if string(kubeconfig) != string(ft.kubeconfig) && string(kubeconfig) != "given" {
				return nil, fmt.Errorf("unexpected kubeconfig %q", kubeconfig)
			}

			return fk, nil
		},
	}
}

func TestDiscoverAgreeingCluster(t *testing.T) {
	ft, fk := healthyCluster()

	res, err := adopt.Discover(t.Context(), source(ft, fk))
	if err != nil {
		t.Fatal(err)
	}

	var got []string
	for _, m := range res.Machines {
		got = append(got, fmt.Sprintf("%s %s %s %s %s", m.Name, m.Role, m.Endpoint, m.TalosVersion, m.KubeletVersion))
	}

	want := []string{
		"cp-1 controlplane 10.5.0.12:50000 v1.14.1 v1.36.3",
		"cp-2 controlplane 10.5.0.13:50000 v1.14.1 v1.36.3",
		"cp-3 controlplane 10.5.0.14:50000 v1.14.1 v1.36.3",
		"w-1 worker 10.5.0.10:50000 v1.14.1 v1.36.3",
		"w-2 worker 10.5.0.11:50000 v1.14.1 v1.36.3",
	}

	if !slices.Equal(got, want) {
		t.Errorf("machines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if res.TalosVersion != "v1.14.1" || res.KubernetesVersion != "v1.36.3" || res.MixedTalos || res.MixedKubernetes ||
		len(res.Unreachable) != 0 || !res.KubeconfigFetched || string(res.Kubeconfig) != "kubeconfig of cp" {
		t.Errorf("result %+v", res)
	}

	if !slices.Equal(ft.kubeconfigAsked, []string{"cp-1"}) {
		t.Errorf("kubeconfig asked of %v, want the first control plane only", ft.kubeconfigAsked)
	}

	if err = res.Refuse(false); err != nil {
		t.Errorf("a cluster whose members all answer is refused: %v", err)
	}
}

func TestDiscoverGivenKubeconfigIsNotFetched(t *testing.T) {
	ft, fk := healthyCluster()
	src := source(ft, fk)
	src.Kubeconfig = []byte("given")

	res, err := adopt.Discover(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}

	if res.KubeconfigFetched || string(res.Kubeconfig) != "given" || len(ft.kubeconfigAsked) != 0 {
		t.Errorf("kubeconfig %q fetched %v (asked %v), want the given one", res.Kubeconfig, res.KubeconfigFetched, ft.kubeconfigAsked)
	}
}

func TestDiscoverAsksTheNextNodeWhenOneIsDown(t *testing.T) {
	ft, fk := healthyCluster()
	ft.down["cp-1"] = true

	src := source(ft, fk)
	src.Ask = []string{"cp-1", "cp-2"}

	res, err := adopt.Discover(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}

	if len(res.Unreachable) != 1 || res.Unreachable[0].Name != "cp-1" || res.Unreachable[0].Role != cluster.RoleControlPlane {
		t.Fatalf("unreachable %+v, want cp-1", res.Unreachable)
	}

	if len(res.Machines) != 4 || !slices.Equal(ft.kubeconfigAsked, []string{"cp-2"}) {
		t.Errorf("%d machines, kubeconfig asked of %v; want 4, cp-2", len(res.Machines), ft.kubeconfigAsked)
	}

	err = res.Refuse(false)
	if err == nil || !strings.Contains(err.Error(), "member cp-1 (controlplane) is unreachable") || !strings.Contains(err.Error(), "--allow-unreachable") {
		t.Errorf("refusal %v, want cp-1 named and --allow-unreachable offered", err)
	}

	if err = res.Refuse(true); err != nil {
		t.Errorf("refused with --allow-unreachable: %v", err)
	}
}

func TestDiscoverRefusesDisagreements(t *testing.T) {
	ft, fk := healthyCluster()
	ft.etcd = append(ft.etcd, talos.EtcdMember{ID: 0x99, Hostname: "cp-9"}, talos.EtcdMember{ID: 0x98}) // cp-9 unknown; the unnamed one never started
	fk.nodes = append(fk.nodes, kube.Node{Name: "w-9", KubeletVersion: "v1.36.3"})
	fk.nodes[0].ControlPlane = true // w-1 labelled a control plane
	fk.nodes = slices.DeleteFunc(fk.nodes, func(n kube.Node) bool { return n.Name == "w-2" })
	ft.etcd = slices.DeleteFunc(ft.etcd, func(e talos.EtcdMember) bool { return e.Hostname == "cp-3" })

	_, err := adopt.Discover(t.Context(), source(ft, fk))
	if err == nil {
		t.Fatal("sources that disagree were accepted")
	}

	for _, want := range []string{
		"etcd member cp-9 (0000000000000099) is not a cluster discovery member",
		"Kubernetes node w-9 is not a cluster discovery member",
		"w-1 is a worker for discovery but a controlplane for Kubernetes",
		"member w-2 has no Kubernetes node",
		"control plane cp-3 is not an etcd member",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}

	if strings.Count(err.Error(), "\n  ") != 5 {
		t.Errorf("want exactly five disagreements:\n%v", err)
	}
}

func TestDiscoverMixedVersionsWantTheNewest(t *testing.T) {
	ft, fk := healthyCluster()
	ft.versions["w-2"] = "v1.13.4"
	fk.nodes[0].KubeletVersion = "v1.35.0"

	res, err := adopt.Discover(t.Context(), source(ft, fk))
	if err != nil {
		t.Fatal(err)
	}

	if res.TalosVersion != "v1.14.1" || !res.MixedTalos || res.KubernetesVersion != "v1.36.3" || !res.MixedKubernetes {
		t.Errorf("Talos %s (mixed %v), Kubernetes %s (mixed %v); want the newest of each, mixed",
			res.TalosVersion, res.MixedTalos, res.KubernetesVersion, res.MixedKubernetes)
	}
}

func TestDiscoverWithoutDiscovery(t *testing.T) {
	ft, fk := healthyCluster()
	ft.members = nil

	_, err := adopt.Discover(t.Context(), source(ft, fk))
	if err == nil || !strings.Contains(err.Error(), "cluster.discovery.enabled") {
		t.Errorf("error %v, want a hint to enable cluster discovery", err)
	}
}

func TestDiscoverNoMachineAnswers(t *testing.T) {
	ft, fk := healthyCluster()
	ft.down["cp-1"] = true

	_, err := adopt.Discover(t.Context(), source(ft, fk))

	var terr *talos.Error
	if err == nil || !errors.As(err, &terr) || !strings.Contains(err.Error(), "no machine answered") {
		t.Errorf("error %v, want no machine answered, with the node's error", err)
	}
}
