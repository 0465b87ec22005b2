package main

import (
	"context"
	"fmt"
	"io"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/state/server"
)

func init() {
	var (
		output      string
		watch       bool
		showSecrets bool
	)

	cmd := &cobra.Command{
		Use:   "get TYPE [ID]",
		Short: "Show resources of one type, or one resource, and optionally watch them change",
		Long: "Show resources of one type (any type name or alias, e.g. cluster, machines, ms), or one resource by ID.\n" +
			"With -w, keep printing changes as they happen; the EVENT column (or event field) says created, updated or destroyed.\n" +
			"Secrets (credentials) are shown as " + resources.Redacted + " when set, with when they were last rotated;\n" +
			"--show-secrets reads them back.",
		Args: cobra.RangeArgs(1, 2),
	}

	endpoint := clientFlags(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print changes as they happen")
	cmd.Flags().BoolVar(&showSecrets, "show-secrets", false, "print the content of secrets (credentials) instead of whether they are set")

	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := connect(endpoint)
		if err != nil {
			return err
		}

		defer c.Close() //nolint:errcheck

		ctx := cmd.Context()
		if showSecrets {
			ctx = server.WithSecretsShown(ctx)
		}

		return explain(endpoint, get(ctx, c, cmd.OutOrStdout(), args, output, watch))
	}

	rootCmd.AddCommand(cmd)
}

func get(ctx context.Context, c *server.Client, w io.Writer, args []string, output string, watch bool) error {
	rd, err := resolveType(ctx, c, args[0])
	if err != nil {
		return err
	}

	p, err := newPrinter(output, w, rd, watch)
	if err != nil {
		return err
	}

	kind := resource.NewMetadata(rd.TypedSpec().DefaultNamespace, rd.TypedSpec().Type, "", resource.VersionUndefined)

	if watch {
		return watchAndPrint(ctx, c, p, rd, &kind, args[1:])
	}

	if len(args) == 2 {
		ptr := resource.NewMetadata(kind.Namespace(), kind.Type(), args[1], resource.VersionUndefined)

		r, err := c.State().Get(ctx, ptr, state.WithGetUnmarshalOptions(state.WithSkipProtobufUnmarshal()))
		if state.IsNotFoundError(err) {
			return fmt.Errorf("%s %q not found", rd.TypedSpec().DisplayType, args[1])
		}

		if err != nil {
			return err
		}

		return printAll(p, []resource.Resource{r})
	}

	list, err := c.State().List(ctx, &kind, state.WithListUnmarshalOptions(state.WithSkipProtobufUnmarshal()))
	if err != nil {
		return err
	}

	return printAll(p, list.Items)
}

func printAll(p printer, rs []resource.Resource) error {
	for _, r := range rs {
		if err := p.print(r, ""); err != nil {
			return err
		}
	}

	return p.flush()
}

// watchAndPrint prints what exists (as created), then every change, until ctx ends or the watch fails.
func watchAndPrint(ctx context.Context, c *server.Client, p printer, rd *meta.ResourceDefinition, kind *resource.Metadata, ids []string) error {
	events := make(chan state.Event)

	var err error

	if len(ids) == 1 {
		ptr := resource.NewMetadata(kind.Namespace(), kind.Type(), ids[0], resource.VersionUndefined)
		err = c.State().Watch(ctx, ptr, events, state.WithWatchUnmarshalOptions(state.WithSkipProtobufUnmarshal()))
	} else {
		err = c.State().WatchKind(ctx, kind, events, state.WithBootstrapContents(true),
			state.WithWatchKindUnmarshalOptions(state.WithSkipProtobufUnmarshal()))
	}

	if err != nil {
		return fmt.Errorf("watching %s: %w", rd.TypedSpec().DisplayType, err)
	}

	// Rows of what exists are flushed together once the server says it sent them all, so they align.
	bootstrapped := len(ids) == 1

	for {
		var ev state.Event

		select {
		case <-ctx.Done():
			return nil
		case ev = <-events:
		}

		switch ev.Type {
		case state.Created, state.Updated, state.Destroyed:
			// A watched ID that does not exist (yet) starts with a tombstone, which over gRPC arrives as a
			// resource without a spec and without a version.
			if resource.IsTombstone(ev.Resource) || ev.Resource.Metadata().Version().Value() == 0 {
				continue
			}

			if err = p.print(ev.Resource, eventName(ev.Type)); err != nil {
				return err
			}

			if bootstrapped {
				err = p.flush()
			}
		case state.Bootstrapped:
			bootstrapped = true
			err = p.flush()
		case state.Errored:
			return fmt.Errorf("watching %s: %w", rd.TypedSpec().DisplayType, ev.Error)
		case state.Noop:
		}

		if err != nil {
			return err
		}
	}
}

func eventName(t state.EventType) string {
	switch t {
	case state.Created:
		return "created"
	case state.Updated:
		return "updated"
	case state.Destroyed:
		return "destroyed"
	default:
		return t.String()
	}
}
