package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/state/store"
)

// errInconsistent makes `state verify` exit non-zero when the log does not replay to the stored state; the report
// itself is already on stdout.
var errInconsistent = errors.New("state is inconsistent: replaying the log does not reproduce the stored state")

func init() {
	stateCmd := &cobra.Command{
		Use:   "state",
		Short: "Inspect the engine's local state file",
	}

	var dataDir string

	verifyCmd := &cobra.Command{
		Use:   "verify",
		Short: "Replay the event log and compare it with the stored state (the server must be stopped)",
		Long: `Opens DIR/state.db read-only, rebuilds the state from the compaction snapshot and the retained event log,
and compares it byte for byte with the stored current state. Prints a report; exits non-zero if anything differs,
or if the file cannot be read (missing, foreign, corrupt, or held by a running server).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			report, err := store.Verify(filepath.Join(dataDir, upshift.StateFileName))
			if err != nil {
				return err
			}

			fmt.Fprint(cmd.OutOrStdout(), report.String())

			if !report.Consistent() {
				return errInconsistent
			}

			return nil
		},
	}

	verifyCmd.Flags().StringVar(&dataDir, "data-dir", "", "directory holding the engine's state (as given to serve)")
	_ = verifyCmd.MarkFlagRequired("data-dir") //nolint:errcheck // the flag exists

	stateCmd.AddCommand(verifyCmd)
	rootCmd.AddCommand(stateCmd)
}
