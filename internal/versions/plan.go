package versions

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

var (
	// ErrKubernetesUnsupported is wrapped when the target Talos release cannot run the cluster's Kubernetes
	// version: the Kubernetes version has to change first.
	ErrKubernetesUnsupported = errors.New("kubernetes version not supported")
	// ErrNoPath is wrapped when no chain of catalogue releases leads from the machines' versions to the target.
	ErrNoPath = errors.New("no upgrade path")
	// ErrNotInCatalogue is wrapped when the target is not a release the catalogue holds (its installer tag is
	// unknown); Catalogue.Add fixes it.
	ErrNotInCatalogue = errors.New("release not in the catalogue")
)

// Plan is how a cluster gets from its machines' versions to a target: the releases to install, in order.
type Plan struct {
	// From holds the distinct versions machines run now that differ from the target, oldest first.
	From []Version
	// To is the target release.
	To Release
	// Direction says whether this is an upgrade, a downgrade, or (for a cluster left half-way) both.
	Direction Direction
	// Hops are the releases every machine goes through, in order; the last one is To. Empty when every
	// machine already runs the target; longer than one when no direct path exists.
	Hops []Release
}

// Direct reports whether the plan installs the target without intermediate releases.
func (p Plan) Direct() bool { return len(p.Hops) == 1 }

// String renders the plan as the CLI prints it, e.g. "upgrade 1.10.0 -> 1.12.0 -> 1.14.1".
func (p Plan) String() string {
	if len(p.Hops) == 0 {
		return fmt.Sprintf("none: every machine runs %s", p.To.Version)
	}

	from := make([]string, 0, len(p.From))
	for _, v := range p.From {
		from = append(from, v.String())
	}

	steps := []string{strings.Join(from, ",")}
	for _, h := range p.Hops {
		steps = append(steps, h.Version.String())
	}

	return p.Direction.String() + " " + strings.Join(steps, " -> ")
}

// Plan computes how to bring machines running hosts (one entry per machine, duplicates welcome) to target with
// Kubernetes kubernetes running throughout. Every hop must be installable over every machine that reaches it
// (machinery's upgrade and downgrade limits) and must support the Kubernetes version. When the target is not
// directly reachable, Plan returns the shortest chain of catalogue releases, choosing at each hop the newest
// release that keeps the chain shortest (the latest patch of an intermediate line, as Talos recommends).
func (c *Catalogue) Plan(hosts []string, kubernetes, target string) (Plan, error) {
	to, err := Parse(target)
	if err != nil {
		return Plan{}, fmt.Errorf("planning the Talos change: target: %w", err)
	}

	current, err := parseHosts(hosts)
	if err != nil {
		return Plan{}, fmt.Errorf("planning the Talos change to %s: %w", to, err)
	}

	plan, err := c.plan(current, kubernetes, to)
	if err != nil {
		return Plan{}, fmt.Errorf("planning the Talos change to %s: %w", to, err)
	}

	return plan, nil
}

func (c *Catalogue) plan(current []Version, kubernetes string, to Version) (Plan, error) {
	release, ok := c.Lookup(to)
	if !ok {
		return Plan{}, fmt.Errorf("%w (add it with its installer tag)", ErrNotInCatalogue)
	}

	if err := CheckKubernetes(to, kubernetes); err != nil {
		return Plan{}, fmt.Errorf("the cluster's Kubernetes %s must change first: %w", kubernetes, err)
	}

	from := slices.DeleteFunc(slices.Clone(current), to.Equal)
	plan := Plan{From: from, To: release, Direction: DirectionOf(from, to)}

	if len(from) == 0 {
		return plan, nil
	}

	if directErr := checkDirectFromAll(from, to); directErr == nil {
		plan.Hops = []Release{release}

		return plan, nil
	} else if plan.Hops = c.chain(from, kubernetes, release); plan.Hops == nil {
		return Plan{}, fmt.Errorf("%w from %s to %s: %w, and no chain of catalogue releases leads there", ErrNoPath, joinVersions(from), to, directErr)
	}

	return plan, nil
}

// chain returns the shortest sequence of releases, ending with target, such that the first is installable
// over every host and each next one over the previous; nil when there is none. Only releases that run the
// cluster's Kubernetes and lie between the oldest and newest version involved are considered, so a chain never
// overshoots.
func (c *Catalogue) chain(hosts []Version, kubernetes string, target Release) []Release {
	g := c.graphFor(kubernetes)

	lo := slices.MinFunc(append([]Version{target.Version}, hosts...), Version.Compare)
	hi := slices.MaxFunc(append([]Version{target.Version}, hosts...), Version.Compare)
	inRange := make([]bool, len(g.nodes))
	for i, r := range g.nodes {
		inRange[i] = r.Version.Compare(lo) >= 0 && r.Version.Compare(hi) <= 0
	}

	// dist[i] is the number of installs from nodes[i] to the target (breadth-first, backwards from the
	// target); -1 when the target cannot be reached from it.
	dist := make([]int, len(g.nodes))
	queue := make([]int, 0, len(g.nodes))

	for i, r := range g.nodes {
		dist[i] = -1

		if r.Version.Equal(target.Version) {
			dist[i] = 0
			queue = append(queue, i)
		}
	}

	for ; len(queue) > 0; queue = queue[1:] {
		j := queue[0]

		for i := range g.nodes {
			if dist[i] == -1 && inRange[i] && g.next[i][j] {
				dist[i] = dist[j] + 1
				queue = append(queue, i)
			}
		}
	}

	// best returns the newest node at the smallest distance (at most maxDist) that accepts(i).
	best := func(maxDist int, accepts func(i int) bool) int {
		pick := -1

		for i := len(g.nodes) - 1; i >= 0; i-- {
			if dist[i] >= 0 && dist[i] <= maxDist && (pick == -1 || dist[i] < dist[pick]) && accepts(i) {
				pick = i
			}
		}

		return pick
	}

	cur := best(len(g.nodes), func(i int) bool { return checkDirectFromAll(hosts, g.nodes[i].Version) == nil })
	if cur == -1 {
		return nil
	}

	hops := []Release{g.nodes[cur]}

	for dist[cur] > 0 {
		from := cur
		cur = best(dist[from]-1, func(i int) bool { return g.next[from][i] })
		hops = append(hops, g.nodes[cur])
	}

	return hops
}

// graph is the part of the catalogue that runs one Kubernetes version, with which release installs directly
// over which: planning walks it instead of asking machinery's rules again for every pair.
type graph struct {
	nodes []Release
	// next[i][j] is true when nodes[j] can be installed directly over nodes[i].
	next [][]bool
}

// maxCachedGraphs bounds the graph cache; Kubernetes versions in use are few, but callers pass any string.
const maxCachedGraphs = 32

// graphFor returns the graph of the releases that run kubernetes, built once per catalogue content.
func (c *Catalogue) graphFor(kubernetes string) *graph {
	c.mu.RLock()
	g, generation := c.graphs[kubernetes], c.generation
	c.mu.RUnlock()

	if g != nil {
		return g
	}

	g = &graph{}

	for _, r := range c.Releases() {
		if CheckKubernetes(r.Version, kubernetes) == nil {
			g.nodes = append(g.nodes, r)
		}
	}

	g.next = make([][]bool, len(g.nodes))
	for i, from := range g.nodes {
		g.next[i] = make([]bool, len(g.nodes))
		for j, to := range g.nodes {
			g.next[i][j] = to.Version.talos.UpgradeableFrom(from.Version.talos) == nil
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	if c.generation == generation { // the catalogue did not change meanwhile
		if len(c.graphs) >= maxCachedGraphs || c.graphs == nil {
			c.graphs = map[string]*graph{}
		}

		c.graphs[kubernetes] = g
	}

	return g
}

// Choice is one Talos release a user may pick for a cluster, with how the engine would get there.
type Choice struct {
	// Release is the release the user may pick.
	Release Release
	// Direction says whether picking it upgrades or downgrades the cluster.
	Direction Direction
	// Hops is the number of installs every machine goes through (1 for a direct path).
	Hops int
}

// Choices lists, oldest first, every catalogue release the cluster can be moved to from hosts while running
// Kubernetes kubernetes, directly or through intermediate releases; the release every machine already runs is
// left out.
func (c *Catalogue) Choices(hosts []string, kubernetes string) ([]Choice, error) {
	current, err := parseHosts(hosts)
	if err != nil {
		return nil, fmt.Errorf("listing Talos versions: %w", err)
	}

	if _, err := parseKubernetes(kubernetes); err != nil {
		return nil, fmt.Errorf("listing Talos versions: %w", err)
	}

	var choices []Choice

	for _, r := range c.Releases() {
		plan, err := c.plan(current, kubernetes, r.Version)
		if err != nil || len(plan.Hops) == 0 {
			continue
		}

		choices = append(choices, Choice{Release: r, Direction: plan.Direction, Hops: len(plan.Hops)})
	}

	return choices, nil
}

// parseHosts parses every host version and returns the distinct ones, oldest first.
func parseHosts(hosts []string) ([]Version, error) {
	if len(hosts) == 0 {
		return nil, errors.New("no machine versions given")
	}

	versions := make([]Version, 0, len(hosts))

	for _, h := range hosts {
		v, err := Parse(h)
		if err != nil {
			return nil, fmt.Errorf("machine version: %w", err)
		}

		versions = append(versions, v)
	}

	slices.SortFunc(versions, Version.Compare)

	return slices.CompactFunc(versions, Version.Equal), nil
}

// checkDirectFromAll returns the first reason target cannot be installed over one of hosts, nil when it can
// over all of them.
func checkDirectFromAll(hosts []Version, target Version) error {
	for _, h := range hosts {
		if err := CheckDirect(h, target); err != nil {
			return err
		}
	}

	return nil
}

func joinVersions(vs []Version) string {
	s := make([]string, 0, len(vs))
	for _, v := range vs {
		s = append(s, v.String())
	}

	return strings.Join(s, ", ")
}
