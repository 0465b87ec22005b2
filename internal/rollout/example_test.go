package rollout_test

import (
	"fmt"

	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/cluster"
)

// A cluster whose control planes are done: two workers start (parallelism 2), the locked one waits without
// holding a slot.
func ExampleSchedule() {
	parallelism, _ := cluster.ParseParallelism("2")

	d := rollout.Schedule(rollout.Input{
		Target:      "1.14.1",
		Parallelism: parallelism,
		Machines: []rollout.Machine{
			{ID: "c1-cp-1", Role: cluster.RoleControlPlane, Version: "1.14.1"},
			{ID: "c1-w-1", Role: cluster.RoleWorker, Version: "1.13.4", Locked: true},
			{ID: "c1-w-2", Role: cluster.RoleWorker, Version: "1.13.4"},
			{ID: "c1-w-3", Role: cluster.RoleWorker, Version: "1.13.4"},
			{ID: "c1-w-4", Role: cluster.RoleWorker, Version: "1.13.4"},
		},
	})

	fmt.Println("start:", d.Start, "waiting on lock:", d.WaitingOnLock, "progress:", d.Finished, "/", d.Total)

	// Output:
	// start: [c1-w-2 c1-w-3] waiting on lock: [c1-w-1] progress: 1 / 5
}

// The steps of a control plane on Talos < 1.13: the engine checks etcd, cordons and drains before the legacy
// upgrade call, which installs and reboots in one go.
func ExampleSteps() {
	fmt.Println(rollout.Steps(rollout.FlowLegacy, cluster.RoleControlPlane))
	fmt.Println("reboots in:", rollout.RebootStep(rollout.FlowLegacy))

	// Output:
	// [Queued CheckingEtcd ForfeitingLeadership Cordoning Draining Installing WaitingReady Uncordoning Done]
	// reboots in: Installing
}
