package versions_test

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/versions"
)

func catalogue(t *testing.T, releases ...string) *versions.Catalogue {
	t.Helper()

	c := versions.NewCatalogue()
	for _, r := range releases {
		if err := c.Add(r, ""); err != nil {
			t.Fatalf("Add(%q): %v", r, err)
		}
	}

	return c
}

func hopVersions(p versions.Plan) []string {
	out := make([]string, 0, len(p.Hops))
	for _, h := range p.Hops {
		out = append(out, h.Version.String())
	}

	return out
}

func TestParseRejectsInvalidVersions(t *testing.T) {
	for _, s := range []string{"", "latest", "1.14", "v1.x.0", "1.14.1.2", "v"} {
		if _, err := versions.Parse(s); !errors.Is(err, versions.ErrInvalidVersion) {
			t.Errorf("Parse(%q) = %v, want ErrInvalidVersion", s, err)
		}
	}

	v, err := versions.Parse(" v1.14.1 ")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}

	if v.String() != "1.14.1" || v.Tag() != "v1.14.1" || v.MajorMinor() != "1.14" {
		t.Errorf("Parse(v1.14.1) = %s / %s / %s", v, v.Tag(), v.MajorMinor())
	}
}

func TestPlan(t *testing.T) {
	full := []string{"1.8.0", "1.9.0", "1.10.0", "1.11.0", "1.12.0", "1.12.3", "1.13.0", "1.13.2", "1.14.0", "1.14.1"}

	for _, tc := range []struct {
		name       string
		releases   []string
		hosts      []string
		kubernetes string
		target     string
		hops       []string
		direction  versions.Direction
		err        error
		errText    string
	}{
		{
			name: "direct upgrade", releases: full, hosts: []string{"1.13.0", "v1.13.0", "1.13.2"}, kubernetes: "1.35.0", target: "v1.14.1",
			hops: []string{"1.14.1"}, direction: versions.Upgrade,
		},
		{
			name: "two hops through the newest patch of the intermediate line", releases: full, hosts: []string{"1.10.0"}, kubernetes: "1.32.0", target: "1.14.1",
			hops: []string{"1.12.3", "1.14.1"}, direction: versions.Upgrade,
		},
		{
			name: "three hops", releases: full, hosts: []string{"1.8.0", "1.8.0"}, kubernetes: "1.32.0", target: "1.14.1",
			hops: []string{"1.10.0", "1.12.3", "1.14.1"}, direction: versions.Upgrade,
		},
		{
			name: "first hop accepts every host of a mixed cluster", releases: full, hosts: []string{"1.10.0", "1.12.3"}, kubernetes: "1.32.0", target: "1.14.1",
			hops: []string{"1.12.3", "1.14.1"}, direction: versions.Upgrade,
		},
		{
			name: "direct downgrade by one line", releases: full, hosts: []string{"1.14.1"}, kubernetes: "1.33.0", target: "1.13.0",
			hops: []string{"1.13.0"}, direction: versions.Downgrade,
		},
		{
			name: "downgrade by two lines goes through the middle one", releases: full, hosts: []string{"1.14.1"}, kubernetes: "1.33.0", target: "1.12.0",
			hops: []string{"1.13.2", "1.12.0"}, direction: versions.Downgrade,
		},
		{
			name: "half-way cluster", releases: full, hosts: []string{"1.13.0", "1.14.1"}, kubernetes: "1.33.0", target: "1.14.0",
			hops: []string{"1.14.0"}, direction: versions.Mixed,
		},
		{
			name: "nothing to do", releases: full, hosts: []string{"1.14.1"}, kubernetes: "1.33.0", target: "1.14.1",
			direction: versions.Same,
		},
		{
			name: "kubernetes too old for the target", releases: full, hosts: []string{"1.13.0"}, kubernetes: "1.31.4", target: "1.14.1",
			err: versions.ErrKubernetesUnsupported, errText: "version of Kubernetes 1.31.4 is too old to be used with Talos 1.14.1",
		},
		{
			name: "kubernetes too new for the target", releases: full, hosts: []string{"1.14.1"}, kubernetes: "1.37.0", target: "1.13.0",
			err: versions.ErrKubernetesUnsupported, errText: "version of Kubernetes 1.37.0 is too new to be used with Talos 1.13.0",
		},
		{
			name: "no chain in the catalogue", releases: []string{"1.12.0", "1.14.1"}, hosts: []string{"1.9.0"}, kubernetes: "1.32.0", target: "1.14.1",
			err: versions.ErrNoPath, errText: "host version 1.9.0 is too old to upgrade to Talos 1.14.1",
		},
		{
			name: "target not in the catalogue", releases: full, hosts: []string{"1.13.0"}, kubernetes: "1.33.0", target: "1.14.7",
			err: versions.ErrNotInCatalogue,
		},
		{
			name: "invalid target", releases: full, hosts: []string{"1.13.0"}, kubernetes: "1.33.0", target: "1.14",
			err: versions.ErrInvalidVersion,
		},
		{
			name: "invalid host", releases: full, hosts: []string{"1.13.0", "banana"}, kubernetes: "1.33.0", target: "1.14.1",
			err: versions.ErrInvalidVersion, errText: `"banana"`,
		},
		{
			name: "invalid kubernetes", releases: full, hosts: []string{"1.13.0"}, kubernetes: "one.two", target: "1.14.1",
			err: versions.ErrInvalidVersion,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := catalogue(t, tc.releases...).Plan(tc.hosts, tc.kubernetes, tc.target)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("Plan error = %v, want %v containing %q", err, tc.err, tc.errText)
				}

				return
			}

			if err != nil {
				t.Fatalf("Plan: %v", err)
			}

			if got := hopVersions(plan); strings.Join(got, " ") != strings.Join(tc.hops, " ") {
				t.Errorf("hops = %v, want %v (plan %s)", got, tc.hops, plan)
			}

			if plan.Direction != tc.direction {
				t.Errorf("direction = %s, want %s", plan.Direction, tc.direction)
			}

			if plan.Direct() != (len(tc.hops) == 1) {
				t.Errorf("Direct() = %v with hops %v", plan.Direct(), tc.hops)
			}
		})
	}
}

func TestPlanString(t *testing.T) {
	plan, err := catalogue(t, "1.12.0", "1.14.1").Plan([]string{"1.10.0", "1.11.0"}, "1.32.0", "1.14.1")
	if err != nil {
		t.Fatal(err)
	}

	if got, want := plan.String(), "upgrade 1.10.0,1.11.0 -> 1.12.0 -> 1.14.1"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestChoices(t *testing.T) {
	choices, err := versions.Shipped().Choices([]string{"1.12.0", "1.12.0"}, "1.33.0")
	if err != nil {
		t.Fatal(err)
	}

	var got []string
	for _, c := range choices {
		got = append(got, c.Release.Version.String()+" "+c.Direction.String()+" "+strings.Repeat("*", c.Hops))
	}

	want := []string{
		"1.10.0 downgrade **", "1.11.0 downgrade *", "1.11.6 downgrade *", "1.12.6 upgrade *",
		"1.13.0 upgrade *", "1.13.4 upgrade *", "1.14.0 upgrade *", "1.14.1 upgrade *",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Choices = %q, want %q", got, want)
	}

	if _, err := versions.Shipped().Choices([]string{"1.12.0"}, "x"); !errors.Is(err, versions.ErrInvalidVersion) {
		t.Errorf("Choices with a bad Kubernetes version = %v, want ErrInvalidVersion", err)
	}
}

func TestCatalogue(t *testing.T) {
	c := versions.Shipped()

	releases := c.Releases()
	for i := 1; i < len(releases); i++ {
		if releases[i-1].Version.Compare(releases[i].Version) >= 0 {
			t.Fatalf("releases out of order: %s before %s", releases[i-1].Version, releases[i].Version)
		}
	}

	if err := c.Add("1.13.5", "v1.13.5-custom"); err != nil {
		t.Fatal(err)
	}

	r, ok := c.Lookup(versions.MustParse("v1.13.5"))
	if !ok || r.Image("") != "ghcr.io/siderolabs/installer:v1.13.5-custom" || r.Image("factory.local/installer/abc") != "factory.local/installer/abc:v1.13.5-custom" {
		t.Errorf("Lookup(1.13.5) = %+v, %v", r, ok)
	}

	if err := c.Add("1.13.5", ""); err != nil {
		t.Fatal(err)
	}

	if r, _ := c.Lookup(versions.MustParse("1.13.5")); r.InstallerTag != "v1.13.5" || len(c.Releases()) != len(releases)+1 {
		t.Errorf("re-adding 1.13.5 gave tag %q and %d releases", r.InstallerTag, len(c.Releases()))
	}

	for _, bad := range [][2]string{{"1.13", ""}, {"1.13.6", "repo:tag"}, {"1.13.6", "a b"}} {
		if err := c.Add(bad[0], bad[1]); err == nil {
			t.Errorf("Add(%q, %q) succeeded", bad[0], bad[1])
		}
	}

	if len(c.Releases()) != len(releases)+1 {
		t.Errorf("refused adds changed the catalogue")
	}
}

func TestCatalogueConcurrentUse(t *testing.T) {
	c := versions.Shipped()

	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if err := c.Add("1.13."+string(rune('1'+i)), ""); err != nil {
				t.Error(err)
			}

			if _, err := c.Plan([]string{"1.13.0"}, "1.33.0", "1.14.1"); err != nil {
				t.Error(err)
			}
		})
	}

	wg.Wait()

	if got, want := len(c.Releases()), len(versions.Shipped().Releases())+8-1; got != want { // 1.13.4 was shipped
		t.Errorf("%d releases after concurrent adds, want %d", got, want)
	}
}

func TestFlowAndDirection(t *testing.T) {
	p := versions.MustParse

	if versions.UsesLifecycleFlow(p("1.12.0"), p("1.13.0")) || !versions.UsesLifecycleFlow(p("1.13.0"), p("1.14.1")) || versions.UsesLifecycleFlow(p("1.13.0"), p("1.12.0")) {
		t.Error("UsesLifecycleFlow must need both sides >= 1.13")
	}

	if err := versions.CheckDirect(p("1.11.5"), p("1.14.1")); err == nil || !strings.Contains(err.Error(), "upgrade from 1.11.5: host version 1.11.5 is too old") {
		t.Errorf("CheckDirect(1.11.5 -> 1.14.1) = %v", err)
	}

	if err := versions.CheckDirect(p("1.16.0"), p("1.14.1")); err == nil || !strings.Contains(err.Error(), "downgrade from 1.16.0") {
		t.Errorf("CheckDirect(1.16.0 -> 1.14.1) = %v", err)
	}
}

func TestAddingAReleaseOpensAPath(t *testing.T) {
	c := catalogue(t, "1.14.1")

	if _, err := c.Plan([]string{"1.10.0"}, "1.32.0", "1.14.1"); !errors.Is(err, versions.ErrNoPath) {
		t.Fatalf("Plan without an intermediate release = %v, want ErrNoPath", err)
	}

	if err := c.Add("1.12.5", ""); err != nil {
		t.Fatal(err)
	}

	plan, err := c.Plan([]string{"1.10.0"}, "1.32.0", "1.14.1")
	if err != nil || strings.Join(hopVersions(plan), " ") != "1.12.5 1.14.1" {
		t.Fatalf("Plan after adding 1.12.5 = %v, %v", hopVersions(plan), err)
	}
}

// TestShippedCataloguePlansWithinTheEmulatedFleet plans every change between the versions the emulated fleet runs
// with the shipped catalogue: each must have a plan, and every hop must be a version the fleet can install.
func TestShippedCataloguePlansWithinTheEmulatedFleet(t *testing.T) {
	supported := talosemu.SupportedVersions()

	for _, from := range supported {
		for _, to := range supported {
			plan, err := versions.Shipped().Plan([]string{from}, talosemu.DefaultKubernetesVersion, to)
			if err != nil {
				t.Errorf("%s -> %s: %v", from, to, err)

				continue
			}

			for _, hop := range hopVersions(plan) {
				if !slices.Contains(supported, hop) {
					t.Errorf("%s -> %s goes through %s, which the emulated fleet cannot install (%s)", from, to, hop, plan)
				}
			}
		}
	}
}
