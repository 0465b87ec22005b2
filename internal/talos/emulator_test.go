package talos_test

import (
	"context"
	"testing"
	"time"

	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/internal/talosemu"
)

// These tests run the adapter against the emulated fleet (lite: no etcd processes, no apiserver), which serves
// the real machinery services over mTLS and routes on the node metadata like apid, to prove the adapter and the
// fleet agree on the wire.

func startEmulatedCluster(t testing.TB, version string) (*talosemu.Fleet, talos.API) {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)

	fleet, err := talosemu.New(ctx, talosemu.WithStateDir(t.TempDir()), talosemu.WithLite(), talosemu.WithClusters(1),
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(1), talosemu.WithTalosVersion(version),
		talosemu.WithRebootDowntime(50*time.Millisecond))
	must(t, err)

	t.Cleanup(func() { must(t, fleet.Close()) })

	cfg, err := fleet.Talosconfig().Bytes()
	must(t, err)

	c, err := talos.New(ctx, talos.WithTalosconfig(cfg))
	must(t, err)

	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return fleet, c
}

func TestEmulatedFleetLifecycleFlow(t *testing.T) {
	fleet, c := startEmulatedCluster(t, "1.13.4")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	cp1, err := fleet.Node("c1-cp-1")
	must(t, err)

	st, err := c.MachineStatus(ctx, "c1-cp-1")
	must(t, err)

	if st.Version != "v1.13.4" || st.Stage != "running" || !st.Ready || st.BootID != cp1.BootID() || st.NodeName != "c1-cp-1" {
		t.Errorf("MachineStatus(c1-cp-1) = %+v (emulator boot ID %s)", st, cp1.BootID())
	}

	members, err := c.EtcdMembers(ctx, "c1-cp-1")
	must(t, err)

	if len(members) != 3 {
		t.Errorf("members = %+v", members)
	}

	ms, err := c.EtcdMemberStatus(ctx, "c1-cp-1")
	must(t, err)

	if ms.MemberID != cp1.EtcdMemberID() || len(ms.Errors) != 0 {
		t.Errorf("member status = %+v, emulator member %x", ms, cp1.EtcdMemberID())
	}

	must(t, c.EtcdForfeitLeadership(ctx, "c1-cp-1"))

	// The >= 1.13 flow on the worker: pull, install (staged), reboot, then it comes back on the new version.
	image := talosemu.InstallerImage("1.14.1")

	pinned, err := c.PullImage(ctx, "c1-w-1", image)
	must(t, err)
	must(t, c.Install(ctx, "c1-w-1", pinned))

	before, err := c.MachineStatus(ctx, "c1-w-1")
	must(t, err)

	if before.Version != "v1.13.4" {
		t.Errorf("version switched before the reboot: %+v", before)
	}

	must(t, c.Reboot(ctx, "c1-w-1"))

	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()

	for ; ; <-poll.C {
		after, err := c.MachineStatus(ctx, "c1-w-1")

		switch {
		case err == nil && after.BootID != before.BootID && after.Ready:
			if after.Version != "v1.14.1" {
				t.Fatalf("back after the reboot on %s", after.Version)
			}

			return
		case err != nil && !talos.IsUnreachable(err):
			t.Fatalf("observing a rebooting node: %v", err)
		case ctx.Err() != nil:
			t.Fatalf("node did not come back: %v", ctx.Err())
		}
	}
}

func TestEmulatedFleetLegacyFlow(t *testing.T) {
	fleet, c := startEmulatedCluster(t, "1.12.6")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// Talos < 1.13 has no ImageService: the adapter reports the pull as refused, not as an unreachable node.
	if _, err := c.PullImage(ctx, "c1-w-1", talosemu.InstallerImage("1.13.4")); !talos.IsRefused(err) {
		t.Fatalf("PullImage on 1.12 = %v, want refused", err)
	}

	must(t, c.LegacyUpgrade(ctx, "c1-w-1", talosemu.InstallerImage("1.13.4")))

	entry, err := fleet.Journal().Wait(ctx, talosemu.MatchMethod("c1-w-1", "/machine.MachineService/Upgrade"))
	must(t, err)

	if entry.Preserve == nil || !*entry.Preserve || entry.Image != talosemu.InstallerImage("1.13.4") {
		t.Errorf("journal entry = %+v, want preserve=true and the image", entry)
	}
}
