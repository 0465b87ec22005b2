package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// The values of the "upgrade" label: which cluster-wide rollout a series is about.
const (
	UpgradeTalos      = "talos"
	UpgradeKubernetes = "kubernetes"
	UpgradeConfig     = "config"
)

// clusterPhases and machinePhases are every value a phase gauge takes: each one is exported, 0 or 1 (or a count),
// as kube-state-metrics does, so that a phase the cluster leaves drops to 0 instead of vanishing.
var (
	clusterPhases = []upgrade.ClusterPhase{
		upgrade.PhasePending, upgrade.PhaseUpgrading, upgrade.PhaseReverting, upgrade.PhasePaused,
		upgrade.PhaseBlocked, upgrade.PhaseFailed, upgrade.PhaseDone,
	}
	machinePhases = []upgrade.MachinePhase{
		upgrade.MachineQueued, upgrade.MachinePullingImage, upgrade.MachineInstalling, upgrade.MachineCheckingEtcd,
		upgrade.MachineForfeitingLeadership, upgrade.MachineCordoning, upgrade.MachineDraining, upgrade.MachineRebooting,
		upgrade.MachineWaitingReady, upgrade.MachineUncordoning, upgrade.MachineDone, upgrade.MachineFailed,
	}
)

var (
	descUpgradePhase = prometheus.NewDesc(Namespace+"_cluster_upgrade_phase",
		"The phase of a cluster's Talos upgrade, Kubernetes upgrade or config rollout: 1 for the current phase, 0 for the others.",
		[]string{"cluster", "upgrade", "phase"}, nil)
	descLastProgress = prometheus.NewDesc(Namespace+"_cluster_upgrade_last_progress_timestamp_seconds",
		"When a cluster's Talos or Kubernetes upgrade last moved: a machine's last step change, a Kubernetes step's last start or end.",
		[]string{"cluster", "upgrade"}, nil)
	descMachinesInPhase = prometheus.NewDesc(Namespace+"_machines_upgrade_phase",
		"Machines of a cluster in each phase of their Talos upgrade.",
		[]string{"cluster", "phase"}, nil)
	descMachinesLocked = prometheus.NewDesc(Namespace+"_machines_locked",
		"Machines of a cluster held by a MachineLock.",
		[]string{"cluster"}, nil)
	descEtcdMembers = prometheus.NewDesc(Namespace+"_etcd_members",
		"Voting etcd members of a cluster, as last observed.",
		[]string{"cluster"}, nil)
	descEtcdMembersHealthy = prometheus.NewDesc(Namespace+"_etcd_members_healthy",
		"Voting etcd members of a cluster that are started and healthy, as last observed.",
		[]string{"cluster"}, nil)
	descMachineReachable = prometheus.NewDesc(Namespace+"_machine_reachable",
		"Whether the engine's last observation of a machine reached its Talos API (1) or not (0).",
		[]string{"cluster", "machine"}, nil)
	descMachineInFlight = prometheus.NewDesc(Namespace+"_machine_upgrade_in_flight",
		"Whether a machine is in the middle of its Talos upgrade (1: past Queued, neither Done nor Failed).",
		[]string{"cluster", "machine"}, nil)
)

// scrapeTimeout bounds the reads of one scrape: the state is in memory, so only a stopping engine makes it wait.
const scrapeTimeout = 10 * time.Second

// stateCollector exports where every upgrade stands, read from the state at each scrape.
type stateCollector struct {
	state state.State
}

// Describe implements prometheus.Collector.
func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descUpgradePhase, descLastProgress, descMachinesInPhase, descMachinesLocked, descEtcdMembers,
		descEtcdMembersHealthy, descMachineReachable, descMachineInFlight,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A failed read makes the scrape fail (an invalid metric) rather than
// report part of the fleet as if it were all of it.
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()

	for _, collect := range []func(context.Context, chan<- prometheus.Metric) error{
		c.talosUpgrades, c.kubernetesUpgrades, c.configRollouts, c.machineUpgrades, c.summaries, c.etcd, c.machines,
	} {
		if err := collect(ctx, ch); err != nil {
			ch <- prometheus.NewInvalidMetric(descUpgradePhase, err)

			return
		}
	}
}

func phaseGauges(ch chan<- prometheus.Metric, clusterID, which string, current upgrade.ClusterPhase) {
	for _, p := range clusterPhases {
		ch <- prometheus.MustNewConstMetric(descUpgradePhase, prometheus.GaugeValue, boolValue(p == current), clusterID, which, string(p))
	}
}

func (c stateCollector) talosUpgrades(ctx context.Context, ch chan<- prometheus.Metric) error {
	list, err := safe.StateListAll[*upgrade.TalosUpgradeStatus](ctx, c.state)
	if err != nil {
		return fmt.Errorf("listing Talos upgrade statuses: %w", err)
	}

	for s := range list.All() {
		phaseGauges(ch, s.Metadata().ID(), UpgradeTalos, s.TypedSpec().Phase)
	}

	return nil
}

func (c stateCollector) kubernetesUpgrades(ctx context.Context, ch chan<- prometheus.Metric) error {
	list, err := safe.StateListAll[*upgrade.KubernetesUpgradeStatus](ctx, c.state)
	if err != nil {
		return fmt.Errorf("listing Kubernetes upgrade statuses: %w", err)
	}

	for s := range list.All() {
		id := s.Metadata().ID()
		phaseGauges(ch, id, UpgradeKubernetes, s.TypedSpec().Phase)

		var last time.Time

		for _, step := range s.TypedSpec().Steps {
			last = latest(last, step.StartedAt, step.FinishedAt)
		}

		if !last.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLastProgress, prometheus.GaugeValue, timestamp(last), id, UpgradeKubernetes)
		}
	}

	return nil
}

func (c stateCollector) configRollouts(ctx context.Context, ch chan<- prometheus.Metric) error {
	list, err := safe.StateListAll[*upgrade.ConfigRolloutStatus](ctx, c.state)
	if err != nil {
		return fmt.Errorf("listing config rollout statuses: %w", err)
	}

	for s := range list.All() {
		phaseGauges(ch, s.Metadata().ID(), UpgradeConfig, s.TypedSpec().Phase)
	}

	return nil
}

func (c stateCollector) machineUpgrades(ctx context.Context, ch chan<- prometheus.Metric) error {
	list, err := safe.StateListAll[*upgrade.MachineUpgradeStatus](ctx, c.state)
	if err != nil {
		return fmt.Errorf("listing machine upgrade statuses: %w", err)
	}

	counts := map[string]map[upgrade.MachinePhase]int{}
	last := map[string]time.Time{}

	for s := range list.All() {
		spec := s.TypedSpec()

		if counts[spec.Cluster] == nil {
			counts[spec.Cluster] = map[upgrade.MachinePhase]int{}
		}

		counts[spec.Cluster][spec.Phase]++
		last[spec.Cluster] = latest(last[spec.Cluster], spec.PhaseChangedAt)

		ch <- prometheus.MustNewConstMetric(descMachineInFlight, prometheus.GaugeValue, boolValue(spec.Phase.InFlight()), spec.Cluster, s.Metadata().ID())
	}

	for clusterID, byPhase := range counts {
		for _, p := range machinePhases {
			ch <- prometheus.MustNewConstMetric(descMachinesInPhase, prometheus.GaugeValue, float64(byPhase[p]), clusterID, string(p))
		}

		if t := last[clusterID]; !t.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLastProgress, prometheus.GaugeValue, timestamp(t), clusterID, UpgradeTalos)
		}
	}

	return nil
}

func (c stateCollector) summaries(ctx context.Context, ch chan<- prometheus.Metric) error {
	list, err := safe.StateListAll[*observe.ClusterSummary](ctx, c.state)
	if err != nil {
		return fmt.Errorf("listing cluster summaries: %w", err)
	}

	for s := range list.All() {
		ch <- prometheus.MustNewConstMetric(descMachinesLocked, prometheus.GaugeValue, float64(len(s.TypedSpec().Locked)), s.Metadata().ID())
	}

	return nil
}

func (c stateCollector) etcd(ctx context.Context, ch chan<- prometheus.Metric) error {
	list, err := safe.StateListAll[*observe.EtcdStatus](ctx, c.state)
	if err != nil {
		return fmt.Errorf("listing etcd statuses: %w", err)
	}

	for s := range list.All() {
		var voting, healthy int

		for _, m := range s.TypedSpec().Members {
			if m.Learner {
				continue
			}

			voting++

			if m.Started && m.Healthy {
				healthy++
			}
		}

		ch <- prometheus.MustNewConstMetric(descEtcdMembers, prometheus.GaugeValue, float64(voting), s.Metadata().ID())
		ch <- prometheus.MustNewConstMetric(descEtcdMembersHealthy, prometheus.GaugeValue, float64(healthy), s.Metadata().ID())
	}

	return nil
}

func (c stateCollector) machines(ctx context.Context, ch chan<- prometheus.Metric) error {
	list, err := safe.StateListAll[*observe.MachineStatus](ctx, c.state)
	if err != nil {
		return fmt.Errorf("listing machine statuses: %w", err)
	}

	for s := range list.All() {
		ch <- prometheus.MustNewConstMetric(descMachineReachable, prometheus.GaugeValue, boolValue(s.TypedSpec().Reachable), s.TypedSpec().Cluster, s.Metadata().ID())
	}

	return nil
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}

	return 0
}

func latest(t time.Time, others ...time.Time) time.Time {
	for _, o := range others {
		if o.After(t) {
			t = o
		}
	}

	return t
}

func timestamp(t time.Time) float64 {
	return float64(t.UnixNano()) / float64(time.Second)
}
