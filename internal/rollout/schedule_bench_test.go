package rollout_test

import (
	"fmt"
	"testing"

	"github.com/upshift-io/upshift/internal/rollout"
)

// BenchmarkSchedule measures one scheduling decision for a cluster mid-rollout (control planes done, a third of
// the workers upgraded, parallelism 25%), at the emulator's cluster size and far above it, and reports the
// cost per machine so the two sizes compare.
func BenchmarkSchedule(b *testing.B) {
	for _, size := range []int{10, 1000} {
		b.Run(fmt.Sprintf("machines=%d", size), func(b *testing.B) {
			machines := make([]rollout.Machine, 0, size)
			for i := range size {
				m := wk(fmt.Sprintf("c1-w-%d", i+1))
				if i < 3 {
					m = cp(fmt.Sprintf("c1-cp-%d", i+1))
				}

				if i < size/3 {
					upgraded(&m)
				}

				machines = append(machines, m)
			}

			in := rollout.Input{Machines: machines, Target: newV, Parallelism: par("25%")}

			b.ReportAllocs()

			for b.Loop() {
				if d := rollout.Schedule(in); len(d.Start) == 0 {
					b.Fatalf("nothing started: %s", d.Reason)
				}
			}

			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(size), "ns/machine")
		})
	}
}
