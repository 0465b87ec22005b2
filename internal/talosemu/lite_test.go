package talosemu_test

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cosiv1alpha1 "github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/internal/talosemu"
)

const (
	liteDowntime = 300 * time.Millisecond
	oldVersion   = "1.13.4"
	newVersion   = "1.14.1"
)

func readBootID(t *testing.T, c *client.Client, node string) string {
	t.Helper()

	r, err := c.Read(client.WithNode(testContext(t), node), "/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatalf("reading boot id of %s: %v", node, err)
	}

	defer r.Close() //nolint:errcheck

	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading boot id of %s: %v", node, err)
	}

	return strings.TrimSpace(string(b))
}

func version(t *testing.T, c *client.Client, node string) (string, error) {
	t.Helper()

	resp, err := c.Version(client.WithNode(testContext(t), node))
	if err != nil {
		return "", err
	}

	return resp.GetMessages()[0].GetVersion().GetTag(), nil
}

func mustVersion(t *testing.T, c *client.Client, node string) string {
	t.Helper()

	v, err := version(t, c, node)
	if err != nil {
		t.Fatalf("version of %s: %v", node, err)
	}

	return v
}

// lifecycleUpgrade runs LifecycleService.Upgrade and returns its exit code.
func lifecycleUpgrade(t *testing.T, c *client.Client, node, image string) (int32, error) {
	t.Helper()

	stream, err := c.LifecycleClient.Upgrade(client.WithNode(testContext(t), node), &machine.LifecycleServiceUpgradeRequest{
		Containerd: &common.ContainerdInstance{Driver: common.ContainerDriver_CRI, Namespace: common.ContainerdNamespace_NS_SYSTEM},
		Source:     &machine.InstallArtifactsSource{ImageName: image},
	})
	if err != nil {
		return 0, err
	}

	for {
		resp, err := stream.Recv()
		if err != nil {
			return 0, err
		}

		if code, ok := resp.GetProgress().GetResponse().(*machine.LifecycleServiceInstallProgress_ExitCode); ok {
			return code.ExitCode, nil
		}
	}
}

// stageRecorder records every MachineStatus stage a node passes through, from the node's own state.
func stageRecorder(t *testing.T, node *talosemu.Node) func() []runtime.MachineStage {
	t.Helper()

	ctx := testContext(t)
	events := make(chan safe.WrappedStateEvent[*runtime.MachineStatus])

	if err := safe.StateWatch(ctx, node.State(), runtime.NewMachineStatus().Metadata(), events); err != nil {
		t.Fatalf("watching machine status: %v", err)
	}

	stages := make(chan []runtime.MachineStage, 1)
	stages <- nil

	go func() {
		for event := range events {
			if event.Type() != state.Created && event.Type() != state.Updated {
				continue
			}

			r, err := event.Resource()
			if err != nil {
				continue
			}

			s := <-stages
			if len(s) == 0 || s[len(s)-1] != r.TypedSpec().Stage {
				s = append(s, r.TypedSpec().Stage)
			}
			stages <- s
		}
	}()

	return func() []runtime.MachineStage {
		s := <-stages
		stages <- s

		return s
	}
}

func TestRebootSwitchesVersionOnlyAfterInstall(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1),
		talosemu.WithTalosVersion(oldVersion), talosemu.WithRebootDowntime(liteDowntime))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	const node = "c1-w-1"

	emuNode, err := fleet.Node(node)
	if err != nil {
		t.Fatal(err)
	}

	stages := stageRecorder(t, emuNode)
	bootID := readBootID(t, c, node)

	// A plain reboot keeps the version and rotates the boot ID.
	if err = c.Reboot(client.WithNode(ctx, node)); err != nil {
		t.Fatalf("reboot: %v", err)
	}

	waitEvent(ctx, t, fleet, node, talosemu.EventRebootDown)

	if _, err = version(t, c, node); status.Code(err) != codes.Unavailable {
		t.Fatalf("version during the downtime: want Unavailable, got %v", err)
	}

	waitEvent(ctx, t, fleet, node, talosemu.EventRebootUp)

	if got := mustVersion(t, c, node); got != "v"+oldVersion {
		t.Fatalf("version after a plain reboot: want v%s, got %s", oldVersion, got)
	}

	secondBootID := readBootID(t, c, node)
	if secondBootID == bootID {
		t.Fatalf("boot id did not change across a reboot: %s", bootID)
	}

	// An install stages the version; it becomes the running one only with the next reboot.
	if _, err = c.ImageClient.Pull(client.WithNode(ctx, node), &machine.ImageServicePullRequest{ImageRef: talosemu.InstallerImage(newVersion)}); err != nil {
		t.Fatalf("image pull: %v", err)
	}

	code, err := lifecycleUpgrade(t, c, node, talosemu.InstallerImage(newVersion))
	if err != nil || code != 0 {
		t.Fatalf("lifecycle upgrade: exit code %d, error %v", code, err)
	}

	if got := mustVersion(t, c, node); got != "v"+oldVersion {
		t.Fatalf("version after install, before reboot: want v%s, got %s", oldVersion, got)
	}

	if err = c.Reboot(client.WithNode(ctx, node)); err != nil {
		t.Fatalf("reboot: %v", err)
	}

	up, err := fleet.Journal().Wait(ctx, func(e talosemu.Entry) bool {
		return e.Node == node && e.Event == talosemu.EventRebootUp && e.BootID != secondBootID
	})
	if err != nil {
		t.Fatal(err)
	}

	if got := mustVersion(t, c, node); got != "v"+newVersion || up.Version != newVersion {
		t.Fatalf("version after install and reboot: want v%s, got %s (journal %s)", newVersion, got, up.Version)
	}

	if readBootID(t, c, node) == secondBootID {
		t.Fatal("boot id did not change across the second reboot")
	}

	machineStatus, err := safe.StateGetByID[*runtime.MachineStatus](client.WithNode(ctx, node), c.COSI, runtime.MachineStatusID)
	if err != nil || machineStatus.TypedSpec().Stage != runtime.MachineStageRunning || !machineStatus.TypedSpec().Status.Ready {
		t.Fatalf("machine status after reboot: %v %v", machineStatus, err)
	}

	want := []runtime.MachineStage{runtime.MachineStageRunning, runtime.MachineStageRebooting, runtime.MachineStageBooting, runtime.MachineStageRunning}
	if got := stages(); len(got) != 2*len(want)-1 || !equalStages(got[:len(want)], want) || !equalStages(got[len(want)-1:], want) {
		t.Fatalf("machine stages: want %v twice, got %v", want, got)
	}
}

func equalStages(a, b []runtime.MachineStage) bool {
	if len(a) != len(b) {
		return false
	}

	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}

	return true
}

func TestInFlightCallsFailWhenTheNodeGoesDown(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1), talosemu.WithRebootDowntime(liteDowntime))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	const node = "c1-cp-1"

	// A raw COSI watch stream: the machinery COSI client would transparently resume it after the reboot.
	tlsConfig, err := fleet.ClientTLSConfig()
	if err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(fleet.Endpoint(), grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { conn.Close() }) //nolint:errcheck

	watch, err := cosiv1alpha1.NewStateClient(conn).Watch(client.WithNode(ctx, node), &cosiv1alpha1.WatchRequest{
		Namespace: runtime.NamespaceName, Type: runtime.MachineStatusType, Id: new(runtime.MachineStatusID), ApiVersion: 1,
	})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}

	if _, err = watch.Recv(); err != nil {
		t.Fatalf("first watch event: %v", err)
	}

	if err = c.Reboot(client.WithNode(ctx, node)); err != nil {
		t.Fatalf("reboot: %v", err)
	}

	for {
		if _, err = watch.Recv(); err != nil {
			break
		}
	}

	if status.Code(err) != codes.Unavailable {
		t.Fatalf("watch in flight during the reboot: want Unavailable, got %v", err)
	}
}

func TestLegacyNodesUseMachineServiceUpgrade(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(3), talosemu.WithWorkers(0),
		talosemu.WithTalosVersion("1.12.6"), talosemu.WithRebootDowntime(0))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	const node = "c1-cp-2"

	if _, err := lifecycleUpgrade(t, c, node, talosemu.InstallerImage(oldVersion)); status.Code(err) != codes.Unimplemented {
		t.Fatalf("lifecycle upgrade on a legacy node: want Unimplemented, got %v", err)
	}

	emuNode, err := fleet.Node(node)
	if err != nil {
		t.Fatal(err)
	}

	memberID := emuNode.EtcdMemberID()

	if _, err = c.UpgradeWithOptions(client.WithNode(ctx, node), client.WithUpgradeImage(talosemu.InstallerImage(oldVersion)), client.WithUpgradePreserve(true)); err != nil {
		t.Fatalf("legacy upgrade: %v", err)
	}

	waitEvent(ctx, t, fleet, node, talosemu.EventRebootUp)

	if got := mustVersion(t, c, node); got != "v"+oldVersion {
		t.Fatalf("version after legacy upgrade: want v%s, got %s", oldVersion, got)
	}

	if emuNode.EtcdMemberID() != memberID {
		t.Fatal("a preserving upgrade changed the etcd member")
	}

	entries := fleet.Journal().Entries()
	idx := slicesIndex(entries, func(e talosemu.Entry) bool { return e.Method == "/machine.MachineService/Upgrade" && e.Node == node })

	if idx < 0 || entries[idx].Image != talosemu.InstallerImage(oldVersion) || entries[idx].Preserve == nil || !*entries[idx].Preserve {
		t.Fatalf("journal does not record the legacy upgrade with its arguments: %+v", entries)
	}

	// The journal file holds the same entries as JSON lines, in order.
	raw, err := os.ReadFile(filepath.Join(fleet.StateDir(), "journal.jsonl"))
	if err != nil {
		t.Fatal(err)
	}

	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) < len(entries) {
		t.Fatalf("journal file has %d lines, the journal %d entries", len(lines), len(entries))
	}

	for i, line := range lines[:len(entries)] {
		var e talosemu.Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("journal line %d: %v", i+1, err)
		}

		if !e.Time.Equal(entries[i].Time) || e.Node != entries[i].Node || e.Method != entries[i].Method || e.Event != entries[i].Event {
			t.Fatalf("journal line %d is %+v, entry %+v", i+1, e, entries[i])
		}
	}
}

func slicesIndex[T any](s []T, f func(T) bool) int {
	for i, v := range s {
		if f(v) {
			return i
		}
	}

	return -1
}
