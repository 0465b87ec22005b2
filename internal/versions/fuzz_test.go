package versions_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/upshift-io/upshift/internal/versions"
)

// FuzzParse: any string either parses into a version that round-trips through its tag, or fails with
// ErrInvalidVersion; nothing panics.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"v1.14.1", "1.13.0-beta.0", " v1.12.6 ", "", "v", "1.14", "v1.x.0", "1.14.1.2", "v01.2.3", "1.2.3+build.7", "999999999999999999999.0.0"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		v, err := versions.Parse(s)
		if err != nil {
			if !errors.Is(err, versions.ErrInvalidVersion) {
				t.Fatalf("Parse(%q) = %v, not ErrInvalidVersion", s, err)
			}

			return
		}

		back, err := versions.Parse(v.Tag())
		if err != nil || !back.Equal(v) {
			t.Fatalf("Parse(%q) = %s, whose tag %q reads back as %s, %v", s, v, v.Tag(), back, err)
		}

		_ = v.MajorMinor()
		_ = v.SupportsLifecycleService()
		_ = versions.UsesLifecycleFlow(v, back)
		_ = versions.CheckDirect(v, back)
	})
}

// FuzzPlan: planning from any hosts to any target under any Kubernetes version, with the shipped catalogue
// extended by one release, gives a plan to the target (empty when every host runs it) whose hops are known releases, or an error;
// nothing panics.
func FuzzPlan(f *testing.F) {
	for _, seed := range []struct{ hosts, kubernetes, target, extra string }{
		{"1.11.6,1.11.6", "v1.34.0", "v1.14.1", ""},
		{"1.12.6", "1.35.0", "1.13.4", "1.13.9"},
		{"1.14.1", "", "1.11.6", ""},
		{"", "v1.32.0", "v1.14.1", ""},
		{"v1.13.0-beta.0,1.14.1", "1.31.0", "1.14.1", "1.15.0"},
		{"x", "y", "z", "w"},
	} {
		f.Add(seed.hosts, seed.kubernetes, seed.target, seed.extra)
	}

	f.Fuzz(func(t *testing.T, hosts, kubernetes, target, extra string) {
		c := versions.Shipped()
		if extra != "" {
			_ = c.Add(extra, "v"+strings.TrimPrefix(extra, "v")) //nolint:errcheck // a bad release is refused, which is fine
		}

		var hostList []string
		if hosts != "" {
			hostList = strings.Split(hosts, ",")
		}

		if len(hostList) > 64 {
			hostList = hostList[:64]
		}

		plan, err := c.Plan(hostList, kubernetes, target)
		if err == nil {
			want, perr := versions.Parse(target)
			if perr != nil {
				t.Fatalf("Plan(%q, %q, %q) planned to a target that does not parse: %v", hostList, kubernetes, target, perr)
			}

			if !plan.To.Version.Equal(want) || (len(plan.Hops) > 0 && !plan.Hops[len(plan.Hops)-1].Version.Equal(want)) {
				t.Fatalf("Plan(%q, %q, %q) = %s: does not end on the target", hostList, kubernetes, target, plan)
			}

			for _, hop := range plan.Hops {
				if _, ok := c.Lookup(hop.Version); !ok {
					t.Fatalf("Plan(%q, %q, %q) = %s: hop %s is not in the catalogue", hostList, kubernetes, target, plan, hop.Version)
				}
			}

			_ = plan.String()
		}

		_, _ = c.Choices(hostList, kubernetes) //nolint:errcheck // only panics matter here
	})
}
