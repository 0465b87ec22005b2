// Package kuberollout holds the pure rules of a Kubernetes upgrade: the plan (a chain of supported minor steps),
// the Talos support of every node, the ordered steps of each hop and which of them run next. It does no I/O: the
// controller, the CLI's dry run and the tests all call it, so what they show is what the engine does
// (docs/architecture.md, "The Kubernetes step machine").
package kuberollout

import (
	"fmt"
	"slices"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/siderolabs/go-kubernetes/kubernetes/upgrade"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/compatibility"
)

// Direction says whether a plan moves the cluster up or down.
type Direction string

// Directions of a plan.
const (
	Upgrade   Direction = "upgrade"
	Downgrade Direction = "downgrade"
)

// DefaultReleases are the Kubernetes releases the engine knows, the latest patch of each minor: a chain of
// upgrades goes through them, and they are the versions offered as available.
var DefaultReleases = []string{"1.32.11", "1.33.7", "1.34.3", "1.35.2", "1.36.2", "1.37.2"}

// Plan is the way from the versions a cluster runs to a target: each hop a full upgrade over a path that
// go-kubernetes supports (the same minor or the next one).
type Plan struct {
	// From is the version the plan starts from: the lowest running version for an upgrade, the highest for a
	// downgrade.
	From string
	// To is the target.
	To        string
	Direction Direction
	// Hops are the versions the cluster goes through, To last; empty when every component already runs To.
	Hops []string
}

// NewPlan plans the way from a cluster whose components run versions between lowest and highest to target.
// A target below highest is a downgrade (a revert is one): it goes down one minor at a time, each hop the reverse
// of a supported upgrade. releases name the patch of each intermediate minor.
func NewPlan(lowest, highest, target string, releases []string) (Plan, error) {
	lo, errLo := parse(lowest)
	hi, errHi := parse(highest)
	to, errTo := parse(target)

	if err := firstErr(errLo, errHi, errTo); err != nil {
		return Plan{}, err
	}

	if lo.GT(hi) {
		lo, hi = hi, lo
	}

	plan := Plan{To: Canonical(target), Direction: Upgrade, From: Canonical(lowest)}
	start := lo

	if to.LT(hi) {
		plan.Direction, plan.From, start = Downgrade, Canonical(highest), hi
	}

	if lo.EQ(to) && hi.EQ(to) {
		return plan, nil
	}

	step := uint64(1)
	if plan.Direction == Downgrade {
		step = ^uint64(0) // minus one
	}

	prev := start
	for minor := start.Minor; minor != to.Minor; {
		minor += step

		hop := to
		if minor != to.Minor {
			release, ok := latest(releases, to.Major, minor)
			if !ok {
				return Plan{}, fmt.Errorf("no known Kubernetes release of %d.%d to go through from %s to %s", to.Major, minor, plan.From, plan.To)
			}

			hop = release
		}

		if err := supported(prev, hop, plan.Direction); err != nil {
			return Plan{}, err
		}

		plan.Hops = append(plan.Hops, hop.String())
		prev = hop
	}

	if len(plan.Hops) == 0 {
		if err := supported(prev, to, plan.Direction); err != nil {
			return Plan{}, err
		}

		plan.Hops = []string{to.String()}
	}

	return plan, nil
}

// supported checks one hop against go-kubernetes' list of upgrade paths; a downgrade hop must be the reverse of one.
func supported(from, to semver.Version, dir Direction) error {
	a, b := from, to
	if dir == Downgrade {
		a, b = to, from
	}

	path, err := upgrade.NewPath(a.String(), b.String())
	if err != nil {
		return fmt.Errorf("planning %s -> %s: %w", from, to, err)
	}

	if !path.IsSupported() {
		return fmt.Errorf("unsupported Kubernetes %s path %s (from %s to %s)", dir, path, from, to)
	}

	return nil
}

// TalosNode is what the compatibility check knows of one machine.
type TalosNode struct {
	Machine string
	// Talos is the Talos version the machine runs.
	Talos string
}

// CheckTalos refuses a plan whose hops some node's Talos does not support, naming the node, its Talos version and
// the Kubernetes versions it supports (machinery's compatibility tables).
func CheckTalos(nodes []TalosNode, hops []string) error {
	var errs []string

	for _, n := range nodes {
		talos, err := compatibility.ParseTalosVersion(&machineapi.VersionInfo{Tag: n.Talos})
		if err != nil {
			errs = append(errs, fmt.Sprintf("machine %s: Talos version %q: %v", n.Machine, n.Talos, err))

			continue
		}

		for _, hop := range hops {
			k, err := compatibility.ParseKubernetesVersion(hop)
			if err != nil {
				return fmt.Errorf("kubernetes version %q: %w", hop, err)
			}

			if err := k.SupportedWith(talos); err != nil {
				errs = append(errs, fmt.Sprintf("machine %s runs Talos %s, which supports Kubernetes %s: %v",
					n.Machine, n.Talos, SupportedRange(talos), err))

				break
			}
		}
	}

	if len(errs) > 0 {
		return fmt.Errorf("not every node's Talos supports the plan: %s", strings.Join(errs, "; "))
	}

	return nil
}

// SupportedRange renders the Kubernetes minors a Talos version supports, e.g. "1.32 to 1.37", by asking
// machinery's tables about each minor.
func SupportedRange(talos *compatibility.TalosVersion) string {
	var minors []string

	for minor := 20; minor <= 50; minor++ {
		k, err := compatibility.ParseKubernetesVersion(fmt.Sprintf("1.%d.0", minor))
		if err == nil && k.SupportedWith(talos) == nil {
			minors = append(minors, fmt.Sprintf("1.%d", minor))
		}
	}

	switch len(minors) {
	case 0:
		return "no version"
	case 1:
		return minors[0]
	default:
		return minors[0] + " to " + minors[len(minors)-1]
	}
}

// Canonical renders a Kubernetes version without its "v", as go-kubernetes and the status do; unparsable input is
// returned trimmed.
func Canonical(v string) string {
	if p, err := parse(v); err == nil {
		return p.String()
	}

	return strings.TrimPrefix(v, "v")
}

// SameVersion reports whether a and b name the same Kubernetes version, with or without "v".
func SameVersion(a, b string) bool { return Canonical(a) == Canonical(b) }

// Compare orders two Kubernetes versions; unparsable ones sort first.
func Compare(a, b string) int {
	pa, errA := parse(a)
	pb, errB := parse(b)

	switch {
	case errA != nil && errB != nil:
		return strings.Compare(a, b)
	case errA != nil:
		return -1
	case errB != nil:
		return 1
	default:
		return pa.Compare(pb)
	}
}

// Available are the releases a cluster may pick as its next target: newer than highest, reachable by a plan, and
// supported by every node's Talos.
func Available(nodes []TalosNode, lowest, highest string, releases []string) []string {
	var out []string

	for _, r := range releases {
		if Compare(r, highest) <= 0 {
			continue
		}

		plan, err := NewPlan(lowest, highest, r, releases)
		if err == nil && CheckTalos(nodes, plan.Hops) == nil {
			out = append(out, Canonical(r))
		}
	}

	return out
}

func latest(releases []string, major, minor uint64) (semver.Version, bool) {
	var best semver.Version

	found := false

	for _, r := range releases {
		v, err := parse(r)
		if err == nil && v.Major == major && v.Minor == minor && (!found || v.GT(best)) {
			best, found = v, true
		}
	}

	return best, found
}

func parse(v string) (semver.Version, error) {
	p, err := semver.ParseTolerant(strings.TrimPrefix(strings.TrimSpace(v), "v"))
	if err != nil {
		return p, fmt.Errorf("%q is not a Kubernetes version: %w", v, err)
	}

	return p, nil
}

func firstErr(errs ...error) error {
	i := slices.IndexFunc(errs, func(err error) bool { return err != nil })
	if i < 0 {
		return nil
	}

	return errs[i]
}
