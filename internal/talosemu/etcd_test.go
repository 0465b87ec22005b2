package talosemu_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/upshift-io/upshift/internal/talosemu"
)

func etcdClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()

	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { cli.Close() }) //nolint:errcheck

	return cli
}

// memberURLs maps member names to client URLs, from the Talos API.
func memberURLs(t *testing.T, c *client.Client, node string) map[string]string {
	t.Helper()

	resp, err := c.EtcdMemberList(client.WithNode(testContext(t), node), &machine.EtcdMemberListRequest{})
	if err != nil {
		t.Fatalf("etcd member list via %s: %v", node, err)
	}

	urls := map[string]string{}
	for _, m := range resp.GetMessages()[0].GetMembers() {
		urls[m.GetHostname()] = m.GetClientUrls()[0]
	}

	return urls
}

func etcdStatus(ctx context.Context, c *client.Client, node string) (*machine.EtcdMemberStatus, error) {
	resp, err := c.MachineClient.EtcdStatus(client.WithNode(ctx, node), &emptypb.Empty{})
	if err != nil {
		return nil, err
	}

	return resp.GetMessages()[0].GetMemberStatus(), nil
}

// readKey reads a key from one member only (serializable), polling until it has it: a member that just (re)joined
// catches up asynchronously.
func readKey(ctx context.Context, t *testing.T, endpoint, key string) string {
	t.Helper()

	cli := etcdClient(t, endpoint)

	for {
		resp, err := cli.Get(ctx, key, clientv3.WithSerializable())
		if err == nil && len(resp.Kvs) == 1 {
			return string(resp.Kvs[0].Value)
		}

		select {
		case <-ctx.Done():
			t.Fatalf("reading %q from %s: %v", key, endpoint, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestEtcdMembersFollowReboots(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithControlPlanes(3), talosemu.WithWorkers(0), talosemu.WithRebootDowntime(realDowntime))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	// The three members form one cluster: every node sees the same three members and the same leader.
	urls := memberURLs(t, c, "c1-cp-1")
	if len(urls) != 3 {
		t.Fatalf("want 3 members, got %v", urls)
	}

	var leader uint64

	for _, node := range []string{"c1-cp-1", "c1-cp-2", "c1-cp-3"} {
		st, err := etcdStatus(ctx, c, node)
		if err != nil || len(st.GetErrors()) != 0 {
			t.Fatalf("%s: etcd status %v, %v", node, st, err)
		}

		if leader == 0 {
			leader = st.GetLeader()
		} else if st.GetLeader() != leader {
			t.Fatalf("%s: leader %x, others see %x", node, st.GetLeader(), leader)
		}
	}

	endpoints := make([]string, 0, len(urls))
	for _, u := range urls {
		endpoints = append(endpoints, u)
	}

	cluster := etcdClient(t, endpoints...)

	if _, err := cluster.Put(ctx, "before", "reboots"); err != nil {
		t.Fatal(err)
	}

	// Rebooting one member keeps quorum; the member is unhealthy while down and healthy after, with its data.
	const rebooted = "c1-cp-2"

	rebootedNode, err := fleet.Node(rebooted)
	if err != nil {
		t.Fatal(err)
	}

	memberID := rebootedNode.EtcdMemberID()

	if err = c.Reboot(client.WithNode(ctx, rebooted)); err != nil {
		t.Fatal(err)
	}

	waitEvent(ctx, t, fleet, rebooted, talosemu.EventRebootDown)

	if _, err = etcdStatus(ctx, c, rebooted); status.Code(err) != codes.Unavailable {
		t.Fatalf("etcd status of a rebooting node: want Unavailable, got %v", err)
	}

	statusCtx, cancel := context.WithTimeout(ctx, time.Second)
	_, err = cluster.Status(statusCtx, urls[rebooted])

	cancel()

	if err == nil {
		t.Fatal("the rebooting member still answers etcd status")
	}

	if _, err = cluster.Put(ctx, "during", "reboot"); err != nil {
		t.Fatalf("write during the reboot of one member: %v", err)
	}

	waitEvent(ctx, t, fleet, rebooted, talosemu.EventRebootUp)

	if st, err := etcdStatus(ctx, c, rebooted); err != nil || len(st.GetErrors()) != 0 || st.GetMemberId() != memberID {
		t.Fatalf("etcd status after the reboot: %v, %v (member %x before)", st, err, memberID)
	}

	if got := readKey(ctx, t, urls[rebooted], "during"); got != "reboot" {
		t.Fatalf("rebooted member: during=%q", got)
	}

	// A legacy upgrade with preserve keeps the member and its data.
	const preserved = "c1-cp-3"

	preservedNode, err := fleet.Node(preserved)
	if err != nil {
		t.Fatal(err)
	}

	preservedID := preservedNode.EtcdMemberID()

	if _, err = c.UpgradeWithOptions(client.WithNode(ctx, preserved), client.WithUpgradeImage(talosemu.InstallerImage("1.13.4")), client.WithUpgradePreserve(true)); err != nil {
		t.Fatal(err)
	}

	waitEvent(ctx, t, fleet, preserved, talosemu.EventRebootUp)

	if preservedNode.EtcdMemberID() != preservedID {
		t.Fatalf("upgrade with preserve changed the member: %x -> %x", preservedID, preservedNode.EtcdMemberID())
	}

	// Without preserve, the member's data is wiped: it leaves the cluster and rejoins as a new member.
	const wiped = "c1-cp-1"

	wipedNode, err := fleet.Node(wiped)
	if err != nil {
		t.Fatal(err)
	}

	wipedID := wipedNode.EtcdMemberID()

	if _, err = cluster.Put(ctx, "before", "wipe"); err != nil {
		t.Fatal(err)
	}

	if _, err = c.UpgradeWithOptions(client.WithNode(ctx, wiped), client.WithUpgradeImage(talosemu.InstallerImage("1.13.4"))); err != nil {
		t.Fatal(err)
	}

	waitEvent(ctx, t, fleet, wiped, talosemu.EventEtcdWiped)
	joined := waitEvent(ctx, t, fleet, wiped, talosemu.EventEtcdJoined)
	waitEvent(ctx, t, fleet, wiped, talosemu.EventRebootUp)

	newID := wipedNode.EtcdMemberID()
	if newID == 0 || newID == wipedID || joined.MemberID != fmt.Sprintf("%016x", newID) {
		t.Fatalf("wiped member: id %x before, %x after (journal %s)", wipedID, newID, joined.MemberID)
	}

	if got := readKey(ctx, t, urls[wiped], "before"); got != "wipe" {
		t.Fatalf("rejoined member: before=%q", got)
	}

	after := memberURLs(t, c, preserved)
	if len(after) != 3 || after[wiped] != urls[wiped] {
		t.Fatalf("members after the rejoin: %v", after)
	}

	for _, e := range fleet.Journal().Entries() {
		if e.Event == talosemu.EventEtcdWiped && slices.Contains([]string{rebooted, preserved}, e.Node) {
			t.Fatalf("%s was wiped without an upgrade that asked for it", e.Node)
		}
	}
}
