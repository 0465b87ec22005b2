// Command upshift is the engine (serve), the emulated Talos fleet (emulator), the demo and the client CLI in one binary.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// rootCmd is the top of the command tree; every subcommand registers itself on it from its own file's init.
var rootCmd = &cobra.Command{
	Use:           "upshift",
	Short:         "Keep Talos Linux clusters up to date: rolling Talos OS upgrades as persisted state transitions",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
