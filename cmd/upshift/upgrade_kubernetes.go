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

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

func upgradeKubernetesCmd() *cobra.Command {
	var (
		to         string
		dryRun     bool
		skipChecks []string
	)

	cmd := &cobra.Command{
		Use:   "kubernetes CLUSTER --to VERSION [--dry-run] [--skip-checks NAME]",
		Short: "Move a cluster's Kubernetes to a version (upgrade or downgrade), or print the plan",
		Long: "Set the cluster's Kubernetes version; the engine then upgrades it: pre-checks, a pre-pull on every node,\n" +
			"the static pods one control plane at a time, kube-proxy, then the kubelets. A jump of several minors runs\n" +
			"as a chain of full upgrades. Setting the version back reverts step by step. With --dry-run, print the\n" +
			"plan, each node's Talos support and the ordered steps, and change nothing. --skip-checks NAME overrides\n" +
			"a failed pre-check (" + strings.Join(cluster.KubernetesChecks, ", ") + "); the Cluster records it.",
		Args: cobra.ExactArgs(1),
	}

	endpoint := clientFlags(cmd)
	cmd.Flags().StringVar(&to, "to", "", "the Kubernetes version the cluster should run, e.g. v1.36.2 (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and the ordered steps and change nothing")
	cmd.Flags().StringSliceVar(&skipChecks, "skip-checks", nil, "override a failed pre-check by name (repeatable)")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if to == "" {
			return errors.New("--to VERSION is required")
		}

		for _, name := range skipChecks {
			if !slices.Contains(cluster.KubernetesChecks, name) {
				return fmt.Errorf("--skip-checks: %q is not a pre-check; the checks are %s", name, strings.Join(cluster.KubernetesChecks, ", "))
			}
		}

		return withState(endpoint, func(st state.State) error {
			return upgradeKubernetes(cmd.Context(), st, cmd.OutOrStdout(), args[0], to, skipChecks, dryRun)
		})
	}

	return cmd
}

// errNotPlannableYet is a Kubernetes change refused only because the engine has not observed the cluster enough to
// plan it (a machine or its kubelet version not seen yet): the same request succeeds once it has.
var errNotPlannableYet = errors.New("cannot be planned yet")

// upgradeKubernetes plans cluster id's Kubernetes change with kuberollout.Decide (what the controller runs) over the
// cluster as the engine reads it, prints it and, unless dryRun, requests it. A plan the rules refuse (no path, a
// node's Talos that does not support a hop) is refused with the reason and changes nothing.
func upgradeKubernetes(ctx context.Context, st state.State, w io.Writer, id, to string, skip []string, dryRun bool) error {
	if _, err := kuberollout.NewPlan(to, to, to, nil); err != nil {
		return fmt.Errorf("--to: %w", err)
	}

	view, err := controllers.ReadKubernetesView(ctx, st, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return fmt.Errorf("cluster %q not found", id)
		}

		return err
	}

	spec := *view.Cluster
	spec.KubernetesVersion, spec.SkipKubernetesChecks = to, mergeSkips(spec.SkipKubernetesChecks, skip)
	view.Cluster = &spec
	view.Talos = &upgrade.TalosUpgradeStatusSpec{YieldsTo: kuberollout.Canonical(to)} // the plan, not the wait

	plan := kuberollout.Decide(kuberollout.Policy{}, view, upgrade.KubernetesUpgradeStatusSpec{})

	switch {
	case plan.Phase == upgrade.PhaseBlocked:
		return fmt.Errorf("refusing to change cluster %q to Kubernetes %s: %s", id, to, plan.Error)
	case plan.Phase == upgrade.PhasePending && len(plan.Steps) == 0:
		return fmt.Errorf("cluster %q %w: %s; try again shortly", id, errNotPlannableYet, plan.Reason)
	}

	printKubernetesPlan(w, view, plan)

	if dryRun {
		_, err = fmt.Fprintln(w, "dry run: nothing changed")

		return err
	}

	current, err := safe.StateGetByID[*upgrade.KubernetesUpgradeStatus](ctx, st, id)
	if err != nil && !state.IsNotFoundError(err) {
		return fmt.Errorf("reading Kubernetes upgrade of cluster %q: %w", id, err)
	}

	if _, err = safe.StateUpdateWithConflicts(ctx, st, cluster.NewCluster(id).Metadata(), func(c *cluster.Cluster) error {
		c.TypedSpec().KubernetesVersion, c.TypedSpec().SkipKubernetesChecks = "v"+kuberollout.Canonical(to), spec.SkipKubernetesChecks

		return nil
	}); err != nil {
		return fmt.Errorf("updating cluster %q: %w", id, err)
	}

	if current != nil && current.TypedSpec().Phase == upgrade.PhaseFailed && kuberollout.SameVersion(current.TypedSpec().ToVersion, to) {
		fmt.Fprintln(w, "the upgrade failed toward this version: `upshift upgrade retry "+id+"` resumes it at the failed step")
	}

	_, err = fmt.Fprintf(w, "cluster %s now wants Kubernetes %s; follow it with `upshift status %s`\n", id, kuberollout.Canonical(to), id)

	return err
}

func mergeSkips(have, add []string) []string {
	out := slices.Clone(have)

	for _, s := range add {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}

	return out
}

// printKubernetesPlan prints the path, each node's Talos support, the skipped checks and the ordered steps.
func printKubernetesPlan(w io.Writer, view kuberollout.View, plan upgrade.KubernetesUpgradeStatusSpec) {
	if len(plan.Steps) == 0 {
		fmt.Fprintf(w, "Kubernetes %s: every node runs it already; nothing to do\n", plan.ToVersion)

		return
	}

	fmt.Fprintf(w, "Kubernetes %s %s -> %s, path %s\n", plan.Direction, plan.FromVersion, plan.ToVersion, strings.Join(plan.Plan, " -> "))

	for _, m := range view.Machines {
		fmt.Fprintf(w, "  %-12s Talos %-8s kubelet %-8s supports the plan\n", m.ID, m.Version(), m.Status.KubeletVersion)
	}

	if len(plan.SkippedChecks) > 0 {
		fmt.Fprintf(w, "pre-checks overridden: %s\n", strings.Join(plan.SkippedChecks, ", "))
	}

	fmt.Fprintln(w, "pre-checks run first on each hop (the engine records their results); steps in order:")

	for i, s := range plan.Steps {
		fmt.Fprintf(w, "  %2d. %s\n", i+1, s)
	}
}

// retryKubernetes asks for a retry of the cluster's failed Kubernetes upgrade; ok is false when it has none.
func retryKubernetes(ctx context.Context, st state.State, w io.Writer, id string) (bool, error) {
	k, err := safe.StateGetByID[*upgrade.KubernetesUpgradeStatus](ctx, st, id)
	if state.IsNotFoundError(err) {
		return false, nil
	}

	if err != nil {
		return false, fmt.Errorf("reading Kubernetes upgrade of cluster %q: %w", id, err)
	}

	if s := k.TypedSpec(); s.Phase != upgrade.PhaseFailed && !(s.Phase == upgrade.PhaseBlocked && len(s.Steps) > 0) {
		return false, nil
	}

	value := k.TypedSpec().RetryValue()

	if _, err = safe.StateUpdateWithConflicts(ctx, st, cluster.NewCluster(id).Metadata(), func(c *cluster.Cluster) error {
		c.Metadata().Annotations().Set(upgrade.KubernetesRetryAnnotation, value)

		return nil
	}); err != nil {
		return false, fmt.Errorf("annotating cluster %q: %w", id, err)
	}

	_, err = fmt.Fprintf(w, "retrying the Kubernetes upgrade of %s at its failed step (%s=%s)\n", id, upgrade.KubernetesRetryAnnotation, value)

	return true, err
}
