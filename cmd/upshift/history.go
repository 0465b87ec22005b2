package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/state/server"
)

func init() {
	cmd := &cobra.Command{
		Use:   "history TYPE ID",
		Short: "Show the event log of one resource: every write, when, and by whom",
		Long: "Show the retained event log of one resource: time, global sequence number, event, resource version and\n" +
			"writer (a controller, or the API user). The first line says where the retained log begins.",
		Args: cobra.ExactArgs(2),
	}

	endpoint := clientFlags(cmd)

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withClient(endpoint, func(c *server.Client) error {
			return history(cmd.Context(), c, cmd.OutOrStdout(), args[0], args[1])
		})
	}

	rootCmd.AddCommand(cmd)
}

func history(ctx context.Context, c *server.Client, w io.Writer, typ, id string) error {
	rd, err := resolveType(ctx, c, typ)
	if err != nil {
		return err
	}

	hist, err := c.History(ctx, rd.TypedSpec().DefaultNamespace, rd.TypedSpec().Type, id)
	if err != nil {
		return err
	}

	begins := fmt.Sprintf("retained history begins at seq %d", hist.RetainedFrom)
	if hist.RetainedSince.IsZero() {
		begins += " (the whole log: nothing was compacted)"
	} else {
		begins += fmt.Sprintf(" (older events, up to %s, were compacted into a snapshot)", hist.RetainedSince.Format(time.RFC3339))
	}

	if len(hist.Events) == 0 {
		return fmt.Errorf("no events of %s %q; %s", rd.TypedSpec().DisplayType, id, begins)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintf(tw, "# %s %q: %s\n", rd.TypedSpec().DisplayType, id, begins)
	fmt.Fprintln(tw, "TIME\tSEQ\tEVENT\tVERSION\tWRITER\tDETAIL")

	for _, ev := range hist.Events {
		detail := ""
		if rd.TypedSpec().Type == manifest.ManifestSyncType {
			detail = manifestSyncDetail(ev.Resource)
		}

		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\n", ev.Time.Local().Format(time.RFC3339Nano), ev.Seq, ev.Kind, ev.Version, ev.Writer, detail)
	}

	return tw.Flush()
}
