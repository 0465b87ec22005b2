package main

import (
	"fmt"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"

	"github.com/upshift-io/upshift/resources/cluster"
)

func init() {
	var reason string

	lock := &cobra.Command{
		Use:   "lock MACHINE [--reason TEXT]",
		Short: "Keep a worker out of upgrades until unlocked (it neither blocks the others nor holds a slot)",
		Args:  cobra.ExactArgs(1),
	}

	lockEndpoint := clientFlags(lock)
	lock.Flags().StringVar(&reason, "reason", "", "why the machine is locked, shown by status")

	lock.RunE = func(cmd *cobra.Command, args []string) error {
		return withState(lockEndpoint, func(st state.State) error {
			l := cluster.NewMachineLock(args[0])
			l.TypedSpec().Reason = reason

			if err := st.Create(cmd.Context(), l); err != nil {
				if state.IsConflictError(err) {
					return fmt.Errorf("machine %q is already locked", args[0])
				}

				return err
			}

			_, err := fmt.Fprintf(cmd.OutOrStdout(), "machine %s locked\n", args[0])

			return err
		})
	}

	unlock := &cobra.Command{
		Use:   "unlock MACHINE",
		Short: "Let a locked machine upgrade again; a rollout picks it up next",
		Args:  cobra.ExactArgs(1),
	}

	unlockEndpoint := clientFlags(unlock)

	unlock.RunE = func(cmd *cobra.Command, args []string) error {
		return withState(unlockEndpoint, func(st state.State) error {
			if err := st.Destroy(cmd.Context(), cluster.NewMachineLock(args[0]).Metadata()); err != nil {
				if state.IsNotFoundError(err) {
					return fmt.Errorf("machine %q is not locked", args[0])
				}

				return err
			}

			_, err := fmt.Fprintf(cmd.OutOrStdout(), "machine %s unlocked\n", args[0])

			return err
		})
	}

	rootCmd.AddCommand(lock, unlock)
}
