package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
	"github.com/upshift-io/upshift/state/server"
)

func init() {
	cmd := &cobra.Command{
		Use:   "delete TYPE ID",
		Short: "Delete an input resource (a cluster, machine, lock, config patch or credentials)",
		Long: "Delete one input resource. The engine refuses, changing nothing, to delete a cluster that still has machines\n" +
			"or a machine in the middle of an upgrade step, and says why. The engine's outputs (statuses, summaries)\n" +
			"are written by its controllers only and go away with the inputs they follow.",
		Args: cobra.ExactArgs(2),
	}

	endpoint := clientFlags(cmd)

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return withClient(endpoint, func(c *server.Client) error {
			return deleteResource(cmd.Context(), c, cmd.OutOrStdout(), args[0], args[1])
		})
	}

	rootCmd.AddCommand(cmd)
}

// deleteResource deletes the input typ/id. It destroys it at once (inputs carry no finalizers) rather than tearing
// it down first, so a refused delete leaves no trace, not even a changed phase.
func deleteResource(ctx context.Context, c *server.Client, w io.Writer, typ, id string) error {
	rd, err := resolveType(ctx, c, typ)
	if err != nil {
		return err
	}

	spec := rd.TypedSpec()

	prototype, ok := catalog.Lookup(spec.Type)
	if !ok || !resources.IsInput(resources.New(prototype, id)) {
		return fmt.Errorf("%s is an output of the engine, written by its controllers only: it cannot be deleted "+
			"(it goes away with the input it follows)", spec.DisplayType)
	}

	if err = c.State().Destroy(ctx, resource.NewMetadata(spec.DefaultNamespace, spec.Type, id, resource.VersionUndefined)); err != nil {
		if state.IsNotFoundError(err) {
			return fmt.Errorf("%s %q not found", spec.DisplayType, id)
		}

		return err
	}

	_, err = fmt.Fprintf(w, "%s/%s deleted\n", strings.ToLower(spec.DisplayType), id)

	return err
}
