package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/internal/loopback"
	"github.com/upshift-io/upshift/internal/metrics"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// TestMonitoringDuringRollback runs `upshift serve --metrics-listen ADDR --log-format json` (the built binary, its
// default settings) over a 7-machine cluster whose worker c1-w-1 rolls back, then retries it to the end. /metrics
// shows the phase change, the failure counted with reason "rolled back", the steps' and machines' durations; the
// log has one JSON line per transition with cluster, machine, step and reason, and little else.
func TestMonitoringDuringRollback(t *testing.T) {
	metricsAddr, err := loopback.Addr()
	require.NoError(t, err)

	clientConfig := filepath.Join(t.TempDir(), "config")
	bed := startBed(t, testbed.WithEngineProcess(func(dataDir, listen string) *exec.Cmd {
		cmd := exec.Command(binary, "serve", "--data-dir", dataDir, "--listen", listen, //nolint:gosec // the binary built by TestMain
			"--metrics-listen", metricsAddr, "--log-format", "json")
		cmd.Env = append(os.Environ(), "UPSHIFT_CONFIG="+clientConfig)

		return cmd
	}), testbed.WithFleetOptions(
		talosemu.WithControlPlanes(3), talosemu.WithWorkers(4), talosemu.WithTalosVersion("1.13.4"),
		talosemu.WithRebootDowntime(rebootDowntime),
	))
	logOnFailure(t, bed, "c1")

	waitObserved(t, bed, "1.13.4")

	st := bed.State()
	waitTalos(t, st, "c1", time.Minute, "the cluster to be on its version", phaseIs(upgrade.PhaseDone, "1.13.4"))

	// A watch of the test's own, open while it scrapes (the server has it once it sends the initial contents).
	watchCtx, stopWatch := context.WithCancel(t.Context())
	events := make(chan state.Event, 100)
	require.NoError(t, st.WatchKind(watchCtx, upgrade.NewTalosUpgradeStatus("").Metadata(), events, state.WithBootstrapContents(true)))

	for ev := range events {
		require.NotEqual(t, state.Errored, ev.Type, "%v", ev.Error)

		if ev.Type == state.Bootstrapped {
			break
		}
	}

	before := scrape(t, metricsAddr)

	stopWatch()
	assert.Equal(t, 1.0, before.value(t, "upshift_cluster_upgrade_phase", map[string]string{"cluster": "c1", "upgrade": "talos", "phase": "Done"}))
	assert.Equal(t, 3.0, before.value(t, "upshift_etcd_members", map[string]string{"cluster": "c1"}))
	assert.Positive(t, before.histogramCount("upshift_store_commit_duration_seconds"), "commits measured")
	assert.Positive(t, before.histogramCount("upshift_store_commit_writes"), "commit sizes measured")
	assert.GreaterOrEqual(t, before.value(t, "upshift_api_watch_streams", map[string]string{}), 1.0, "the test's watch is open")

	require.NoError(t, bed.Fleet.SetFault(t.Context(), "c1-w-1", talosemu.FaultRollback))
	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.TalosVersion = "v1.14.1" })

	waitTalos(t, st, "c1", 5*time.Minute, "the rollout to fail", func(s *upgrade.TalosUpgradeStatusSpec) bool { return s.Phase == upgrade.PhaseFailed })

	failed := scrape(t, metricsAddr)
	assert.Equal(t, 1.0, failed.value(t, "upshift_cluster_upgrade_phase", map[string]string{"cluster": "c1", "upgrade": "talos", "phase": "Failed"}))
	assert.Equal(t, 0.0, failed.value(t, "upshift_cluster_upgrade_phase", map[string]string{"cluster": "c1", "upgrade": "talos", "phase": "Done"}))
	assert.Equal(t, 1.0, failed.value(t, "upshift_machine_upgrades_failed_total", map[string]string{"cluster": "c1", "reason": "rolled back"}))
	assert.Equal(t, 1.0, failed.value(t, "upshift_machines_upgrade_phase", map[string]string{"cluster": "c1", "phase": "Failed"}))
	assert.Equal(t, 3.0, failed.value(t, "upshift_machine_upgrades_done_total", map[string]string{"cluster": "c1"}), "the control planes")

	for _, step := range []upgrade.MachinePhase{
		upgrade.MachinePullingImage, upgrade.MachineInstalling, upgrade.MachineCheckingEtcd, upgrade.MachineCordoning,
		upgrade.MachineDraining, upgrade.MachineRebooting, upgrade.MachineWaitingReady, upgrade.MachineUncordoning,
	} {
		assert.GreaterOrEqual(t, failed.histogramCount("upshift_machine_upgrade_step_duration_seconds", "step", string(step)), uint64(3),
			"%s of at least the control planes", step)
	}

	require.NoError(t, bed.Fleet.ClearFault(t.Context(), "c1-w-1", talosemu.FaultRollback))
	mustCLI(t, bed, "upgrade", "retry", "c1", "--machine", "c1-w-1")
	waitTalos(t, st, "c1", 5*time.Minute, "the retried rollout to finish", phaseIs(upgrade.PhaseDone, "1.14.1"))

	done := scrape(t, metricsAddr)
	assert.Equal(t, 1.0, done.value(t, "upshift_cluster_upgrade_phase", map[string]string{"cluster": "c1", "upgrade": "talos", "phase": "Done"}))
	assert.Equal(t, 7.0, done.value(t, "upshift_machine_upgrades_done_total", map[string]string{"cluster": "c1"}))
	assert.Equal(t, 1.0, done.value(t, "upshift_machine_upgrades_failed_total", map[string]string{"cluster": "c1", "reason": "rolled back"}))
	assert.Equal(t, uint64(7), done.histogramCount("upshift_machine_upgrade_duration_seconds"))
	assert.Equal(t, 7.0, done.value(t, "upshift_machines_upgrade_phase", map[string]string{"cluster": "c1", "phase": "Done"}))

	checkTransitionLog(t, bed)
}

// checkTransitionLog reads the engine's log: every line is JSON, every transition line carries cluster, machine,
// step and reason, each machine has exactly one line per change of step its event log holds, and the lines that
// are not transitions are few.
func checkTransitionLog(t *testing.T, bed *testbed.Bed) {
	t.Helper()

	logs, err := filepath.Glob(filepath.Join(filepath.Dir(bed.EngineDir()), "engine-*.log"))
	require.NoError(t, err)
	require.Len(t, logs, 1)

	f, err := os.Open(logs[0])
	require.NoError(t, err)

	defer f.Close() //nolint:errcheck

	perMachine := map[string]int{}
	total, transitionLines := 0, 0

	scanner := bufio.NewScanner(f)
	scanner.Buffer(nil, 1<<20)

	for scanner.Scan() {
		line := scanner.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue // serve's own messages on stdout ("upshift serving on …"), which the bed keeps in the same file
		}

		var entry map[string]any
		require.NoError(t, json.Unmarshal(line, &entry), "%s", line)

		total++

		msg, _ := entry["msg"].(string) //nolint:errcheck // checked below
		assert.NotEqual(t, "reconcile succeeded", msg, "per-reconcile lines are at debug")

		switch msg {
		case metrics.MsgMachineStep, metrics.MsgClusterPhase, metrics.MsgKubernetesStep:
		default:
			continue
		}

		transitionLines++

		for _, field := range []string{"cluster", "machine", "step", "reason"} {
			assert.Contains(t, entry, field, "%s", line)
		}

		if msg == metrics.MsgMachineStep && entry["upgrade"] == metrics.UpgradeTalos {
			perMachine[entry["machine"].(string)]++ //nolint:forcetypeassert // a string by the check above
		}
	}

	require.NoError(t, scanner.Err())

	client, err := bed.Dial()
	require.NoError(t, err)

	defer client.Close() //nolint:errcheck

	changes := 0

	for _, n := range bed.Fleet.Nodes() {
		hist, err := client.History(t.Context(), resources.Namespace, upgrade.MachineUpgradeStatusType, resource.ID(n.Name()))
		require.NoError(t, err)

		phases := 0
		last := ""

		for _, ev := range hist.Events {
			var r struct {
				Spec struct {
					Phase string `yaml:"phase"`
				} `yaml:"spec"`
			}

			require.NoError(t, yaml.Unmarshal([]byte(ev.Resource), &r))

			if ev.Kind != "destroyed" && r.Spec.Phase != last {
				phases++
			}

			last = r.Spec.Phase
		}

		assert.Equal(t, phases, perMachine[n.Name()], "%s: one line per change of step in its event log", n.Name())
		changes += phases
	}

	t.Logf("%d log lines, %d transition lines, %d machine step changes", total, transitionLines, changes)
	assert.Positive(t, changes)
	assert.LessOrEqual(t, total, 3*transitionLines, "at most a few lines per transition")
}

// scraped is one scrape of /metrics.
type scraped map[string]*dto.MetricFamily

func scrape(t *testing.T, addr string) scraped {
	t.Helper()

	resp, err := http.Get("http://" + addr + "/metrics") //nolint:noctx // loopback, the test's deadline bounds it
	require.NoError(t, err)

	defer resp.Body.Close() //nolint:errcheck

	require.Equal(t, http.StatusOK, resp.StatusCode)

	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)

	return families
}

// matching yields the series of name whose labels include want.
func (s scraped) matching(name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric

	for _, m := range s[name].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}

		ok := true

		for k, v := range want {
			ok = ok && labels[k] == v
		}

		if ok {
			out = append(out, m)
		}
	}

	return out
}

// value is the value of the one gauge or counter series of name with exactly these labels.
func (s scraped) value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()

	series := s.matching(name, labels)
	require.Len(t, series, 1, "%s%v", name, labels)

	if c := series[0].GetCounter(); c != nil {
		return c.GetValue()
	}

	return series[0].GetGauge().GetValue()
}

// histogramCount is the number of observations of the histogram name, over its series with label=value
// (every series without a label given).
func (s scraped) histogramCount(name string, labelValue ...string) uint64 {
	want := map[string]string{}
	if len(labelValue) == 2 {
		want[labelValue[0]] = labelValue[1]
	}

	var n uint64
	for _, m := range s.matching(name, want) {
		n += m.GetHistogram().GetSampleCount()
	}

	return n
}
