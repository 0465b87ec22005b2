package talos_test

import "testing"

// BenchmarkObserve measures one MachineStatus observation (version, machine status, boot ID, node name) of an
// emulated node through the fleet's mTLS apid endpoint, against one Version call in the same run as the
// baseline: the ratio is what a full observation costs over a single round trip.
func BenchmarkObserve(b *testing.B) {
	_, c := startEmulatedCluster(b, "1.13.4")

	b.Run("version-baseline", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Version(b.Context(), "c1-w-1"); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("machine-status", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.MachineStatus(b.Context(), "c1-w-1"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
