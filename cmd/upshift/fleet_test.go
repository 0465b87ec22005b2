package main

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// The fleet view puts a cluster with a Blocked rollout or a failed machine before one upgrading, and those before
// the idle ones; a Kubernetes upgrade Pending with nothing planned (no kubelet observed yet) does not make a cluster
// look busy. Versions show the slowest machine and the target; newer releases, the newest of each minor.
func TestFleetOrdersAttentionFirst(t *testing.T) {
	t.Parallel()

	newCluster := func(id, talos string) *cluster.Cluster {
		c := cluster.NewCluster(id)
		c.TypedSpec().TalosVersion, c.TypedSpec().KubernetesVersion = talos, "v1.34.3"

		return c
	}

	talos := func(id string, phase upgrade.ClusterPhase, done, total int) *upgrade.TalosUpgradeStatus {
		s := upgrade.NewTalosUpgradeStatus(id)
		s.TypedSpec().Phase, s.TypedSpec().Done, s.TypedSpec().Total = phase, done, total
		s.TypedSpec().AvailableVersions = []string{"v1.13.4", "v1.14.0", "v1.14.1", "v1.15.0"}

		return s
	}

	machine := func(id, clusterID, version string) (*cluster.Machine, *observe.MachineStatus) {
		m := cluster.NewMachine(id)
		m.TypedSpec().Cluster = clusterID

		s := observe.NewMachineStatus(id)
		*s.TypedSpec() = observe.MachineStatusSpec{Cluster: clusterID, TalosVersion: version, KubeletVersion: "v1.34.3", Reachable: true}

		return m, s
	}

	a1, a1s := machine("a-1", "a", "v1.14.1")
	b1, b1s := machine("b-1", "b", "v1.13.4")
	b2, b2s := machine("b-2", "b", "v1.14.1")
	z1, z1s := machine("z-1", "z", "v1.13.4")

	failedUp := upgrade.NewMachineUpgradeStatus("z-1")
	failedUp.TypedSpec().Phase = upgrade.MachineFailed

	pendingKube := upgrade.NewKubernetesUpgradeStatus("a")
	pendingKube.TypedSpec().Phase = upgrade.PhasePending
	pendingKube.TypedSpec().AvailableVersions = []string{"1.34.4", "1.35.0", "1.35.2"}

	statuses := map[string]*observe.MachineStatus{"a-1": a1s, "b-1": b1s, "b-2": b2s, "z-1": z1s}
	upgrades := map[string]*upgrade.MachineUpgradeStatus{"z-1": failedUp}

	views := []*clusterView{
		{cluster: newCluster("a", "v1.14.1"), machines: []*cluster.Machine{a1}, statuses: statuses, upgrades: upgrades,
			talos: talos("a", upgrade.PhaseDone, 1, 1), kube: pendingKube},
		{cluster: newCluster("b", "v1.14.1"), machines: []*cluster.Machine{b1, b2}, statuses: statuses, upgrades: upgrades,
			talos: talos("b", upgrade.PhaseUpgrading, 1, 2)},
		{cluster: newCluster("z", "v1.14.1"), machines: []*cluster.Machine{z1}, statuses: statuses, upgrades: upgrades,
			talos: talos("z", upgrade.PhaseFailed, 0, 1)},
		{cluster: newCluster("y", "v1.14.1"), statuses: statuses, upgrades: upgrades, talos: talos("y", upgrade.PhaseBlocked, 0, 0)},
	}

	var b strings.Builder
	require.NoError(t, printFleet(&b, views))
	t.Log(b.String())

	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	require.Len(t, lines, 5)

	var order []string
	for _, l := range lines[1:] {
		order = append(order, strings.Fields(l)[0])
	}

	assert.Equal(t, []string{"y", "z", "b", "a"}, order, "attention (by name), upgrading, idle")
	assert.Contains(t, lines[2], "talos Failed 0/1")
	assert.Contains(t, lines[2], "1, 1 failed")
	assert.Contains(t, lines[3], "v1.13.4 -> v1.14.1", "the slowest machine and the target")
	assert.Contains(t, lines[3], "talos Upgrading 1/2")
	assert.Contains(t, lines[4], "kubernetes Pending ")
	assert.NotContains(t, lines[4], "0/0")
	assert.Contains(t, lines[4], "talos v1.15.0; kubernetes 1.34.4 1.35.2", "the newest of each minor, newer than the target")
}

// lineWriter is an io.Writer a test can wait on: every write is kept and announced.
type lineWriter struct {
	mu     sync.Mutex
	b      strings.Builder
	writes chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.b.Write(p)
	w.mu.Unlock()

	select {
	case w.writes <- struct{}{}:
	default:
	}

	return len(p), nil
}

// waitFor waits until what was written contains want.
func (w *lineWriter) waitFor(ctx context.Context, t *testing.T, want string) {
	t.Helper()

	for {
		w.mu.Lock()
		out := w.b.String()
		w.mu.Unlock()

		if strings.Contains(out, want) {
			return
		}

		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %q; written:\n%s", want, out)
		case <-w.writes:
		}
	}
}

// `status --watch` prints the fleet at once, then again (after the clear string) when a cluster appears, and
// stops without error when interrupted.
func TestStatusWatchPrintsChanges(t *testing.T) {
	t.Parallel()

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	st := state.WrapCore(namespaced.NewState(inmem.Build))
	require.NoError(t, st.Create(ctx, cluster.NewCluster("first")))

	w := &lineWriter{writes: make(chan struct{}, 1)}
	watchCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)

	go func() {
		done <- watchStatus(watchCtx, st, "--clear--\n", w, func(out io.Writer) error {
			views, err := loadFleet(watchCtx, st)
			if err != nil {
				return err
			}

			return printFleet(out, views)
		})
	}()

	w.waitFor(ctx, t, "first")
	require.NoError(t, st.Create(ctx, cluster.NewCluster("second")))
	w.waitFor(ctx, t, "--clear--\nCLUSTER")
	w.waitFor(ctx, t, "second")

	stop()
	require.NoError(t, <-done)
}
