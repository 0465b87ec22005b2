package talosemu

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// A wipe whose leave fails (here: its context is already over, as when the engine stops the test bed mid-reboot)
// still stops the member and frees its ports: the next start joins the cluster again instead of failing to bind
// forever (CI failure of TestEtcdMembersFollowReboots, where the leave answered "server stopped").
func TestWipeStopsTheMemberWhenLeavingFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	cluster := newEtcdCluster("wipe", zaptest.NewLogger(t))
	members := make([]*realMember, 3)

	for i, name := range []string{"cp-1", "cp-2", "cp-3"} {
		m, err := cluster.addMember(name, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}

		members[i] = m
	}

	var wg sync.WaitGroup

	errs := make([]error, len(members))

	for i, m := range members {
		wg.Go(func() { errs[i] = m.start(ctx) })
	}

	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("starting %s: %v", members[i].name, err)
		}
	}

	t.Cleanup(func() {
		for _, m := range members {
			m.stop()
		}
	})

	wiped := members[0]

	done, stop := context.WithCancel(ctx)
	stop()

	if err := wiped.wipe(done); err == nil {
		t.Fatal("wipe with an ended context: want the leave's error, got none")
	}

	if wiped.client() != nil {
		t.Fatal("member still running after a wipe whose leave failed")
	}

	if err := wiped.start(ctx); err != nil {
		t.Fatalf("starting the wiped member again: %v", err)
	}

	list, err := members[1].client().MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}

	started := 0

	for _, member := range list.Members {
		if member.Name != "" {
			started++
		}
	}

	if started != 3 || len(list.Members) != 3 {
		t.Fatalf("members after the wiped one started again: %d listed, %d started; want 3 and 3", len(list.Members), started)
	}
}
