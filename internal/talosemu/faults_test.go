package talosemu_test

import (
	"context"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/upshift-io/upshift/internal/talosemu"
)

func TestParseNodeFault(t *testing.T) {
	t.Parallel()

	nf, err := talosemu.ParseNodeFault("c1-w-1=rollback")
	if err != nil || nf != (talosemu.NodeFault{Node: "c1-w-1", Fault: talosemu.FaultRollback}) {
		t.Fatalf("got %+v, %v", nf, err)
	}

	nf, err = talosemu.ParseNodeFault("c1-w-2=api-down:30s")
	if err != nil || nf != (talosemu.NodeFault{Node: "c1-w-2", Fault: talosemu.FaultAPIDown, For: 30 * time.Second}) {
		t.Fatalf("got %+v, %v", nf, err)
	}

	for _, bad := range []string{"c1-w-1", "=rollback", "c1-w-1=melt", "c1-w-1=api-down:soon", "c1-w-1=api-down:-1s"} {
		if _, err := talosemu.ParseNodeFault(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(6),
		talosemu.WithTalosVersion(oldVersion), talosemu.WithRebootDowntime(0),
		talosemu.WithFault("c1-w-1", talosemu.FaultInstallFail),
		talosemu.WithFault("c1-w-2", talosemu.FaultRollback),
		talosemu.WithFault("c1-w-3", talosemu.FaultPullFail),
		talosemu.WithFault("c1-cp-1", talosemu.FaultEtcdUnhealthy),
	)
	c := talosClient(t, fleet)
	ctx := testContext(t)
	image := talosemu.InstallerImage(newVersion)

	reboot := func(node string) talosemu.Entry {
		t.Helper()

		before := len(fleet.Journal().Entries())

		if err := c.Reboot(client.WithNode(ctx, node)); err != nil {
			t.Fatalf("reboot %s: %v", node, err)
		}

		entry, err := fleet.Journal().Wait(ctx, func(e talosemu.Entry) bool {
			return e.Node == node && e.Event == talosemu.EventRebootUp && e.Time.After(fleet.Journal().Entries()[before-1].Time)
		})
		if err != nil {
			t.Fatal(err)
		}

		return entry
	}

	t.Run("install-fail", func(t *testing.T) {
		if code, err := lifecycleUpgrade(t, c, "c1-w-1", image); err != nil || code == 0 {
			t.Fatalf("want a non-zero exit code, got %d, %v", code, err)
		}

		if up := reboot("c1-w-1"); up.Version != oldVersion {
			t.Fatalf("a failed install changed the version to %s", up.Version)
		}
	})

	t.Run("rollback", func(t *testing.T) {
		if code, err := lifecycleUpgrade(t, c, "c1-w-2", image); err != nil || code != 0 {
			t.Fatalf("install: %d, %v", code, err)
		}

		if up := reboot("c1-w-2"); up.Version != oldVersion {
			t.Fatalf("want a rollback to %s, got %s", oldVersion, up.Version)
		}

		if _, err := fleet.Journal().Wait(ctx, talosemu.MatchEvent("c1-w-2", talosemu.EventRolledBack)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pull-fail and unknown images", func(t *testing.T) {
		pull := func(node, ref string) error {
			stream, err := c.ImageClient.Pull(client.WithNode(ctx, node), &machine.ImageServicePullRequest{ImageRef: ref})
			if err != nil {
				return err
			}

			_, err = stream.Recv()

			return err
		}

		if err := pull("c1-w-3", image); status.Code(err) != codes.NotFound {
			t.Fatalf("pull with pull-fail: want NotFound, got %v", err)
		}

		if err := pull("c1-w-4", talosemu.InstallerImage("1.99.0")); status.Code(err) != codes.NotFound {
			t.Fatalf("pull of an unknown version: want NotFound, got %v", err)
		}

		if err := pull("c1-w-4", image); err != nil {
			t.Fatalf("pull of a known version: %v", err)
		}
	})

	t.Run("etcd-unhealthy", func(t *testing.T) {
		resp, err := c.MachineClient.EtcdStatus(client.WithNode(ctx, "c1-cp-1"), &emptypb.Empty{})
		if err != nil || len(resp.GetMessages()[0].GetMemberStatus().GetErrors()) == 0 {
			t.Fatalf("want etcd errors, got %v, %v", resp, err)
		}

		if err = fleet.ClearFault(ctx, "c1-cp-1", talosemu.FaultEtcdUnhealthy); err != nil {
			t.Fatal(err)
		}

		resp, err = c.MachineClient.EtcdStatus(client.WithNode(ctx, "c1-cp-1"), &emptypb.Empty{})
		if err != nil || len(resp.GetMessages()[0].GetMemberStatus().GetErrors()) != 0 {
			t.Fatalf("want a healthy member after clearing the fault, got %v, %v", resp, err)
		}
	})

	t.Run("api-down", func(t *testing.T) {
		if err := fleet.SetFault(ctx, "c1-w-5", talosemu.FaultAPIDown); err != nil {
			t.Fatal(err)
		}

		if _, err := version(t, c, "c1-w-5"); status.Code(err) != codes.Unavailable {
			t.Fatalf("want Unavailable, got %v", err)
		}

		if err := fleet.ClearFault(ctx, "c1-w-5", talosemu.FaultAPIDown); err != nil {
			t.Fatal(err)
		}

		if _, err := version(t, c, "c1-w-5"); err != nil {
			t.Fatalf("after clearing api-down: %v", err)
		}

		// For a while: the fault clears itself.
		if err := fleet.SetFaultFor(ctx, "c1-w-5", talosemu.FaultAPIDown, liteDowntime); err != nil {
			t.Fatal(err)
		}

		if _, err := version(t, c, "c1-w-5"); status.Code(err) != codes.Unavailable {
			t.Fatalf("want Unavailable, got %v", err)
		}

		node, err := fleet.Node("c1-w-5")
		if err != nil {
			t.Fatal(err)
		}

		for !node.Up() {
			select {
			case <-ctx.Done():
				t.Fatal("api-down did not clear itself")
			case <-time.After(10 * time.Millisecond):
			}
		}
	})

	t.Run("no-return", func(t *testing.T) {
		node, err := fleet.Node("c1-w-6")
		if err != nil {
			t.Fatal(err)
		}

		if err = fleet.SetFault(ctx, "c1-w-6", talosemu.FaultNoReturn); err != nil {
			t.Fatal(err)
		}

		if err = c.Reboot(client.WithNode(ctx, "c1-w-6")); err != nil {
			t.Fatal(err)
		}

		waitEvent(ctx, t, fleet, "c1-w-6", talosemu.EventRebootDown)

		// The fleet reboots with no downtime: a second is ample for a node that was coming back.
		waitCtx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()

		if _, err = fleet.Journal().Wait(waitCtx, talosemu.MatchEvent("c1-w-6", talosemu.EventRebootUp)); err == nil || node.Up() {
			t.Fatal("a node with no-return came back")
		}

		if err = fleet.ClearFault(ctx, "c1-w-6", talosemu.FaultNoReturn); err != nil {
			t.Fatal(err)
		}

		waitEvent(ctx, t, fleet, "c1-w-6", talosemu.EventRebootUp)
	})
}
