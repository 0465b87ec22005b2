package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/state/server"
)

func init() {
	configCmd := &cobra.Command{
		Use:   "config",
		Short: "Manage client configs (the server's CA and a client certificate carrying a name and a role)",
	}

	var name, role, out, dataDir string

	newCmd := &cobra.Command{
		Use:   "new --role reader|operator|admin --name NAME -o FILE",
		Short: "Issue a client config: locally on the server's data dir (--data-dir), or over the API as an admin",
		Long: "Issue a client config for NAME (the writer the event log records for its writes) with a role:\n" +
			"  reader    get, watch, history, status (never credentials)\n" +
			"  operator  also upgrades, retry/skip/pause, locks, config patches, manifest syncs\n" +
			"  admin     also clusters, machines, credentials, issuing configs\n" +
			"With --data-dir it signs with the CA in the server's data dir (no server needed); else it asks the server\n" +
			"named by --config/--endpoint, which must be an admin's.",
		Args: cobra.NoArgs,
	}

	to := clientFlags(newCmd)
	newCmd.Flags().StringVar(&name, "name", "", "name of the client (its certificate's CN)")
	newCmd.Flags().StringVar(&role, "role", "", "role of the client: reader, operator or admin")
	newCmd.Flags().StringVarP(&out, "output", "o", "", "file to write the config to (0600)")
	newCmd.Flags().StringVar(&dataDir, "data-dir", "", "issue locally with the CA in this data dir of a server")

	for _, flag := range []string{"name", "role", "output"} {
		_ = newCmd.MarkFlagRequired(flag) //nolint:errcheck // the flags exist
	}

	newCmd.RunE = func(cmd *cobra.Command, _ []string) error {
		r, err := server.ParseRole(role)
		if err != nil {
			return err
		}

		cfg, err := issue(cmd, to, dataDir, name, r)
		if err != nil {
			return err
		}

		if err = cfg.Write(out); err != nil {
			return err
		}

		_, err = fmt.Fprintf(cmd.OutOrStdout(), "client config for %s (role %s) written to %s, endpoint %s\n", name, r, out, cfg.Endpoint)

		return err
	}

	configCmd.AddCommand(newCmd)
	rootCmd.AddCommand(configCmd)
}

// issue issues a client config locally on dataDir, or, with no dataDir, over the API of the server to names.
func issue(cmd *cobra.Command, to *target, dataDir, name string, role server.Role) (*server.ClientConfig, error) {
	if dataDir != "" {
		pki, err := server.LoadPKI(dataDir)
		if err != nil {
			return nil, err
		}

		endpoint := to.endpoint
		if endpoint == "" {
			endpoint = endpointOfDataDir(dataDir)
		}

		return pki.Issue(name, role, endpoint)
	}

	c, err := connect(to)
	if err != nil {
		return nil, err
	}

	defer c.Close() //nolint:errcheck

	cfg, err := c.IssueConfig(cmd.Context(), name, role)

	return cfg, explain(to, err)
}

// endpointOfDataDir is where the server of dataDir last listened, from the admin config it keeps there, else the
// default address.
func endpointOfDataDir(dataDir string) string {
	if cfg, err := server.LoadClientConfig(filepath.Join(dataDir, upshift.AdminConfigFileName)); err == nil && cfg.Endpoint != "" {
		return cfg.Endpoint
	}

	return upshift.DefaultListenAddress
}
