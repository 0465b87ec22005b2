package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func init() {
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Request, pause, resume, retry or skip a cluster's Talos or Kubernetes upgrade",
	}

	cmd.AddCommand(upgradeTalosCmd(), upgradeKubernetesCmd(), upgradeRetryCmd(), upgradeSkipCmd(),
		upgradePauseCmd("pause", true), upgradePauseCmd("resume", false))
	rootCmd.AddCommand(cmd)
}

func upgradeTalosCmd() *cobra.Command {
	var (
		to     string
		dryRun bool
	)

	cmd := &cobra.Command{
		Use:   "talos CLUSTER --to VERSION [--dry-run]",
		Short: "Move every machine of a cluster to a Talos version (upgrade or downgrade), or print the plan",
		Long: "Set the cluster's Talos version; the engine then rolls it out: control planes one at a time, then workers\n" +
			"up to the cluster's parallelism, through intermediate releases when no direct path exists.\n" +
			"Setting the version back during a rollout reverts it. With --dry-run, print the plan and change nothing.",
		Args: cobra.ExactArgs(1),
	}

	endpoint := clientFlags(cmd)
	cmd.Flags().StringVar(&to, "to", "", "the Talos version every machine should run, e.g. v1.14.1 (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan (hops, direction, order, parallelism, locked machines) and change nothing")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if to == "" {
			return errors.New("--to VERSION is required")
		}

		return withState(endpoint, func(st state.State) error {
			return upgradeTalos(cmd.Context(), st, cmd.OutOrStdout(), args[0], to, dryRun)
		})
	}

	return cmd
}

// upgradeTalos plans the change of cluster id to version to, prints what the rollout will do, and (unless dryRun)
// requests it. The plan and the order of starts come from rollout.Simulate over the cluster as the engine reads it
// and with the engine's own release catalogue, so the dry run shows what the engine will do. A change that cannot
// be planned (Kubernetes unsupported by the target, no path) is refused with the reason.
func upgradeTalos(ctx context.Context, st state.State, w io.Writer, id, to string, dryRun bool) error {
	target, err := versions.Parse(to)
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}

	view, sim, err := simulate(ctx, st, id, target.Tag())
	if err != nil {
		return err
	}

	if err = printPlan(ctx, st, w, id, view, sim); err != nil {
		return err
	}

	if dryRun {
		_, err = fmt.Fprintln(w, "dry run: nothing changed")

		return err
	}

	if err = modifyCluster(ctx, st, id, func(spec *cluster.ClusterSpec) { spec.TalosVersion = target.Tag() }); err != nil {
		return err
	}

	_, err = fmt.Fprintf(w, "cluster %s now wants Talos %s; follow it with `upshift status %s`\n", id, target.Tag(), id)

	return err
}

// simulate runs the engine's rollout rules over cluster id going to target, with the engine's release catalogue.
// It returns the cluster as it read it, too.
func simulate(ctx context.Context, st state.State, id, target string) (rollout.ClusterView, rollout.Simulation, error) {
	releases, err := safe.StateGetByID[*upgrade.TalosReleases](ctx, st, upgrade.TalosReleasesID)
	if err != nil {
		return rollout.ClusterView{}, rollout.Simulation{}, fmt.Errorf("reading the engine's Talos releases: %w", err)
	}

	catalogue, err := controllers.CatalogueOf(releases.TypedSpec())
	if err != nil {
		return rollout.ClusterView{}, rollout.Simulation{}, fmt.Errorf("reading the engine's Talos releases: %w", err)
	}

	view, err := controllers.ReadClusterView(ctx, st, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return view, rollout.Simulation{}, fmt.Errorf("cluster %q not found", id)
		}

		return view, rollout.Simulation{}, err
	}

	sim, err := rollout.Simulate(rollout.Policy{Catalogue: catalogue}, view, target)

	switch {
	case errors.Is(err, rollout.ErrNoPlan):
		return view, sim, fmt.Errorf("refusing to change cluster %q to Talos %s: %s", id, target, sim.Status.Error)
	case err != nil:
		return view, sim, fmt.Errorf("planning cluster %q to Talos %s: %w", id, target, err)
	case sim.Status.Phase == upgrade.PhasePending && len(sim.Status.Plan) == 0:
		return view, sim, fmt.Errorf("cluster %q cannot be planned yet: %s; try again shortly", id, sim.Status.Reason)
	}

	return view, sim, nil
}

// printPlan prints what the simulated rollout of cluster id (as view) does: the direction and hops, then every
// machine start in order, then the locked machines that wait, each with its lock's reason.
func printPlan(ctx context.Context, st state.State, w io.Writer, id string, view rollout.ClusterView, sim rollout.Simulation) error {
	var b strings.Builder

	status := sim.Status

	if len(sim.Starts) == 0 && status.Phase == upgrade.PhaseDone {
		fmt.Fprintf(&b, "cluster %s: nothing to do, every machine runs Talos %s\n", id, status.ToVersion)
		_, err := io.WriteString(w, b.String())

		return err
	}

	steps := []string{strings.ReplaceAll(strings.TrimPrefix(status.FromVersion, "v"), ",v", ",")}
	for _, hop := range status.Plan {
		steps = append(steps, strings.TrimPrefix(hop, "v"))
	}

	fmt.Fprintf(&b, "cluster %s: %s %s\n", id, status.Direction, strings.Join(steps, " -> "))

	if len(status.Plan) > 1 {
		fmt.Fprintf(&b, "  no direct path: machines go through %s first (each from where it is)\n", strings.Join(status.Plan[:len(status.Plan)-1], ", then "))
	}

	fmt.Fprintf(&b, "  kubernetes %s is supported by every release on the way\n", view.Cluster.KubernetesVersion)

	parallelism, err := cluster.ParseParallelism(view.Cluster.Parallelism)
	if err != nil {
		return fmt.Errorf("cluster %q: parallelism: %w", id, err)
	}

	workers := 0

	for _, m := range view.Machines {
		if m.Role == cluster.RoleWorker {
			workers++
		}
	}

	fmt.Fprintf(&b, "  order: control planes one at a time (the etcd leader last), workers %d at a time, each next machine\n", parallelism.Of(workers))
	fmt.Fprintf(&b, "  starting when one in flight finishes:\n")

	for i, start := range sim.Starts {
		fmt.Fprintf(&b, "    %d. %s → %s\n", i+1, start.Machine, start.To)
	}

	for _, m := range sim.End.WaitingOnLock {
		lock, err := safe.StateGetByID[*cluster.MachineLock](ctx, st, m)
		if err != nil {
			return fmt.Errorf("reading the lock of machine %q: %w", m, err)
		}

		fmt.Fprintf(&b, "  waits for locked machine %s (%s): it upgrades once unlocked\n", m, orNone(lock.TypedSpec().Reason))
	}

	for _, m := range sim.End.Skipped {
		fmt.Fprintf(&b, "  leaves out skipped machine %s\n", m)
	}

	_, err = io.WriteString(w, b.String())

	return err
}

// modifyCluster changes the Cluster named id.
func modifyCluster(ctx context.Context, st state.State, id string, set func(*cluster.ClusterSpec)) error {
	if _, err := safe.StateUpdateWithConflicts(ctx, st, cluster.NewCluster(id).Metadata(), func(c *cluster.Cluster) error {
		set(c.TypedSpec())

		return nil
	}); err != nil {
		if state.IsNotFoundError(err) {
			return fmt.Errorf("cluster %q not found", id)
		}

		return fmt.Errorf("updating cluster %q: %w", id, err)
	}

	return nil
}

func upgradePauseCmd(verb string, paused bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:   verb + " CLUSTER",
		Short: map[bool]string{true: "Stop new machines from starting their upgrade (machines in flight finish their step)", false: "Let a paused upgrade go on"}[paused],
		Args:  cobra.ExactArgs(1),
	}

	endpoint := clientFlags(cmd)

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withState(endpoint, func(st state.State) error {
			if err := modifyCluster(cmd.Context(), st, args[0], func(spec *cluster.ClusterSpec) { spec.Paused = paused }); err != nil {
				return err
			}

			_, err := fmt.Fprintf(cmd.OutOrStdout(), "cluster %s: upgrade %sd\n", args[0], strings.TrimSuffix(verb, "e"))

			return err
		})
	}

	return cmd
}

// machineAction is a user action on machine upgrades and config changes (retry, skip), carried by an annotation on
// the Machine.
type machineAction struct {
	use, short, machineHelp, verb string
	machineRequired               bool
	annotation                    func(*clusterView, *upgrade.MachineUpgradeStatusSpec) (key, value string)
	// config is the annotation that acts on a failed config change: the same key, a value naming the config.
	config func(*upgrade.MachineConfigStatusSpec) (key, value string)
	// kubernetes, when set, acts on the cluster's Kubernetes upgrade first; ok says it had one to act on.
	kubernetes func(ctx context.Context, st state.State, w io.Writer, id string) (ok bool, err error)
}

func upgradeRetryCmd() *cobra.Command {
	return machineActionCmd(machineAction{
		use:         "retry CLUSTER [--machine M]",
		short:       "Retry a failed Kubernetes upgrade at its failed step, else the failed machine upgrades and config changes (or one machine's), from the beginning",
		kubernetes:  retryKubernetes,
		machineHelp: "retry only this machine",
		verb:        "retrying",
		annotation: func(_ *clusterView, u *upgrade.MachineUpgradeStatusSpec) (string, string) {
			return upgrade.RetryAnnotation, u.RetryValue()
		},
		config: func(c *upgrade.MachineConfigStatusSpec) (string, string) {
			return upgrade.RetryAnnotation, c.RetryValue()
		},
	})
}

func upgradeSkipCmd() *cobra.Command {
	return machineActionCmd(machineAction{
		use:             "skip CLUSTER --machine M",
		short:           "Leave a machine out of the cluster's Talos upgrade (every hop of it), or out of the config rollout its config change failed in, so the others go on and the rollout can finish",
		machineHelp:     "the machine to skip (required)",
		verb:            "skipping",
		machineRequired: true,
		annotation: func(view *clusterView, _ *upgrade.MachineUpgradeStatusSpec) (string, string) {
			// The cluster's target, not the hop the machine was on: skip leaves the machine out of the whole upgrade.
			return upgrade.SkipAnnotation, view.cluster.TypedSpec().TalosVersion
		},
		config: func(c *upgrade.MachineConfigStatusSpec) (string, string) {
			return upgrade.SkipAnnotation, c.SkipValue()
		},
	})
}

func machineActionCmd(action machineAction) *cobra.Command {
	var machine string

	cmd := &cobra.Command{Use: action.use, Short: action.short, Args: cobra.ExactArgs(1)}

	endpoint := clientFlags(cmd)
	cmd.Flags().StringVar(&machine, "machine", "", action.machineHelp)

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if action.machineRequired && machine == "" {
			return fmt.Errorf("--machine M is required: name the machine (%s)", action.verb)
		}

		return withState(endpoint, func(st state.State) error {
			if action.kubernetes != nil && machine == "" {
				if ok, err := action.kubernetes(cmd.Context(), st, cmd.OutOrStdout(), args[0]); ok || err != nil {
					return err
				}
			}

			return annotateFailed(cmd.Context(), st, cmd.OutOrStdout(), args[0], machine, action)
		})
	}

	return cmd
}

// annotateFailed puts the annotation the action computes on the Machine of every failed upgrade or config change
// of the cluster (or only machine's: its failed one, else its Talos upgrade, failed or not): the controllers act
// on it. A failed Talos upgrade comes first; the value says which one it acts on.
func annotateFailed(ctx context.Context, st state.State, w io.Writer, clusterID, machine string, action machineAction) error {
	view, err := loadCluster(ctx, st, clusterID)
	if err != nil {
		return err
	}

	type target struct{ id, key, value string }

	var targets []target

	found := false

	for _, m := range view.machines {
		id := m.Metadata().ID()
		if machine != "" && id != machine {
			continue
		}

		found = true
		u, upgrading := view.upgrades[id]
		c, configured := view.configs[id]

		switch {
		case upgrading && u.TypedSpec().Phase == upgrade.MachineFailed:
			key, value := action.annotation(view, u.TypedSpec())
			targets = append(targets, target{id, key, value})
		case configured && c.TypedSpec().Phase == upgrade.MachineFailed && action.config != nil:
			key, value := action.config(c.TypedSpec())
			targets = append(targets, target{id, key, value})
		case machine != "" && upgrading:
			key, value := action.annotation(view, u.TypedSpec())
			targets = append(targets, target{id, key, value})
		case machine != "":
			return fmt.Errorf("machine %q has no Talos upgrade or failed config change to act on", machine)
		}
	}

	if machine != "" && !found {
		return fmt.Errorf("machine %q is not in cluster %q", machine, clusterID)
	}

	if len(targets) == 0 {
		return fmt.Errorf("cluster %q has no failed machine upgrade or config change", clusterID)
	}

	for _, tg := range targets {
		if _, err = safe.StateUpdateWithConflicts(ctx, st, cluster.NewMachine(tg.id).Metadata(), func(m *cluster.Machine) error {
			m.Metadata().Annotations().Set(tg.key, tg.value)

			return nil
		}); err != nil {
			return fmt.Errorf("annotating machine %q: %w", tg.id, err)
		}

		if _, err = fmt.Fprintf(w, "%s %s (%s=%s)\n", action.verb, tg.id, tg.key, tg.value); err != nil {
			return err
		}
	}

	return nil
}
