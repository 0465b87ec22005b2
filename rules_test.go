package upshift_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// skipPromtoolEnv lets a machine without promtool (Debian package prometheus) skip TestPrometheusRules; without it
// a missing promtool fails the test, so CI cannot pass with the rules untested.
const skipPromtoolEnv = "UPSHIFT_SKIP_PROMTOOL"

// evalAt is when the rule tests look at the alerts: two hours into series that hold the scraped values from time 0,
// past every rule's `for:`. Timestamps in the state are set on this clock (Unix seconds from 0), as promtool's is.
const evalAt = 2 * time.Hour

// Each alert rule of examples/prometheus-rules.yaml fires on the series a running engine exports for a state in
// which it should, with exactly the labels expected, and stays silent on the series of a state that is fine.
// The series are scraped from an engine's /metrics, then held constant by promtool's rule test.
func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv(skipPromtoolEnv) != "" {
			t.Skipf("promtool not found and %s is set", skipPromtoolEnv)
		}

		t.Fatalf("promtool not found (apt-get install prometheus, or set %s=1 to skip): %v", skipPromtoolEnv, err)
	}

	at := func(d time.Duration) time.Time { return time.Unix(0, 0).Add(d) }

	firing := scrapeEngine(t, []resource.Resource{
		talosStatus("failed", upgrade.PhaseFailed),
		kubernetesStatus("blocked", upgrade.PhaseBlocked),
		talosStatus("stuck", upgrade.PhaseUpgrading),
		machineUpgradeStatus("stuck-w-1", "stuck", upgrade.MachineDraining, at(time.Minute)),
		machineStatus("stuck-w-1", "stuck", true),
		talosStatus("unreachable", upgrade.PhaseUpgrading),
		machineUpgradeStatus("unreachable-w-1", "unreachable", upgrade.MachineRebooting, at(evalAt-10*time.Minute)),
		machineStatus("unreachable-w-1", "unreachable", false),
		etcdStatus("etcd", true, true, false),
	})

	silent := scrapeEngine(t, []resource.Resource{
		talosStatus("done", upgrade.PhaseDone),
		kubernetesStatus("done", upgrade.PhaseDone),
		talosStatus("paused", upgrade.PhasePaused),
		talosStatus("moving", upgrade.PhaseUpgrading),
		machineUpgradeStatus("moving-w-1", "moving", upgrade.MachineRebooting, at(evalAt-time.Minute)),
		machineStatus("moving-w-1", "moving", true),
		machineUpgradeStatus("moving-w-2", "moving", upgrade.MachineQueued, time.Time{}),
		machineStatus("moving-w-2", "moving", false),
		etcdStatus("moving", true, true, true),
		etcdStatus("single", true),
	})

	rules, err := filepath.Abs(filepath.Join("examples", "prometheus-rules.yaml"))
	require.NoError(t, err)

	// Each alert's labels, and its annotations as rendered (so a broken template fails too).
	type alert struct{ labels, annotations map[string]string }

	expected := map[string][]alert{
		"UpshiftUpgradeFailed": {{
			labels: map[string]string{"cluster": "failed", "upgrade": "talos", "phase": "Failed", "severity": "critical"},
			annotations: map[string]string{
				"summary":     "The talos upgrade of cluster failed failed",
				"description": "`upshift status failed` names the machine and the reason; `upshift upgrade retry` tries again once it is fixed.",
			},
		}},
		"UpshiftUpgradeBlocked": {{
			labels: map[string]string{"cluster": "blocked", "upgrade": "kubernetes", "phase": "Blocked", "severity": "warning"},
			annotations: map[string]string{
				"summary":     "The kubernetes upgrade of cluster blocked has been blocked for 30 minutes",
				"description": "`upshift status blocked` says why (the plan, etcd, locks or the pre-checks).",
			},
		}},
		"UpshiftUpgradeStuck": {{
			labels: map[string]string{"cluster": "stuck", "upgrade": "talos", "phase": "Upgrading", "severity": "warning"},
			annotations: map[string]string{
				"summary":     "The talos upgrade of cluster stuck has not moved for over an hour",
				"description": "`upshift status stuck` shows the step each machine is in and what it waits for.",
			},
		}},
		"UpshiftMachineUnreachableDuringUpgrade": {{
			labels: map[string]string{"cluster": "unreachable", "machine": "unreachable-w-1", "severity": "warning"},
			annotations: map[string]string{
				"summary":     "Machine unreachable-w-1 of cluster unreachable is unreachable in the middle of its upgrade",
				"description": "The step retries until its timeout, then fails the machine; check the node's console.",
			},
		}},
		"UpshiftEtcdCannotLoseMember": {{
			labels: map[string]string{"cluster": "etcd", "severity": "critical"},
			annotations: map[string]string{
				"summary":     "etcd of cluster etcd cannot lose a member: 2 healthy",
				"description": "`upshift get etcdstatus etcd` lists the members and their health.",
			},
		}},
	}

	var firingTests, silentTests []map[string]any

	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for name := range expected {
			if !yield(name) {
				return
			}
		}
	}) {
		var alerts []map[string]any
		for _, a := range expected[name] {
			alerts = append(alerts, map[string]any{"exp_labels": a.labels, "exp_annotations": a.annotations})
		}

		firingTests = append(firingTests, map[string]any{"eval_time": evalAt.String(), "alertname": name, "exp_alerts": alerts})
		silentTests = append(silentTests, map[string]any{"eval_time": evalAt.String(), "alertname": name, "exp_alerts": []any{}})
	}

	ruleTest := map[string]any{
		"rule_files":          []string{rules},
		"evaluation_interval": "1m",
		"tests": []map[string]any{
			{"name": "firing", "interval": "1m", "input_series": firing, "alert_rule_test": firingTests},
			{"name": "silent", "interval": "1m", "input_series": silent, "alert_rule_test": silentTests},
		},
	}

	out, err := yaml.Marshal(ruleTest)
	require.NoError(t, err)

	testFile := filepath.Join(t.TempDir(), "rules_test.yaml")
	require.NoError(t, os.WriteFile(testFile, out, 0o600))

	result, err := exec.CommandContext(t.Context(), promtool, "test", "rules", testFile).CombinedOutput() //nolint:gosec // promtool from PATH
	require.NoError(t, err, "promtool test rules:\n%s\ntest file:\n%s", result, out)
}

// scrapeEngine runs an engine (no gRPC API, no controllers running) whose state holds resources, scrapes its
// metrics over HTTP as Prometheus would, and returns each gauge and counter sample as a promtool input series
// that holds its value for three hours.
func scrapeEngine(t *testing.T, resources []resource.Resource) []map[string]string {
	t.Helper()

	engine, err := upshift.New(upshift.WithDataDir(t.TempDir()), upshift.WithListenAddress(""))
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, engine.Close()) })

	for _, r := range resources {
		require.NoError(t, engine.State().Create(t.Context(), r, state.WithCreateOwner("test")), "creating %s", r.Metadata())
	}

	registry := prometheus.NewRegistry()
	require.NoError(t, registry.Register(engine.Metrics()))

	srv := httptest.NewServer(promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	defer srv.Close()

	resp, err := http.Get(srv.URL) //nolint:noctx // a loopback test server
	require.NoError(t, err)

	defer resp.Body.Close() //nolint:errcheck

	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)

	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	require.NoError(t, err)

	var series []map[string]string

	for name, family := range families {
		for _, m := range family.GetMetric() {
			var value float64

			switch family.GetType() {
			case dto.MetricType_GAUGE:
				value = m.GetGauge().GetValue()
			case dto.MetricType_COUNTER:
				value = m.GetCounter().GetValue()
			default:
				continue // histograms: no rule reads them
			}

			labels := make([]string, 0, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}

			series = append(series, map[string]string{
				"series": name + "{" + strings.Join(labels, ",") + "}",
				"values": strconv.FormatFloat(value, 'f', -1, 64) + "+0x180",
			})
		}
	}

	require.NotEmpty(t, series)

	return series
}

func talosStatus(clusterID string, phase upgrade.ClusterPhase) *upgrade.TalosUpgradeStatus {
	r := upgrade.NewTalosUpgradeStatus(clusterID)
	r.TypedSpec().Phase = phase

	return r
}

func kubernetesStatus(clusterID string, phase upgrade.ClusterPhase) *upgrade.KubernetesUpgradeStatus {
	r := upgrade.NewKubernetesUpgradeStatus(clusterID)
	r.TypedSpec().Phase = phase

	return r
}

func machineUpgradeStatus(id, clusterID string, phase upgrade.MachinePhase, changed time.Time) *upgrade.MachineUpgradeStatus {
	r := upgrade.NewMachineUpgradeStatus(id)
	r.TypedSpec().Cluster, r.TypedSpec().Phase, r.TypedSpec().PhaseChangedAt = clusterID, phase, changed

	return r
}

func machineStatus(id, clusterID string, reachable bool) *observe.MachineStatus {
	r := observe.NewMachineStatus(id)
	r.TypedSpec().Cluster, r.TypedSpec().Reachable = clusterID, reachable

	return r
}

// etcdStatus is a cluster's etcd with one voting member per entry of healthy.
func etcdStatus(clusterID string, healthy ...bool) *observe.EtcdStatus {
	r := observe.NewEtcdStatus(clusterID)

	for i, h := range healthy {
		r.TypedSpec().Members = append(r.TypedSpec().Members, observe.EtcdMember{ID: strconv.Itoa(i + 1), Started: true, Healthy: h})
	}

	return r
}
