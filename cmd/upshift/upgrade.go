package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func init() {
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Request, pause, resume, retry or skip a cluster's Talos upgrade",
	}

	cmd.AddCommand(upgradeTalosCmd(), upgradeRetryCmd(), upgradeSkipCmd(),
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

	endpoint := endpointFlag(cmd)
	cmd.Flags().StringVar(&to, "to", "", "the Talos version every machine should run, e.g. v1.14.1 (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan (hops, direction, order, parallelism, locked machines) and change nothing")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if to == "" {
			return errors.New("--to VERSION is required")
		}

		return withState(*endpoint, func(st state.State) error {
			return upgradeTalos(cmd.Context(), st, cmd.OutOrStdout(), args[0], to, dryRun)
		})
	}

	return cmd
}

// upgradeTalos plans the change of cluster id to version to, prints the plan, and (unless dryRun) requests it.
// A change that cannot be planned (Kubernetes unsupported by the target, no path) is refused with the reason.
func upgradeTalos(ctx context.Context, st state.State, w io.Writer, id, to string, dryRun bool) error {
	target, err := versions.Parse(to)
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}

	view, err := loadCluster(ctx, st, id)
	if err != nil {
		return err
	}

	hosts, err := view.hostVersions()
	if err != nil {
		return err
	}

	plan, err := versions.Shipped().Plan(hosts, view.cluster.TypedSpec().KubernetesVersion, target.String())
	if err != nil {
		return fmt.Errorf("refusing to change cluster %q to Talos %s: %w", id, target.Tag(), err)
	}

	if err = view.printPlan(w, plan); err != nil {
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

// hostVersions are the Talos versions the cluster's machines were last seen running.
func (v *clusterView) hostVersions() ([]string, error) {
	if len(v.machines) == 0 {
		return nil, fmt.Errorf("cluster %q has no machines", v.cluster.Metadata().ID())
	}

	hosts := make([]string, 0, len(v.machines))

	for _, m := range v.machines {
		s, ok := v.statuses[m.Metadata().ID()]
		if !ok || s.TypedSpec().TalosVersion == "" {
			return nil, fmt.Errorf("machine %q has not been observed yet: its Talos version is unknown, try again shortly", m.Metadata().ID())
		}

		hosts = append(hosts, s.TypedSpec().TalosVersion)
	}

	return hosts, nil
}

// printPlan prints what a change to plan would do: the direction and hops, then the order machines go in.
func (v *clusterView) printPlan(w io.Writer, plan versions.Plan) error {
	var b strings.Builder

	id := v.cluster.Metadata().ID()

	if len(plan.Hops) == 0 {
		fmt.Fprintf(&b, "cluster %s: nothing to do, every machine runs Talos %s\n", id, plan.To.Version.Tag())
		_, err := io.WriteString(w, b.String())

		return err
	}

	fmt.Fprintf(&b, "cluster %s: %s\n", id, plan)

	if !plan.Direct() {
		hops := make([]string, 0, len(plan.Hops)-1)
		for _, h := range plan.Hops[:len(plan.Hops)-1] {
			hops = append(hops, h.Version.Tag())
		}

		fmt.Fprintf(&b, "  no direct path: every machine goes through %s first\n", strings.Join(hops, ", then "))
	}

	fmt.Fprintf(&b, "  kubernetes %s is supported by every release on the way\n", v.cluster.TypedSpec().KubernetesVersion)

	controlPlanes, workers, locked := v.order()

	parallelism, err := cluster.ParseParallelism(v.cluster.TypedSpec().Parallelism)
	if err != nil {
		return fmt.Errorf("cluster %q: parallelism: %w", id, err)
	}

	slots := parallelism.Of(len(workers))

	fmt.Fprintf(&b, "  order: %d control plane(s) one at a time, then %d worker(s) %d at a time\n", len(controlPlanes), len(workers), slots)

	step := 1

	for _, cp := range controlPlanes {
		fmt.Fprintf(&b, "    %d. %s\n", step, cp)
		step++
	}

	for batch := range slices.Chunk(workers, slots) {
		fmt.Fprintf(&b, "    %d. %s\n", step, strings.Join(batch, ", "))
		step++
	}

	for _, m := range locked {
		fmt.Fprintf(&b, "  waits for locked machine %s (%s): it upgrades once unlocked\n", m, orNone(v.locks[m].TypedSpec().Reason))
	}

	_, err = io.WriteString(w, b.String())

	return err
}

// order splits the machines as the rollout takes them: control planes (the etcd leader last, so leadership moves
// once), unlocked workers, and locked machines, which wait.
func (v *clusterView) order() (controlPlanes, workers, locked []string) {
	leader := ""
	if v.etcd != nil {
		leader = v.etcd.TypedSpec().Leader
	}

	var leaderMachine string

	for _, m := range v.machines {
		id := m.Metadata().ID()

		switch {
		case v.locks[id] != nil:
			locked = append(locked, id)
		case m.TypedSpec().Role != cluster.RoleControlPlane:
			workers = append(workers, id)
		case leader != "" && v.statuses[id] != nil && v.statuses[id].TypedSpec().EtcdMember == leader:
			leaderMachine = id
		default:
			controlPlanes = append(controlPlanes, id)
		}
	}

	if leaderMachine != "" {
		controlPlanes = append(controlPlanes, leaderMachine+" (etcd leader, last)")
	}

	return controlPlanes, workers, locked
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

	endpoint := endpointFlag(cmd)

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withState(*endpoint, func(st state.State) error {
			if err := modifyCluster(cmd.Context(), st, args[0], func(spec *cluster.ClusterSpec) { spec.Paused = paused }); err != nil {
				return err
			}

			_, err := fmt.Fprintf(cmd.OutOrStdout(), "cluster %s: upgrade %sd\n", args[0], strings.TrimSuffix(verb, "e"))

			return err
		})
	}

	return cmd
}

// machineAction is a user action on machine upgrades (retry, skip), carried by an annotation on the Machine.
type machineAction struct {
	use, short, machineHelp, verb string
	machineRequired               bool
	annotation                    func(*clusterView, *upgrade.MachineUpgradeStatusSpec) (key, value string)
}

func upgradeRetryCmd() *cobra.Command {
	return machineActionCmd(machineAction{
		use:         "retry CLUSTER [--machine M]",
		short:       "Retry the failed machine upgrades of a cluster (or one of them), from the beginning",
		machineHelp: "retry only this machine",
		verb:        "retrying",
		annotation: func(_ *clusterView, u *upgrade.MachineUpgradeStatusSpec) (string, string) {
			return upgrade.RetryAnnotation, u.RetryValue()
		},
	})
}

func upgradeSkipCmd() *cobra.Command {
	return machineActionCmd(machineAction{
		use:             "skip CLUSTER --machine M",
		short:           "Leave a machine out of the cluster's Talos upgrade (every hop of it), so the others go on and the upgrade can finish",
		machineHelp:     "the machine to skip (required)",
		verb:            "skipping",
		machineRequired: true,
		annotation: func(view *clusterView, _ *upgrade.MachineUpgradeStatusSpec) (string, string) {
			// The cluster's target, not the hop the machine was on: skip leaves the machine out of the whole upgrade.
			return upgrade.SkipAnnotation, view.cluster.TypedSpec().TalosVersion
		},
	})
}

func machineActionCmd(action machineAction) *cobra.Command {
	var machine string

	cmd := &cobra.Command{Use: action.use, Short: action.short, Args: cobra.ExactArgs(1)}

	endpoint := endpointFlag(cmd)
	cmd.Flags().StringVar(&machine, "machine", "", action.machineHelp)

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if action.machineRequired && machine == "" {
			return fmt.Errorf("--machine M is required: name the machine (%s)", action.verb)
		}

		return withState(*endpoint, func(st state.State) error {
			return annotateFailed(cmd.Context(), st, cmd.OutOrStdout(), args[0], machine, action.verb, action.annotation)
		})
	}

	return cmd
}

// annotateFailed puts the annotation that annotation computes on the Machine of every failed upgrade of the
// cluster (or only machine's, failed or not, when named): the controllers act on it.
func annotateFailed(ctx context.Context, st state.State, w io.Writer, clusterID, machine, verb string,
	annotation func(*clusterView, *upgrade.MachineUpgradeStatusSpec) (key, value string),
) error {
	view, err := loadCluster(ctx, st, clusterID)
	if err != nil {
		return err
	}

	var targets []string

	for _, m := range view.machines {
		id := m.Metadata().ID()
		u, ok := view.upgrades[id]

		switch {
		case machine != "" && id != machine:
		case !ok:
			if machine != "" {
				return fmt.Errorf("machine %q has no Talos upgrade to act on", machine)
			}
		case machine != "" || u.TypedSpec().Phase == upgrade.MachineFailed:
			targets = append(targets, id)
		}
	}

	if machine != "" && len(targets) == 0 {
		return fmt.Errorf("machine %q is not in cluster %q", machine, clusterID)
	}

	if len(targets) == 0 {
		return fmt.Errorf("cluster %q has no failed machine upgrade", clusterID)
	}

	for _, id := range targets {
		key, value := annotation(view, view.upgrades[id].TypedSpec())

		if _, err = safe.StateUpdateWithConflicts(ctx, st, cluster.NewMachine(id).Metadata(), func(m *cluster.Machine) error {
			m.Metadata().Annotations().Set(key, value)

			return nil
		}); err != nil {
			return fmt.Errorf("annotating machine %q: %w", id, err)
		}

		if _, err = fmt.Fprintf(w, "%s %s (%s=%s)\n", verb, id, key, value); err != nil {
			return err
		}
	}

	return nil
}
