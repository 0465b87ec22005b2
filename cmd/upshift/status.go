package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/upshift-io/upshift/internal/machineview"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/server"
)

func init() {
	cmd := &cobra.Command{
		Use:   "status [CLUSTER]",
		Short: "Show the fleet, one line per cluster (those needing attention first), or one cluster as a tree",
		Long: `Without a cluster, status prints one line per cluster: its Talos and Kubernetes versions (the lowest its
machines run, then the target when they differ), each rollout not done with its phase and progress, machines
failed, locked or unreachable, and the newer versions available. Clusters with a Failed or Blocked rollout or a
failed machine come first, then those upgrading, then the idle ones.

With a cluster, status prints it as a tree: the cluster, each upgrade's phase and progress, each machine.

--watch prints the view again as the fleet changes, until interrupted.`,
		Args: cobra.MaximumNArgs(1),
	}

	endpoint := clientFlags(cmd)

	var watch bool

	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print the view again as it changes")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withClient(endpoint, func(c *server.Client) error {
			st := c.State()
			draw := func(w io.Writer) error {
				// First, so that replicas on etcd without quorum say so before a read of the state waits for it.
				engine, err := c.EngineStatus(cmd.Context())
				if err != nil {
					return fmt.Errorf("reading the engine's status: %w", err)
				}

				printEngine(w, engine)

				if engine.Unreadable {
					return errors.New("the state cannot be read until etcd answers again (see above)")
				}

				if len(args) == 1 {
					view, err := loadCluster(cmd.Context(), st, args[0])
					if err != nil {
						return err
					}

					return view.printTree(w)
				}

				views, err := loadFleet(cmd.Context(), st)
				if err != nil {
					return err
				}

				return printFleet(w, views)
			}

			if !watch {
				return draw(cmd.OutOrStdout())
			}

			return watchStatus(cmd.Context(), st, clearFor(cmd.OutOrStdout()), cmd.OutOrStdout(), draw)
		})
	}

	rootCmd.AddCommand(cmd)
}

// clearFor is what starts a new view on out: a terminal's screen is cleared, a pipe or file gets a blank line.
func clearFor(out io.Writer) string {
	if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return "\x1b[H\x1b[2J"
	}

	return "\n"
}

// withState runs fn on the state of the server at endpoint, rewording its errors for the terminal.
func withState(endpoint *target, fn func(state.State) error) error {
	return withClient(endpoint, func(c *server.Client) error { return fn(c.State()) })
}

// withClient connects to the server endpoint names, runs fn with the client and explains its error.
func withClient(endpoint *target, fn func(*server.Client) error) error {
	c, err := connect(endpoint)
	if err != nil {
		return err
	}

	defer c.Close() //nolint:errcheck

	return explain(endpoint, fn(c))
}

// clusterView is everything the engine knows of one cluster, read at once for status and upgrade plans.
type clusterView struct {
	cluster  *cluster.Cluster
	machines []*cluster.Machine // sorted by ID
	statuses map[string]*observe.MachineStatus
	upgrades map[string]*upgrade.MachineUpgradeStatus
	locks    map[string]*cluster.MachineLock
	talos    *upgrade.TalosUpgradeStatus // nil until the controller wrote it
	configs  map[string]*upgrade.MachineConfigStatus
	rollout  *upgrade.ConfigRolloutStatus // nil until the controller wrote it
	kube     *upgrade.KubernetesUpgradeStatus
	sync     *manifest.ManifestSync // nil until the bootstrap manifests were checked
}

// loadCluster reads the cluster named id and its machines with what was observed of them.
func loadCluster(ctx context.Context, st state.State, id string) (*clusterView, error) {
	c, err := safe.StateGetByID[*cluster.Cluster](ctx, st, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return nil, fmt.Errorf("cluster %q not found", id)
		}

		return nil, fmt.Errorf("reading cluster %q: %w", id, err)
	}

	f, err := loadFleetState(ctx, st)
	if err != nil {
		return nil, err
	}

	return f.view(c), nil
}

// fleetState is every resource status shows, each type listed once for the whole fleet, so that the fleet view
// costs one list per type however many clusters there are.
type fleetState struct {
	machines map[string][]*cluster.Machine // by cluster ID, each sorted by ID
	statuses map[string]*observe.MachineStatus
	upgrades map[string]*upgrade.MachineUpgradeStatus
	locks    map[string]*cluster.MachineLock
	configs  map[string]*upgrade.MachineConfigStatus
	talos    map[string]*upgrade.TalosUpgradeStatus
	rollouts map[string]*upgrade.ConfigRolloutStatus
	kube     map[string]*upgrade.KubernetesUpgradeStatus
	syncs    map[string]*manifest.ManifestSync
}

// loadFleetState lists every type status shows.
func loadFleetState(ctx context.Context, st state.State) (*fleetState, error) {
	machines, err := safe.StateListAll[*cluster.Machine](ctx, st)
	if err != nil {
		return nil, fmt.Errorf("listing machines: %w", err)
	}

	f := &fleetState{machines: map[string][]*cluster.Machine{}}

	for m := range machines.All() {
		f.machines[m.TypedSpec().Cluster] = append(f.machines[m.TypedSpec().Cluster], m)
	}

	for _, ms := range f.machines {
		slices.SortFunc(ms, func(a, b *cluster.Machine) int { return strings.Compare(a.Metadata().ID(), b.Metadata().ID()) })
	}

	for _, load := range []func() error{
		func() (err error) { f.statuses, err = byID[*observe.MachineStatus](ctx, st); return err },
		func() (err error) { f.upgrades, err = byID[*upgrade.MachineUpgradeStatus](ctx, st); return err },
		func() (err error) { f.locks, err = byID[*cluster.MachineLock](ctx, st); return err },
		func() (err error) { f.configs, err = byID[*upgrade.MachineConfigStatus](ctx, st); return err },
		func() (err error) { f.talos, err = byID[*upgrade.TalosUpgradeStatus](ctx, st); return err },
		func() (err error) { f.rollouts, err = byID[*upgrade.ConfigRolloutStatus](ctx, st); return err },
		func() (err error) { f.kube, err = byID[*upgrade.KubernetesUpgradeStatus](ctx, st); return err },
		func() (err error) { f.syncs, err = byID[*manifest.ManifestSync](ctx, st); return err },
	} {
		if err := load(); err != nil {
			return nil, err
		}
	}

	return f, nil
}

// view is cluster c with its machines and what was observed of them; a status not written yet is nil.
func (f *fleetState) view(c *cluster.Cluster) *clusterView {
	id := c.Metadata().ID()

	return &clusterView{
		cluster:  c,
		machines: f.machines[id],
		statuses: f.statuses,
		upgrades: f.upgrades,
		locks:    f.locks,
		talos:    f.talos[id],
		configs:  f.configs,
		rollout:  f.rollouts[id],
		kube:     f.kube[id],
		sync:     f.syncs[id],
	}
}

// byID lists every resource of a type, keyed by ID.
func byID[T meta.ResourceWithRD](ctx context.Context, st state.State) (map[string]T, error) {
	list, err := safe.StateListAll[T](ctx, st)
	if err != nil {
		return nil, fmt.Errorf("listing: %w", err)
	}

	out := make(map[string]T, list.Len())
	for r := range list.All() {
		out[r.Metadata().ID()] = r
	}

	return out, nil
}

// printTree prints the cluster, its upgrade and its machines as a tree that fits 80 columns.
func (v *clusterView) printTree(w io.Writer) error {
	spec := v.cluster.TypedSpec()

	var b strings.Builder

	fmt.Fprintf(&b, "cluster %s  talos %s  kubernetes %s", v.cluster.Metadata().ID(), spec.TalosVersion, spec.KubernetesVersion)

	if spec.Paused {
		b.WriteString("  (paused)")
	}

	b.WriteString("\n")

	if t := v.talos; t != nil {
		ts := t.TypedSpec()

		fmt.Fprintf(&b, "├─ talos upgrade: %s %d/%d", ts.Phase, ts.Done, ts.Total)

		if ts.FromVersion != "" || ts.ToVersion != "" {
			fmt.Fprintf(&b, "  %s -> %s", ts.FromVersion, ts.ToVersion)
		}

		b.WriteString("\n")

		if len(ts.Plan) > 1 {
			fmt.Fprintf(&b, "│  plan: %s (now %s)\n", strings.Join(ts.Plan, " -> "), ts.Target)
		}

		for _, line := range []struct{ label, text string }{
			{"error", ts.Error},
			{"waiting", ts.Reason},
			{"locked", strings.Join(ts.WaitingOnLock, ", ")},
		} {
			if line.text != "" {
				fmt.Fprintf(&b, "│  %s: %s\n", line.label, line.text)
			}
		}

		printChoices(&b, "newer Talos available", newerTalos(ts.AvailableVersions, spec.TalosVersion))
	} else {
		b.WriteString("├─ talos upgrade: not planned yet\n")
	}

	v.printKubernetes(&b)

	if r := v.rollout; r != nil {
		rs := r.TypedSpec()
		fmt.Fprintf(&b, "├─ config rollout: %s %d/%d\n", rs.Phase, rs.Done, rs.Total)

		for _, line := range []struct{ label, text string }{
			{"error", rs.Error}, {"waiting", rs.Reason}, {"skipped (keep their config)", strings.Join(rs.Skipped, ", ")},
		} {
			if line.text != "" {
				fmt.Fprintf(&b, "│  %s: %s\n", line.label, line.text)
			}
		}
	}

	if waiting := v.waitingOnLock(); len(waiting) > 0 {
		fmt.Fprintf(&b, "├─ %d machines waiting on a lock: %s\n", len(waiting), strings.Join(waiting, ", "))
	}

	if v.sync != nil {
		fmt.Fprintf(&b, "├─ %s\n", v.sync.TypedSpec().Summary(v.cluster.Metadata().ID()))
	}

	fmt.Fprintf(&b, "└─ machines (%d)\n", len(v.machines))

	for i, m := range v.machines {
		branch, indent := "├─", "│  "
		if i == len(v.machines)-1 {
			branch, indent = "└─", "   "
		}

		fmt.Fprintf(&b, "   %s %s\n", branch, v.machineLine(m))

		for _, detail := range v.machineDetails(m) {
			fmt.Fprintf(&b, "   %s   %s\n", indent, detail)
		}
	}

	_, err := io.WriteString(w, b.String())

	return err
}

// machineLine is one machine's summary: name, role, version, upgrade phase; the version and reachability are
// paired with the phase as every view pairs them (machineview.Pair).
func (v *clusterView) machineLine(m *cluster.Machine) string {
	id := m.Metadata().ID()
	role := "worker"

	if m.TypedSpec().Role == cluster.RoleControlPlane {
		role = "cp"
	}

	var (
		status *observe.MachineStatusSpec
		up     *upgrade.MachineUpgradeStatusSpec
	)

	if s, ok := v.statuses[id]; ok {
		status = s.TypedSpec()
	}

	phase := "-"
	if u, ok := v.upgrades[id]; ok {
		up = u.TypedSpec()
		phase = fmt.Sprintf("%s -> %s", up.Phase, up.ToVersion)
	}

	shown := machineview.Pair(status, up)

	version := shown.Version
	if version == "" {
		version = "?"
	}

	if shown.Unreachable {
		version += " (unreachable)"
	}

	return fmt.Sprintf("%-14s %-6s %-22s %s", id, role, version, phase)
}

// machineDetails are the lines under a machine: its lock, its upgrade's error or what it waits for.
func (v *clusterView) machineDetails(m *cluster.Machine) []string {
	id := m.Metadata().ID()

	var out []string

	if l, ok := v.locks[id]; ok {
		out = append(out, "locked: "+orNone(l.TypedSpec().Reason))

		if t := v.talos; t != nil && slices.Contains(t.TypedSpec().WaitingOnLock, id) {
			from := "?"
			if s, ok := v.statuses[id]; ok {
				from = s.TypedSpec().TalosVersion
			}

			out = append(out, fmt.Sprintf("pending: talos %s -> %s", from, t.TypedSpec().ToVersion))
		}

		if v.kubeWaitsOn(id) {
			from := "?"
			if s, ok := v.statuses[id]; ok && s.TypedSpec().KubeletVersion != "" {
				from = strings.TrimPrefix(s.TypedSpec().KubeletVersion, "v") // as the upgrade line writes versions
			}

			out = append(out, fmt.Sprintf("pending: kubernetes %s -> %s", from, strings.TrimPrefix(v.kube.TypedSpec().ToVersion, "v")))
		}

		if c, ok := v.configs[id]; ok && c.TypedSpec().Pending {
			out = append(out, fmt.Sprintf("pending: config %s -> %s", c.TypedSpec().AppliedVersion, c.TypedSpec().TargetVersion))
			for line := range strings.Lines(c.TypedSpec().Diff) {
				out = append(out, "  "+strings.TrimRight(line, "\n"))
			}
		}
	}

	if c, ok := v.configs[id]; ok {
		if e := c.TypedSpec().Error; e != "" {
			out = append(out, "config error: "+e)
		}
	}

	if u, ok := v.upgrades[id]; ok {
		if e := u.TypedSpec().Error; e != "" {
			out = append(out, fmt.Sprintf("error (attempt %d): %s", u.TypedSpec().Attempt, e))
		}

		if wt := u.TypedSpec().Waiting; wt != "" {
			out = append(out, "waiting: "+wt)
		}
	}

	return out
}

// kubeWaitsOn reports whether the Kubernetes upgrade has a change for locked machine id still to make: a kubelet
// step not started yet.
func (v *clusterView) kubeWaitsOn(id string) bool {
	if v.kube == nil || v.kube.TypedSpec().Phase == upgrade.PhaseDone {
		return false
	}

	return slices.ContainsFunc(v.kube.TypedSpec().Steps, func(s upgrade.KubernetesUpgradeStep) bool {
		return s.Kind == upgrade.StepKubelet && s.Machine == id && s.State == upgrade.StepPending
	})
}

// waitingOnLock lists the locked machines with a pending change of any rollout (Talos, Kubernetes, config), in ID
// order.
func (v *clusterView) waitingOnLock() []string {
	var out []string

	for _, m := range v.machines {
		id := m.Metadata().ID()
		if _, locked := v.locks[id]; !locked {
			continue
		}

		talos := v.talos != nil && slices.Contains(v.talos.TypedSpec().WaitingOnLock, id)
		config := v.configs[id] != nil && v.configs[id].TypedSpec().Pending

		if talos || config || v.kubeWaitsOn(id) {
			out = append(out, id)
		}
	}

	return out
}

func orNone(s string) string {
	if s == "" {
		return "(no reason given)"
	}

	return s
}

// printKubernetes adds the Kubernetes upgrade beside the Talos one: phase, progress, the current step, what it waits
// for, and the newer versions a user may pick.
func (v *clusterView) printKubernetes(b *strings.Builder) {
	if v.kube == nil {
		b.WriteString("├─ kubernetes upgrade: not planned yet\n")

		return
	}

	ks := v.kube.TypedSpec()

	fmt.Fprintf(b, "├─ kubernetes upgrade: %s %d/%d", ks.Phase, ks.Done, ks.Total)

	if ks.FromVersion != "" || ks.ToVersion != "" {
		fmt.Fprintf(b, "  %s -> %s", ks.FromVersion, ks.ToVersion)
	}

	b.WriteString("\n")

	if len(ks.Plan) > 1 {
		fmt.Fprintf(b, "│  plan: %s\n", strings.Join(ks.Plan, " -> "))
	}

	var running []string

	for _, s := range ks.Steps {
		if s.State == upgrade.StepRunning {
			running = append(running, strings.TrimSpace(s.String()+" "+s.Progress))
		}
	}

	for _, line := range []struct{ label, text string }{
		{"step", strings.Join(running, "; ")},
		{"error", ks.Error},
		{"waiting", ks.Reason},
		{"locked", strings.Join(ks.WaitingOnLock, ", ")},
		{"checks skipped", strings.Join(ks.SkippedChecks, ", ")},
	} {
		if line.text != "" {
			fmt.Fprintf(b, "│  %s: %s\n", line.label, line.text)
		}
	}

	printChoices(b, "newer Kubernetes available", ks.AvailableVersions) // kuberollout.Available lists newer ones only
}

// statusWidth is the width of the terminal status is written for.
const statusWidth = 80

// printChoices adds "│  label: a, b, c" when there are choices, going on over indented lines so that the status
// keeps to statusWidth however many releases the catalogue holds.
func printChoices(b *strings.Builder, label string, choices []string) {
	if len(choices) == 0 {
		return
	}

	line := "│  " + label + ":"

	for i, c := range choices {
		item := " " + c
		if i < len(choices)-1 {
			item += ","
		}

		if len([]rune(line+item)) > statusWidth {
			b.WriteString(line + "\n")
			line = "│   "
		}

		line += item
	}

	b.WriteString(line + "\n")
}

// newerTalos keeps the Talos releases of available (every release the cluster may pick, older ones too) that are
// newer than current, the cluster's Talos version; all of them when current does not parse.
func newerTalos(available []string, current string) []string {
	cur, err := versions.Parse(current)
	if err != nil {
		return available
	}

	var out []string

	for _, a := range available {
		if v, err := versions.Parse(a); err == nil && v.Compare(cur) > 0 {
			out = append(out, a)
		}
	}

	return out
}

// printEngine says, for replicas on etcd, which replica leads and what keeps the one that answered from acting; an
// engine alone on its file always acts and says nothing.
func printEngine(w io.Writer, st server.EngineStatus) {
	if st.Backend != "etcd" {
		return
	}

	switch {
	case st.Leader == "":
		fmt.Fprintf(w, "engine: no replica leads; the controllers are stopped (asked %s)\n", st.Replica)
	case st.Leading:
		fmt.Fprintf(w, "engine: replica %s leads (the one asked)\n", st.Leader)
	default:
		fmt.Fprintf(w, "engine: replica %s leads (asked %s)\n", st.Leader, st.Replica)
	}

	if st.Problem != "" {
		fmt.Fprintf(w, "engine: %s\n", st.Problem)
	}
}
