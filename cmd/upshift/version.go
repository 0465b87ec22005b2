package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/internal/buildinfo"
)

func init() {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the version of this client and of the server it talks to",
		Long: "Show the version of this client, then ask the server for its own (any role may). The client's is shown\n" +
			"even when the server cannot be reached; the command then fails with the reason.",
		Args: cobra.NoArgs,
	}

	endpoint := clientFlags(cmd)

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		fmt.Fprintf(cmd.OutOrStdout(), "client: %s\n", buildinfo.Version())

		c, err := connect(endpoint)
		if err != nil {
			return err
		}

		defer c.Close() //nolint:errcheck

		v, err := c.ServerVersion(cmd.Context())
		if err != nil {
			return explain(endpoint, fmt.Errorf("asking the server for its version: %w", err))
		}

		_, err = fmt.Fprintf(cmd.OutOrStdout(), "server: %s (%s)\n", v, endpoint.endpoint)

		return err
	}

	rootCmd.AddCommand(cmd)
}
