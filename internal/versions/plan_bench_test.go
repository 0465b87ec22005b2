package versions_test

import (
	"fmt"
	"testing"

	"github.com/upshift-io/upshift/internal/versions"
)

// BenchmarkPlan compares a direct plan with a three-hop one over a catalogue of 40 releases (8 patches of
// each line from 1.10 to 1.14), with 10 machines per cluster as the emulator runs them.
func BenchmarkPlan(b *testing.B) {
	c := benchCatalogue(b)

	for _, tc := range []struct {
		name, host, kubernetes string
		hops                   int
	}{
		{"direct", "1.13.2", "1.33.0", 1},
		{"three-hops", "1.8.0", "1.32.0", 3},
	} {
		b.Run(tc.name, func(b *testing.B) {
			hosts := make([]string, 10)
			for i := range hosts {
				hosts[i] = tc.host
			}

			b.ReportAllocs()

			for b.Loop() {
				plan, err := c.Plan(hosts, tc.kubernetes, "1.14.7")
				if err != nil || len(plan.Hops) != tc.hops {
					b.Fatalf("plan %v, %v", plan, err)
				}
			}
		})
	}
}

// BenchmarkChoices measures listing the versions a user may pick for a 10-machine cluster over the same
// 40-release catalogue: a plan per release, what a status controller computes for every cluster.
func BenchmarkChoices(b *testing.B) {
	c := benchCatalogue(b)
	hosts := []string{"1.12.3", "1.12.3", "1.12.3", "1.12.3", "1.12.3", "1.12.3", "1.12.3", "1.12.3", "1.12.3", "1.12.3"}

	b.ReportAllocs()

	for b.Loop() {
		choices, err := c.Choices(hosts, "1.33.0")
		if err != nil || len(choices) == 0 {
			b.Fatalf("choices %v, %v", choices, err)
		}
	}
}

func benchCatalogue(b *testing.B) *versions.Catalogue {
	b.Helper()

	c := versions.NewCatalogue()

	for minor := 10; minor <= 14; minor++ {
		for patch := range 8 {
			if err := c.Add(fmt.Sprintf("1.%d.%d", minor, patch), ""); err != nil {
				b.Fatal(err)
			}
		}
	}

	return c
}
