package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift"
)

func init() {
	var dataDir, listen string

	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the engine and serve its gRPC API",
		Long: "Run the engine (durable state, validation, controllers) and serve the gRPC API that the client commands use.\n" +
			"The state lives in DATA-DIR/" + upshift.StateFileName + "; only one server may use a data dir at a time.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), dataDir, listen)
		},
	}

	cmd.Flags().StringVar(&dataDir, "data-dir", defaultDataDir(), "directory holding the engine's state")
	cmd.Flags().StringVar(&listen, "listen", upshift.DefaultListenAddress, "address of the gRPC API (host:port; port 0 picks a free one)")
	rootCmd.AddCommand(cmd)
}

// defaultDataDir is ~/.upshift, or ./upshift-data when there is no home directory.
func defaultDataDir() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return "upshift-data"
	}

	return filepath.Join(home, ".upshift")
}

func serve(ctx context.Context, dataDir, listen string) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.InfoLevel)

	logger, err := cfg.Build()
	if err != nil {
		return fmt.Errorf("building logger: %w", err)
	}

	defer logger.Sync() //nolint:errcheck // nothing to do about a failed flush of stderr

	engine, err := upshift.New(upshift.WithDataDir(dataDir), upshift.WithListenAddress(listen), upshift.WithLogger(logger))
	if err != nil {
		return err
	}

	// Scripts and tests read the address from this line (it matters with --listen 127.0.0.1:0).
	fmt.Printf("upshift serving on %s (state in %s)\n", engine.Addr(), filepath.Join(dataDir, upshift.StateFileName))

	return engine.Run(ctx)
}
