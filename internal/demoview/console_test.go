package demoview_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/demoview"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// Without a terminal every change is a line of its own, notes included, so a log reads as a transcript.
func TestConsolePlainPrintsTheRunAsItGoes(t *testing.T) {
	var out bytes.Buffer

	c := demoview.NewConsole(&out, false, t0)
	c.Starting(1, 3, "v1.11.6", "/tmp/d/demo.log")
	c.Introduce(demoview.Intro{
		Endpoint: "127.0.0.1:50651", StateFile: "/tmp/d/engine/state.db",
		TalosEndpoint: "127.0.0.1:32931", Talosconfig: "/tmp/d/fleet/talosconfig",
		Config: "/tmp/d/engine/admin.upshiftconfig",
	})
	c.Requested("c1", "v1.14.1")

	s := upgrade.NewMachineUpgradeStatus("c1-w-1")
	*s.TypedSpec() = upgrade.MachineUpgradeStatusSpec{
		Cluster: "c1", Phase: upgrade.MachineDraining, FromVersion: "v1.11.6", ToVersion: "v1.12.6", Attempt: 1,
		PhaseChangedAt: t0.Add(6100 * time.Millisecond),
	}
	c.Update(s)
	c.Note("c1", "✗ c1-w-1 failed: rolled back")
	c.Note("", "✓ c1-w-1: retried after its failure; the upgrade goes on")
	c.Redraw() // nothing on a pipe: the lines went out as they came
	c.KeepServing()

	assert.Equal(t, `upshift demo: starting the engine and an emulated fleet
  clusters: 1, each 3 control planes and 3 workers on Talos 1.11.6
            (real etcd members, a real kube-apiserver per cluster)
  log:      /tmp/d/demo.log

engine:  127.0.0.1:50651
  state and event log: /tmp/d/engine/state.db
fleet:   Talos API 127.0.0.1:32931
  talosconfig: /tmp/d/fleet/talosconfig
Follow it from another terminal:
  export UPSHIFT_CONFIG=/tmp/d/engine/admin.upshiftconfig
  upshift get machineupgradestatuses -w

requested: c1 to Talos v1.14.1, as `+"`upshift upgrade talos c1 --to v1.14.1`"+` does
    6.1s  c1-w-1 Draining             v1.11.6 → v1.12.6  step 2/6
          ✗ c1-w-1 failed: rolled back
          ✓ c1-w-1: retried after its failure; the upgrade goes on

The engine keeps serving on 127.0.0.1:50651 and the fleet keeps running: Ctrl-C stops both.
`, out.String())
}

// The closing summary points at the event log and at the commands that look deeper, the failed machine's history
// first; a machine off the target is the run's error.
func TestConsoleFinish(t *testing.T) {
	closing := demoview.Closing{
		Clusters: []string{"c1"}, Target: "v1.12.6", Endpoint: "127.0.0.1:50651",
		Config: "/tmp/d/engine/admin.upshiftconfig", EngineDir: "/tmp/d/engine", StateFile: "/tmp/d/engine/state.db",
	}

	var out bytes.Buffer

	c := demoview.NewConsole(&out, true, t0)
	fillFleet(c, "v1.12.6")

	require.NoError(t, c.Finish(closing, nil))
	assert.Contains(t, out.String(), "\ncluster c1\n  MACHINE    ROLE          FROM      NOW       FAILURES\n")
	assert.Contains(t, out.String(), `
Event log (every transition above, with its time and writer):
  /tmp/d/engine/state.db
Look deeper: the engine stopped with the demo (--keep keeps it up).
Serve its state again:
  upshift serve --data-dir /tmp/d/engine
and, from another terminal:
  export UPSHIFT_CONFIG=/tmp/d/engine/admin.upshiftconfig
  upshift history machineupgradestatus c1-cp-1
  upshift get machineupgradestatuses
  upshift get talosupgradestatus c1 -o yaml
  upshift status c1

Every machine runs Talos v1.12.6.
`)

	out.Reset()

	c = demoview.NewConsole(&out, true, t0)
	fillFleet(c, "v1.11.6")

	closing.Keep = true
	err := c.Finish(closing, nil)
	require.EqualError(t, err, "machine c1-cp-1 runs v1.11.6, not v1.12.6")
	assert.Contains(t, out.String(), `Look deeper, from another terminal, while the engine serves (until Ctrl-C):
  export UPSHIFT_CONFIG=/tmp/d/engine/admin.upshiftconfig
  upshift history machineupgradestatus c1-cp-1
`)
	assert.NotContains(t, out.String(), "Every machine runs")
}

// fillFleet folds the machines of fleet into c, each observed on version.
func fillFleet(c *demoview.Console, version string) {
	for _, r := range fleetResources(version) {
		c.Update(r)
	}
}
