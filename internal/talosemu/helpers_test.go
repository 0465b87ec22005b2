package talosemu_test

import (
	"context"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// testTimeout bounds every wait of a test. The fleet's operations take seconds, but an etcd membership change is
// refused for up to 5 s after peers reconnect (strict reconfig check) and is retried for up to 30 s, and under -race
// with other test packages running a wipe-and-rejoin after a reboot has taken over a minute.
const testTimeout = 3 * time.Minute

func testContext(t *testing.T) context.Context {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)

	return ctx
}

// startFleet starts a fleet in a temporary state dir and closes it at the end of the test.
func startFleet(t *testing.T, opts ...talosemu.Option) *talosemu.Fleet {
	t.Helper()

	// Warnings and errors reach the test log, so a failure shows what the fleet ran into (an etcd member that
	// would not start, ...).
	logger := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))

	fleet, err := talosemu.New(testContext(t), append([]talosemu.Option{talosemu.WithStateDir(t.TempDir()), talosemu.WithLogger(logger)}, opts...)...)
	if err != nil {
		t.Fatalf("starting fleet: %v", err)
	}

	t.Cleanup(func() {
		if err := fleet.Close(); err != nil {
			t.Errorf("closing fleet: %v", err)
		}
	})

	return fleet
}

// talosClient connects a stock machinery client with the talosconfig the fleet wrote.
func talosClient(t *testing.T, fleet *talosemu.Fleet) *client.Client {
	t.Helper()

	c, err := client.New(testContext(t), client.WithConfigFromFile(fleet.TalosconfigPath()))
	if err != nil {
		t.Fatalf("creating Talos client: %v", err)
	}

	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return c
}

// waitEvent waits for a journal event of a node.
func waitEvent(ctx context.Context, t *testing.T, fleet *talosemu.Fleet, node, event string) talosemu.Entry {
	t.Helper()

	entry, err := fleet.Journal().Wait(ctx, talosemu.MatchEvent(node, event))
	if err != nil {
		t.Fatalf("waiting for %s of %s: %v", event, node, err)
	}

	return entry
}
