// Package adopt puts a running Talos cluster under upshift: it discovers the cluster's machines through the Talos
// API (cluster discovery Members, checked against the etcd member list and the Kubernetes Nodes) and plans the
// Cluster, Machines and Credentials that describe it as it runs, so that nothing changes until a user asks for an
// upgrade. The CLI (`upshift cluster import`) prints and applies the plan; this package makes no write.
package adopt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
)

// Talos is what discovery reads through the Talos API. Calls address a machine by its node name; "" is the
// endpoint's own machine.
type Talos interface {
	talos.Discoverer
	Version(ctx context.Context, node string) (string, error)
	EtcdMembers(ctx context.Context, node string) ([]talos.EtcdMember, error)
}

// Kubernetes lists the cluster's Nodes.
type Kubernetes interface {
	List(ctx context.Context) ([]kube.Node, error)
}

// Source is how to reach the cluster being discovered.
type Source struct {
	// Talos reaches the cluster's machines.
	Talos Talos
	// Ask lists the machines to ask for the discovery members, in order: the talosconfig context's nodes, or ""
	// (the endpoint's own machine) when it names none.
	Ask []string
	// Port is the port of every machine's Talos API (apid listens on the same one everywhere): the talosconfig
	// endpoint's.
	Port string
	// Kubeconfig is the cluster's kubeconfig; nil fetches one from a control plane through the Talos API.
	Kubeconfig []byte
	// Kubernetes builds a client of the cluster's Kubernetes API from a kubeconfig.
	Kubernetes func(kubeconfig []byte) (Kubernetes, error)
}

// Machine is one machine found, as the engine will address it.
type Machine struct {
	// Name is its node name: the Machine's ID, its Talos and Kubernetes node name.
	Name string
	// Role is its role, from discovery, confirmed by etcd (control planes are members) and its Node's label.
	Role cluster.Role
	// Endpoint is its Talos API: its first announced address on the cluster's Talos API port.
	Endpoint string
	// TalosVersion is the Talos version it runs (its Version API), e.g. "v1.14.1".
	TalosVersion string
	// KubeletVersion is the version its Node's kubelet reports, e.g. "v1.36.3".
	KubeletVersion string
}

// Unreachable is a member whose Talos API did not answer.
type Unreachable struct {
	// Name and Role are the member's, from discovery.
	Name string
	Role cluster.Role
	// Err is why it could not be read.
	Err error
}

// Result is the cluster as found.
type Result struct {
	// Machines are the members that answered, control planes first, then by name.
	Machines []Machine
	// Unreachable are the members that did not answer.
	Unreachable []Unreachable
	// TalosVersion is the newest Talos version the machines run; MixedTalos is set when some run another one.
	TalosVersion string
	MixedTalos   bool
	// KubernetesVersion is the newest kubelet version of the machines' Nodes; MixedKubernetes is set when some
	// report another one.
	KubernetesVersion string
	MixedKubernetes   bool
	// Kubeconfig is the kubeconfig given, or the one fetched (KubeconfigFetched) from a control plane.
	Kubeconfig        []byte
	KubeconfigFetched bool
}

// parallelReads bounds the Version calls in flight at once.
const parallelReads = 16

// readTimeout bounds the read of one member's version: a member that has not answered by then is Unreachable, not
// a wait without end for the whole import.
const readTimeout = 20 * time.Second

// Discover finds the cluster's machines: the discovery Members as the first machine of src.Ask that answers sees
// them, each member's Talos version (a member whose API does not answer is Unreachable), the etcd member list of a
// control plane and the Kubernetes Nodes. Every etcd member and Node must be a discovery member with the same role
// and every member must have a Node, or discovery is refused with each disagreement named: a machine discovery
// does not know would be left out of every upgrade.
func Discover(ctx context.Context, src Source) (Result, error) {
	members, err := members(ctx, src)
	if err != nil {
		return Result{}, err
	}

	var res Result

	res.Machines, res.Unreachable = readVersions(ctx, src, members)

	if res.Kubeconfig, res.KubeconfigFetched, err = kubeconfig(ctx, src, res.Machines); err != nil {
		return Result{}, err
	}

	etcdMembers, err := etcdMembers(ctx, src.Talos, res.Machines)
	if err != nil {
		return Result{}, err
	}

	kc, err := src.Kubernetes(res.Kubeconfig)
	if err != nil {
		return Result{}, fmt.Errorf("reaching the cluster's Kubernetes API: %w", err)
	}

	nodes, err := kc.List(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("reading the cluster's Kubernetes Nodes: %w", err)
	}

	if problems := crossCheck(members, etcdMembers, nodes); len(problems) > 0 {
		return Result{}, fmt.Errorf("cluster discovery, etcd and Kubernetes disagree, nothing was imported:\n  %s", strings.Join(problems, "\n  "))
	}

	kubelets := map[string]string{}
	for _, n := range nodes {
		kubelets[n.Name] = n.KubeletVersion
	}

	for i := range res.Machines {
		res.Machines[i].KubeletVersion = kubelets[res.Machines[i].Name]
	}

	if err = res.summarize(); err != nil {
		return Result{}, err
	}

	return res, nil
}

// members lists the discovery members from the first machine of src.Ask that answers.
func members(ctx context.Context, src Source) ([]talos.Member, error) {
	ask := src.Ask
	if len(ask) == 0 {
		ask = []string{""}
	}

	var errs []error

	for _, node := range ask {
		found, err := src.Talos.Members(ctx, node)
		if err != nil {
			errs = append(errs, err)

			continue
		}

		if len(found) == 0 {
			return nil, fmt.Errorf("the cluster discovery of %s lists no member: is cluster discovery enabled (cluster.discovery.enabled in the machine config)?", describe(node))
		}

		slices.SortFunc(found, func(a, b talos.Member) int {
			if a.ControlPlane != b.ControlPlane {
				if a.ControlPlane {
					return -1
				}

				return 1
			}

			return strings.Compare(a.Name, b.Name)
		})

		return found, nil
	}

	return nil, fmt.Errorf("no machine answered with the cluster's discovery members:\n%w", errors.Join(errs...))
}

// describe names the machine a call went to in messages.
func describe(node string) string {
	if node == "" {
		return "the endpoint's machine"
	}

	return fmt.Sprintf("%q", node)
}

func roleOf(controlPlane bool) cluster.Role {
	if controlPlane {
		return cluster.RoleControlPlane
	}

	return cluster.RoleWorker
}

// readVersions reads each member's Talos version, parallelReads at a time, in the members' order.
func readVersions(ctx context.Context, src Source, members []talos.Member) ([]Machine, []Unreachable) {
	type read struct {
		version string
		err     error
	}

	reads := make([]read, len(members))
	slots := make(chan struct{}, parallelReads)

	var wg sync.WaitGroup

	for i, m := range members {
		slots <- struct{}{}

		wg.Go(func() {
			defer func() { <-slots }()

			readCtx, cancel := context.WithTimeout(ctx, readTimeout)
			defer cancel()

			reads[i].version, reads[i].err = src.Talos.Version(readCtx, m.Name)
		})
	}

	wg.Wait()

	var (
		machines    []Machine
		unreachable []Unreachable
	)

	for i, m := range members {
		role := roleOf(m.ControlPlane)

		switch {
		case reads[i].err != nil:
			unreachable = append(unreachable, Unreachable{Name: m.Name, Role: role, Err: reads[i].err})
		case len(m.Addresses) == 0:
			unreachable = append(unreachable, Unreachable{Name: m.Name, Role: role, Err: errors.New("it announces no address")})
		default:
			machines = append(machines, Machine{
				Name:         m.Name,
				Role:         role,
				Endpoint:     net.JoinHostPort(m.Addresses[0].String(), src.Port),
				TalosVersion: reads[i].version,
			})
		}
	}

	return machines, unreachable
}

// kubeconfig is src's kubeconfig, or one fetched from the first control plane that gives it.
func kubeconfig(ctx context.Context, src Source, machines []Machine) ([]byte, bool, error) {
	if src.Kubeconfig != nil {
		return src.Kubeconfig, false, nil
	}

	var errs []error

	for _, m := range machines {
		if m.Role != cluster.RoleControlPlane {
			continue
		}

		kubeconfig, err := src.Talos.Kubeconfig(ctx, m.Name)
		if err == nil {
			return kubeconfig, true, nil
		}

		errs = append(errs, err)
	}

	if len(errs) == 0 {
		return nil, false, errors.New("fetching the kubeconfig: no control plane answers; give one with --kubeconfig")
	}

	return nil, false, fmt.Errorf("fetching the kubeconfig (give one with --kubeconfig):\n%w", errors.Join(errs...))
}

// etcdMembers is the etcd member list as the first control plane that answers sees it.
func etcdMembers(ctx context.Context, t Talos, machines []Machine) ([]talos.EtcdMember, error) {
	var errs []error

	for _, m := range machines {
		if m.Role != cluster.RoleControlPlane {
			continue
		}

		list, err := t.EtcdMembers(ctx, m.Name)
		if err == nil {
			return list, nil
		}

		errs = append(errs, err)
	}

	if len(errs) == 0 {
		return nil, errors.New("reading the etcd members: no control plane answers")
	}

	return nil, fmt.Errorf("reading the etcd members:\n%w", errors.Join(errs...))
}

// crossCheck lists where the etcd members and the Nodes contradict the discovery members.
func crossCheck(members []talos.Member, etcd []talos.EtcdMember, nodes []kube.Node) []string {
	byName := map[string]talos.Member{}
	for _, m := range members {
		byName[m.Name] = m
	}

	var problems []string

	inEtcd := map[string]bool{}

	for _, e := range etcd {
		if e.Hostname == "" {
			continue // added, never started: it names no machine yet
		}

		inEtcd[e.Hostname] = true

		switch m, ok := byName[e.Hostname]; {
		case !ok:
			problems = append(problems, fmt.Sprintf("etcd member %s (%s) is not a cluster discovery member", e.Hostname, talos.MemberID(e.ID)))
		case !m.ControlPlane:
			problems = append(problems, fmt.Sprintf("%s is an etcd member but discovery says it is a worker", e.Hostname))
		}
	}

	hasNode := map[string]bool{}

	for _, n := range nodes {
		hasNode[n.Name] = true

		switch m, ok := byName[n.Name]; {
		case !ok:
			problems = append(problems, fmt.Sprintf("Kubernetes node %s is not a cluster discovery member", n.Name))
		case m.ControlPlane != n.ControlPlane:
			problems = append(problems, fmt.Sprintf("%s is a %s for discovery but a %s for Kubernetes (label %s)",
				n.Name, roleOf(m.ControlPlane), roleOf(n.ControlPlane), kube.LabelControlPlane))
		}
	}

	for _, m := range members {
		if m.ControlPlane && !inEtcd[m.Name] {
			problems = append(problems, fmt.Sprintf("control plane %s is not an etcd member", m.Name))
		}

		if !hasNode[m.Name] {
			problems = append(problems, fmt.Sprintf("member %s has no Kubernetes node", m.Name))
		}
	}

	return problems
}

// summarize sets the cluster's versions: the newest Talos and kubelet versions of the machines, and whether some
// machine runs another one.
func (r *Result) summarize() error {
	if len(r.Machines) == 0 {
		return errors.New("no member of the cluster answers")
	}

	var newest versions.Version

	for _, m := range r.Machines {
		v, err := versions.Parse(m.TalosVersion)
		if err != nil {
			return fmt.Errorf("machine %s: %w", m.Name, err)
		}

		switch {
		case newest.IsZero():
			newest = v
		case !v.Equal(newest):
			r.MixedTalos = true

			if v.Compare(newest) > 0 {
				newest = v
			}
		}

		switch {
		case m.KubeletVersion == "":
			return fmt.Errorf("machine %s: its Node reports no kubelet version yet: import again once it has joined", m.Name)
		case r.KubernetesVersion == "":
			r.KubernetesVersion = m.KubeletVersion
		case m.KubeletVersion != r.KubernetesVersion:
			r.MixedKubernetes = true

			if kuberollout.Compare(m.KubeletVersion, r.KubernetesVersion) > 0 {
				r.KubernetesVersion = m.KubeletVersion
			}
		}
	}

	r.TalosVersion = newest.Tag()

	return nil
}

// Refuse is the import's answer to members it could not reach: an error naming each of them, unless allowed (then
// the others are imported and the CLI lists these).
func (r Result) Refuse(allowUnreachable bool) error {
	if len(r.Unreachable) == 0 || allowUnreachable {
		return nil
	}

	lines := make([]string, 0, len(r.Unreachable))
	for _, u := range r.Unreachable {
		lines = append(lines, fmt.Sprintf("member %s (%s) is unreachable: %v", u.Name, u.Role, u.Err))
	}

	return fmt.Errorf("nothing was imported: %s\n(--allow-unreachable imports the members that answer)", strings.Join(lines, "\n"))
}
