package rollout

import (
	"slices"
	"strings"

	"github.com/upshift-io/upshift/internal/versions"
)

// NextHop is the hop of plan (the versions a cluster goes through, its target last) that a machine running version
// installs next, or "" when it runs the target. Each machine walks its own way along the plan: a machine already on
// a hop goes on from there and is never taken back through an earlier one, and a machine on a version the plan
// does not name (a replaced node installed with another release) goes to the first hop beyond its version in the
// plan's direction. So a mixed cluster never moves a machine away from the target, and one locked or skipped
// machine holds back nobody else.
func NextHop(plan []string, version string) string {
	if len(plan) == 0 || SameVersion(version, plan[len(plan)-1]) {
		return ""
	}

	if i := slices.IndexFunc(plan, func(h string) bool { return SameVersion(h, version) }); i >= 0 {
		return plan[i+1]
	}

	if len(plan) == 1 {
		return plan[0]
	}

	v, err := versions.Parse(version)
	if err != nil {
		return plan[0]
	}

	first, errFirst := versions.Parse(plan[0])
	last, errLast := versions.Parse(plan[len(plan)-1])

	if errFirst != nil || errLast != nil {
		return plan[0]
	}

	ascending := first.Compare(last) < 0

	for _, h := range plan {
		hv, err := versions.Parse(h)
		if err != nil {
			return plan[0]
		}

		if c := v.Compare(hv); (ascending && c < 0) || (!ascending && c > 0) {
			return h
		}
	}

	return plan[len(plan)-1] // beyond the target in the plan's direction: straight to the target
}

// MachineTarget is the version an upgrade of a machine that started on from heads to under plan, whose last
// version is final: its next hop, or final itself when the machine started there (the target moved back to the
// version it ran, a revert). The scheduler admits machines toward it and a machine in flight whose upgrade
// heads elsewhere follows Retarget, so both read the same rule.
func MachineTarget(plan []string, final, from string) string {
	if hop := NextHop(plan, from); hop != "" {
		return hop
	}

	return final
}

// SameVersion reports whether a and b name the same Talos version, with or without the leading "v"; the
// controllers and the CLI compare versions with it, so every place agrees on what "on the target" means.
func SameVersion(a, b string) bool {
	return strings.TrimPrefix(a, "v") == strings.TrimPrefix(b, "v")
}
