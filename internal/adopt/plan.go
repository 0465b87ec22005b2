package adopt

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/upshift-io/upshift/resources/cluster"
)

// Current is what the engine holds of the cluster before the import.
type Current struct {
	// Cluster is the stored Cluster's spec; nil when the cluster is new to the engine.
	Cluster *cluster.ClusterSpec
	// Machines are the stored Machines of the cluster, by ID.
	Machines map[string]cluster.MachineSpec
}

// ChangeKind says what an import does to a machine.
type ChangeKind string

// What an import does to a machine.
const (
	Added   ChangeKind = "added"
	Removed ChangeKind = "removed"
	Changed ChangeKind = "changed"
)

// Change is one machine an import adds, removes or changes.
type Change struct {
	Kind    ChangeKind
	Machine string
	// Detail says what the machine is (added), was (removed) or what changed.
	Detail string
}

// String renders the change as the CLI prints it: "added machine c1-w-4 (worker, 10.5.0.7:50000, Talos v1.14.1)".
func (c Change) String() string {
	return fmt.Sprintf("%s machine %s (%s)", c.Kind, c.Machine, c.Detail)
}

// Plan is what an import writes: the Cluster, its Credentials and Machines, and the Machines to delete.
type Plan struct {
	Cluster     *cluster.Cluster
	Credentials *cluster.Credentials
	// Machines are every machine that answered (created or updated) and, unchanged, those already stored that are
	// still members but did not answer.
	Machines []*cluster.Machine
	// Remove are the stored Machines of the cluster that are no longer members.
	Remove []string
	// Changes are the machines added, removed or changed, by name.
	Changes []Change
	// New is set when the engine did not hold the cluster yet.
	New bool
}

// NewPlan plans the import of res as cluster name, with its talosconfig, over what the engine holds. A new cluster
// wants the versions it runs, so nothing starts until a user asks for an upgrade; one whose machines run different
// versions wants the newest and is paused, so nothing starts there either until a user resumes it. A cluster
// imported before keeps its spec (its targets are the user's); its machines follow the members: new ones added, gone
// ones removed, a changed role or endpoint updated, and one that did not answer now left as it is.
func NewPlan(name string, res Result, talosconfig []byte, current Current) Plan {
	p := Plan{Cluster: cluster.NewCluster(name), Credentials: cluster.NewCredentials(name), New: current.Cluster == nil}

	if current.Cluster != nil {
		*p.Cluster.TypedSpec() = *current.Cluster
	} else {
		spec := p.Cluster.TypedSpec()
		spec.TalosVersion = res.TalosVersion
		spec.KubernetesVersion = res.KubernetesVersion
		spec.Paused = res.MixedTalos || res.MixedKubernetes
	}

	p.Credentials.TypedSpec().Talosconfig = string(talosconfig)
	p.Credentials.TypedSpec().Kubeconfig = string(res.Kubeconfig)

	members := map[string]bool{}

	for _, m := range res.Machines {
		members[m.Name] = true

		r := cluster.NewMachine(m.Name)
		spec := r.TypedSpec()

		old, known := current.Machines[m.Name]
		if known {
			*spec = old
		}

		spec.Cluster, spec.Role, spec.Endpoint = name, m.Role, m.Endpoint
		p.Machines = append(p.Machines, labelled(r))

		switch {
		case !known:
			p.Changes = append(p.Changes, Change{Kind: Added, Machine: m.Name, Detail: fmt.Sprintf("%s, %s, Talos %s", m.Role, m.Endpoint, m.TalosVersion)})
		case old != *spec:
			p.Changes = append(p.Changes, Change{Kind: Changed, Machine: m.Name, Detail: describeChange(old, *spec)})
		}
	}

	for _, u := range res.Unreachable {
		members[u.Name] = true

		if old, known := current.Machines[u.Name]; known {
			r := cluster.NewMachine(u.Name)
			*r.TypedSpec() = old
			p.Machines = append(p.Machines, labelled(r))
		}
	}

	for _, id := range slices.Sorted(maps.Keys(current.Machines)) {
		if !members[id] {
			p.Remove = append(p.Remove, id)
			old := current.Machines[id]
			p.Changes = append(p.Changes, Change{Kind: Removed, Machine: id, Detail: fmt.Sprintf("%s, %s, no longer a member", old.Role, old.Endpoint)})
		}
	}

	slices.SortStableFunc(p.Changes, func(a, b Change) int { return strings.Compare(a.Machine, b.Machine) })

	return p
}

// labelled gives a Machine the labels the server stamps on it, so writing it again changes nothing.
func labelled(m *cluster.Machine) *cluster.Machine {
	for k, v := range m.TypedSpec().Labels() {
		m.Metadata().Labels().Set(k, v)
	}

	return m
}

// describeChange says which fields of a machine an import changes.
func describeChange(old, updated cluster.MachineSpec) string {
	var parts []string

	if old.Role != updated.Role {
		parts = append(parts, fmt.Sprintf("role %s -> %s", old.Role, updated.Role))
	}

	if old.Endpoint != updated.Endpoint {
		parts = append(parts, fmt.Sprintf("endpoint %s -> %s", old.Endpoint, updated.Endpoint))
	}

	return strings.Join(parts, ", ")
}
