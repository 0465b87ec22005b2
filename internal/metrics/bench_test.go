package metrics_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/metrics"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// BenchmarkScrape measures one scrape of /metrics (gather and encode as Prometheus text) of a fleet of 1,000
// clusters of 10 machines (3 control planes) mid-upgrade, against the baseline of the same run: listing the types the
// gauges are read from, which any scrape of the state must do. The ratio is what building the series costs on top.
func BenchmarkScrape(b *testing.B) {
	const clusters, perCluster = 1000, 10

	ctx := b.Context()
	st := newState()

	for c := range clusters {
		id := fmt.Sprintf("c%d", c)

		tus := upgrade.NewTalosUpgradeStatus(id)
		tus.TypedSpec().Phase, tus.TypedSpec().Done, tus.TypedSpec().Total = upgrade.PhaseUpgrading, 4, perCluster
		kus := upgrade.NewKubernetesUpgradeStatus(id)
		kus.TypedSpec().Phase = upgrade.PhaseDone
		sum := observe.NewClusterSummary(id)
		sum.TypedSpec().Machines = perCluster
		etcd := observe.NewEtcdStatus(id)

		for i := range 3 {
			etcd.TypedSpec().Members = append(etcd.TypedSpec().Members, observe.EtcdMember{Machine: fmt.Sprintf("%s-m-%d", id, i), Started: true, Healthy: true})
		}

		for _, r := range []resource.Resource{tus, kus, sum, etcd} {
			if err := st.Create(ctx, r); err != nil {
				b.Fatal(err)
			}
		}

		for m := range perCluster {
			mid := fmt.Sprintf("%s-m-%d", id, m)

			ms := observe.NewMachineStatus(mid)
			ms.TypedSpec().Cluster, ms.TypedSpec().Reachable = id, true
			mu := upgrade.NewMachineUpgradeStatus(mid)
			mu.TypedSpec().Cluster, mu.TypedSpec().Phase, mu.TypedSpec().PhaseChangedAt = id, upgrade.MachineDone, time.Now()

			for _, r := range []resource.Resource{ms, mu} {
				if err := st.Create(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
		}
	}

	m := metrics.New(zap.NewNop())
	m.Bind(st)

	registry := prometheus.NewRegistry()
	registry.MustRegister(m)

	var listing, scraping time.Duration

	size := 0

	for b.Loop() {
		start := time.Now()

		if err := listAll(ctx, st); err != nil {
			b.Fatal(err)
		}

		listed := time.Now()

		families, err := registry.Gather()
		if err != nil {
			b.Fatal(err)
		}

		var out bytes.Buffer

		enc := expfmt.NewEncoder(&out, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, f := range families {
			if err := enc.Encode(f); err != nil {
				b.Fatal(err)
			}
		}

		listing += listed.Sub(start)
		scraping += time.Since(listed)
		size = out.Len()
	}

	b.ReportMetric(float64(scraping.Milliseconds())/float64(b.N), "scrape-ms/op")
	b.ReportMetric(float64(listing.Milliseconds())/float64(b.N), "list-ms/op")
	b.ReportMetric(float64(scraping)/float64(listing), "scrape/list")
	b.ReportMetric(float64(size)/1e6, "MB/scrape")
}

// listAll lists every type the gauges read, as a scrape does.
func listAll(ctx context.Context, st state.State) error {
	for _, list := range []func() error{
		func() error { _, err := safe.StateListAll[*upgrade.TalosUpgradeStatus](ctx, st); return err },
		func() error { _, err := safe.StateListAll[*upgrade.KubernetesUpgradeStatus](ctx, st); return err },
		func() error { _, err := safe.StateListAll[*upgrade.ConfigRolloutStatus](ctx, st); return err },
		func() error { _, err := safe.StateListAll[*upgrade.MachineUpgradeStatus](ctx, st); return err },
		func() error { _, err := safe.StateListAll[*observe.ClusterSummary](ctx, st); return err },
		func() error { _, err := safe.StateListAll[*observe.EtcdStatus](ctx, st); return err },
		func() error { _, err := safe.StateListAll[*observe.MachineStatus](ctx, st); return err },
	} {
		if err := list(); err != nil {
			return err
		}
	}

	return nil
}
