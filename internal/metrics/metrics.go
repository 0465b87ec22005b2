// Package metrics is the engine's instrumentation, in one place so that no controller carries any: Prometheus
// metrics and the log line of every upgrade transition.
//
// Gauges of where upgrades stand are computed from the state when scraped (stateCollector), so they are never out
// of step with it and survive restarts. Counters and histograms of transitions, and the transition log lines, come
// from watching the upgrade statuses (transitions.go): a transition is a change of a phase between two versions of
// a resource, so a reconcile that writes nothing new, or writes the same phase again, counts nothing; they are
// process-local and start from zero with each engine. The store's commits and the API's watch streams are measured
// through hooks the store and the gRPC server take (CommitObserver, StreamInterceptor).
package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Namespace prefixes every metric name.
const Namespace = "upshift"

// Metrics is the engine's instrumentation: a prometheus.Collector of every upshift metric, and the transition
// watcher (Run) that feeds the counters and histograms and logs each transition.
type Metrics struct {
	state  state.State
	logger *zap.Logger

	collectors []prometheus.Collector

	machineUpgradesDone   *prometheus.CounterVec
	machineUpgradesFailed *prometheus.CounterVec
	machineStepSeconds    *prometheus.HistogramVec
	machineUpgradeSeconds prometheus.Histogram
	kubernetesStepSeconds *prometheus.HistogramVec
	commitSeconds         prometheus.Histogram
	commitWrites          prometheus.Histogram
	watchStreams          prometheus.Gauge
}

// New returns the instrumentation of an engine; transitions are logged to logger. It is made before the engine's
// store opens (the store reports its commits to it), so the state comes later, with Bind.
func New(logger *zap.Logger) *Metrics {
	m := &Metrics{
		logger: logger,
		machineUpgradesDone: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "machine_upgrades_done_total",
			Help: "Machine Talos upgrades that reached Done, since the engine started.",
		}, []string{"cluster"}),
		machineUpgradesFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "machine_upgrades_failed_total",
			Help: "Machine Talos upgrades that Failed, by the reason their error starts with, since the engine started.",
		}, []string{"cluster", "reason"}),
		machineStepSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "machine_upgrade_step_duration_seconds",
			Help:    "How long each step of a machine's Talos upgrade took, by step.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 14), // 0.25 s to about 34 min
		}, []string{"step"}),
		machineUpgradeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "machine_upgrade_duration_seconds",
			Help:    "How long a machine's Talos upgrade took from leaving Queued to Done.",
			Buckets: prometheus.ExponentialBuckets(5, 2, 11), // 5 s to about 85 min
		}),
		kubernetesStepSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "kubernetes_upgrade_step_duration_seconds",
			Help:    "How long each step of a Kubernetes upgrade took to reach Done, by step kind.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
		}, []string{"step"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "store_commit_duration_seconds",
			Help:    "How long one group commit of the state store took (bbolt transaction and fsync).",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14), // 0.2 ms to about 1.6 s
		}),
		commitWrites: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "store_commit_writes",
			Help:    "How many writes one group commit of the state store carried.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 to 1024
		}),
		watchStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "api_watch_streams",
			Help: "Watch streams open on the gRPC API.",
		}),
	}

	m.collectors = []prometheus.Collector{
		m.machineUpgradesDone, m.machineUpgradesFailed, m.machineStepSeconds, m.machineUpgradeSeconds,
		m.kubernetesStepSeconds, m.commitSeconds, m.commitWrites, m.watchStreams,
	}

	return m
}

// Bind gives the metrics the engine's state, which the gauges are read from and the transitions watched in. Call
// it once, before Run and before the metrics are first collected.
func (m *Metrics) Bind(st state.State) {
	m.state = st
	m.collectors = append(m.collectors, stateCollector{state: st})
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors {
		c.Collect(ch)
	}
}

// CommitObserver records one group commit of the store: how long it took and how many writes it carried.
func (m *Metrics) CommitObserver(took time.Duration, writes int) {
	m.commitSeconds.Observe(took.Seconds())
	m.commitWrites.Observe(float64(writes))
}

// StreamInterceptor counts the Watch streams open on the gRPC API.
func (m *Metrics) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !strings.HasSuffix(info.FullMethod, "/Watch") {
		return handler(srv, ss)
	}

	m.watchStreams.Inc()
	defer m.watchStreams.Dec()

	return handler(srv, ss)
}

// Run watches the upgrade statuses until ctx ends, counting and logging every transition.
func (m *Metrics) Run(ctx context.Context) {
	newTransitions(m).run(ctx)
}
