package talosemu_test

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// BenchmarkLiteFleet measures the start-up time (ns/op, and the CPU time it took) and the heap of a lite fleet of 1,000 and 10,000 nodes
// (clusters of 3 control planes and 7 workers); the 1,000-node fleet is the baseline the per-node costs of the
// 10,000-node one compare to.
func BenchmarkLiteFleet(b *testing.B) {
	for _, nodes := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			var before, after runtime.MemStats

			for b.Loop() {
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&before)
				b.StartTimer()

				start, cpuStart := time.Now(), cpuTime(b)

				fleet, err := talosemu.New(b.Context(), talosemu.WithStateDir(b.TempDir()), talosemu.WithLite(),
					talosemu.WithClusters(nodes/10), talosemu.WithControlPlanes(3), talosemu.WithWorkers(7), talosemu.WithRebootDowntime(0))
				if err != nil {
					b.Fatal(err)
				}

				startup, cpu := time.Since(start), cpuTime(b)-cpuStart

				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&after)

				if got := len(fleet.Nodes()); got != nodes {
					b.Fatalf("fleet has %d nodes, want %d", got, nodes)
				}

				heap := float64(after.HeapInuse) - float64(before.HeapInuse)
				b.ReportMetric(heap/(1<<20), "heap-MB")
				b.ReportMetric(heap/float64(nodes)/(1<<10), "heap-KB/node")
				b.ReportMetric(float64(startup.Microseconds())/float64(nodes), "startup-µs/node")
				b.ReportMetric(float64(cpu.Microseconds())/float64(nodes), "cpu-µs/node")

				if err = fleet.Close(); err != nil {
					b.Fatal(err)
				}

				b.StartTimer()
			}
		})
	}
}

// cpuTime is the CPU time (user and system) the process used so far: unlike wall time, it does not grow when other
// processes compete for the machine's cores.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()

	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		b.Fatal(err)
	}

	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}
