package machineview_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/upshift-io/upshift/internal/machineview"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func TestPair(t *testing.T) {
	t.Parallel()

	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	// duringReboot is the poll made while the machine rebooted: unreachable, its last known version the old one.
	duringReboot := &observe.MachineStatusSpec{TalosVersion: "v1.13.4", Reachable: false, Error: "unreachable", ObservedAt: t0}
	done := &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineDone, FromVersion: "v1.13.4", ToVersion: "v1.14.1", PhaseChangedAt: t0.Add(time.Second)}
	waiting := &upgrade.MachineUpgradeStatusSpec{Phase: upgrade.MachineWaitingReady, FromVersion: "v1.13.4", ToVersion: "v1.14.1", PhaseChangedAt: t0.Add(-time.Second)}
	later := &observe.MachineStatusSpec{TalosVersion: "v1.14.1", Reachable: true, ObservedAt: t0.Add(2 * time.Second)}
	downLater := &observe.MachineStatusSpec{TalosVersion: "v1.14.1", Reachable: false, ObservedAt: t0.Add(2 * time.Second)}

	for _, tc := range []struct {
		name   string
		status *observe.MachineStatusSpec
		up     *upgrade.MachineUpgradeStatusSpec
		want   machineview.Machine
	}{
		{"the observation made during the reboot, the upgrade Done since", duringReboot, done, machineview.Machine{Version: "v1.14.1"}},
		{"the observation made during the reboot, the upgrade still waiting for the machine", duringReboot, waiting, machineview.Machine{Version: "v1.13.4", Unreachable: true}},
		{"an observation after the upgrade finished", later, done, machineview.Machine{Version: "v1.14.1"}},
		{"unreachable after the upgrade finished", downLater, done, machineview.Machine{Version: "v1.14.1", Unreachable: true}},
		{"no upgrade", duringReboot, nil, machineview.Machine{Version: "v1.13.4", Unreachable: true}},
		{"an upgrade Done before any observation", nil, done, machineview.Machine{Version: "v1.14.1"}},
		{"nothing known", nil, nil, machineview.Machine{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			assert.Equal(t, tc.want, machineview.Pair(tc.status, tc.up))
		})
	}
}
