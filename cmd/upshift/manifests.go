package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
)

func init() {
	cmd := &cobra.Command{
		Use:   "manifests",
		Short: "Show and apply the bootstrap manifests Talos renders (kube-proxy, CoreDNS, the CNI)",
	}

	cmd.AddCommand(manifestsDiffCmd(), manifestsSyncCmd())
	rootCmd.AddCommand(cmd)
}

func manifestsDiffCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "diff CLUSTER",
		Short: "Print how the live bootstrap objects differ from what Talos renders: a unified diff per object, conflicts marked",
		Long: "Print the engine's last diff of the cluster's bootstrap manifests: a unified diff per object, and the fields\n" +
			"another field manager set that a sync would overwrite (CONFLICT). The engine computes it after every upgrade\n" +
			"and on an interval.",
		Args: cobra.ExactArgs(1),
	}

	endpoint := clientFlags(cmd)

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withState(endpoint, func(st state.State) error {
			ms, err := safe.StateGetByID[*manifest.ManifestSync](cmd.Context(), st, args[0])
			if err != nil {
				if state.IsNotFoundError(err) {
					return fmt.Errorf("no diff of cluster %q yet: the engine computes it once a control plane is observed", args[0])
				}

				return err
			}

			return printDiff(cmd.OutOrStdout(), args[0], ms.TypedSpec())
		})
	}

	return cmd
}

// printDiff prints every object's diff and conflicts.
func printDiff(w io.Writer, id string, s *manifest.ManifestSyncSpec) error {
	fmt.Fprintf(w, "# cluster %s: %s, %d bootstrap objects out of sync (unchanged since %s)\n", id, s.Phase, s.OutOfSync, s.CheckedAt.Local().Format(time.RFC3339))

	if s.Error != "" {
		fmt.Fprintf(w, "# error: %s\n", s.Error)
	}

	for _, d := range s.Diffs {
		fmt.Fprintf(w, "\n## %s (%s)\n", d.Object, actionOf(d.Action))

		for _, c := range d.Conflicts {
			fmt.Fprintf(w, "CONFLICT %s: %s would be overwritten\n", d.Object, c)
		}

		if d.Refused != "" {
			fmt.Fprintf(w, "REFUSED by the API server: %s\n", d.Refused)
		}

		fmt.Fprint(w, d.Diff)
	}

	for _, p := range s.Prunable {
		fmt.Fprintf(w, "\n## %s: no longer rendered; `sync --prune` deletes it\n", p)
	}

	_, err := fmt.Fprintln(w)

	return err
}

func actionOf(action string) string {
	if action == "" {
		return "no change of its own"
	}

	return action
}

func manifestsSyncCmd() *cobra.Command {
	var req cluster.ManifestSyncRequestSpec

	cmd := &cobra.Command{
		Use:   "sync CLUSTER [--dry-run] [--prune] [--force-conflicts]",
		Short: "Apply the bootstrap manifests Talos renders, and wait for the outcome",
		Long: "Ask the engine to apply the cluster's bootstrap manifests: it records every object's diff first, applies them\n" +
			"(server-side apply with Talos' inventory; a dry-run update and update on Talos < 1.13), and waits for the\n" +
			"rollouts it caused. Objects with fields another field manager set are held back unless --force-conflicts.\n" +
			"Nothing is deleted unless --prune. Prints a line per object as it goes; exits non-zero when the sync failed.",
		Args: cobra.ExactArgs(1),
	}

	endpoint := clientFlags(cmd)
	cmd.Flags().BoolVar(&req.DryRun, "dry-run", false, "compute and record the diff, apply nothing")
	cmd.Flags().BoolVar(&req.Prune, "prune", false, "delete objects an earlier sync created that Talos no longer renders (listed first)")
	cmd.Flags().BoolVar(&req.ForceConflicts, "force-conflicts", false, "overwrite fields another field manager set")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withState(endpoint, func(st state.State) error {
			return manifestsSync(cmd.Context(), st, cmd.OutOrStdout(), args[0], req)
		})
	}

	return cmd
}

// manifestsSync writes a new request and follows the cluster's ManifestSync until the request finishes.
func manifestsSync(ctx context.Context, st state.State, w io.Writer, id string, req cluster.ManifestSyncRequestSpec) error {
	req.RequestID = strconv.FormatInt(time.Now().UnixNano(), 36)

	events := make(chan safe.WrappedStateEvent[*manifest.ManifestSync])
	if err := safe.StateWatch(ctx, st, manifest.NewManifestSync(id).Metadata(), events); err != nil {
		return err
	}

	if _, err := safe.StateUpdateWithConflicts(ctx, st, cluster.NewManifestSyncRequest(id).Metadata(), func(r *cluster.ManifestSyncRequest) error {
		*r.TypedSpec() = req

		return nil
	}); err != nil {
		if !state.IsNotFoundError(err) {
			return err
		}

		r := cluster.NewManifestSyncRequest(id)
		*r.TypedSpec() = req

		if err = st.Create(ctx, r); err != nil {
			return err
		}
	}

	fmt.Fprintf(w, "sync %s of cluster %s requested\n", req.RequestID, id)

	shown := map[string]string{}

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-events:
			ms, err := ev.Resource()
			if err != nil {
				continue // a destroyed or bootstrapped event carries no ManifestSync to show
			}

			s := ms.TypedSpec()
			if s.Request.ID != req.RequestID {
				continue
			}

			for _, d := range s.Diffs {
				line := syncLine(d)
				if shown[d.Object] != line {
					shown[d.Object] = line
					fmt.Fprintln(w, line)
				}
			}

			if s.Request.Finished.IsZero() {
				continue
			}

			fmt.Fprintf(w, "%s: %s (%d out of sync)\n", s.Phase, s.Request.Outcome, s.OutOfSync)

			if s.Phase == manifest.PhaseFailed {
				return errors.New("sync failed: " + s.Error)
			}

			return nil
		}
	}
}

// syncLine is one object's line in the sync's output.
func syncLine(d manifest.ObjectDiff) string {
	line := fmt.Sprintf("%-9s %s", orDash(d.Status), d.Object)
	if d.Action != "" {
		line += " (" + d.Action + ")"
	}

	if d.Reason != "" {
		line += ": " + d.Reason
	}

	return line
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}

	return s
}

// manifestSyncDetail sums up a ManifestSync event for `upshift history`: the phase, and the apply it records.
func manifestSyncDetail(resourceYAML string) string {
	var doc struct {
		Spec manifest.ManifestSyncSpec `yaml:"spec"`
	}

	if err := yaml.Unmarshal([]byte(resourceYAML), &doc); err != nil {
		return ""
	}

	s, parts := doc.Spec, []string{string(doc.Spec.Phase), fmt.Sprintf("%d out of sync", doc.Spec.OutOfSync)}

	if r := s.Request; r.ID != "" {
		sync := "sync " + r.ID + " by " + r.By

		for _, opt := range []struct {
			flag string
			on   bool
		}{{"--dry-run", r.DryRun}, {"--prune", r.Prune}, {"--force-conflicts", r.ForceConflicts}} {
			if opt.on {
				sync += " " + opt.flag
			}
		}

		parts = append(parts, sync)

		if r.Outcome != "" {
			parts = append(parts, r.Outcome)
		}
	}

	return strings.Join(parts, "; ")
}
