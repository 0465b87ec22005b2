package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/store"
)

// The event log's retention by default: a year of history (long enough to compare this year's upgrades with
// last year's), and at most a million events (about 630 MB of log; see README.md, "Disk use of the event log"),
// which only a fleet of thousands of machines, or one whose machines flap all year, reaches first.
const (
	defaultRetentionEvents = 1_000_000
	defaultRetentionAge    = 365 * 24 * time.Hour
)

func init() {
	var (
		dataDir, listen                   string
		talosReleases, kubernetesReleases []string
		monitoring                        monitoringFlags
	)

	retention := store.Retention{MaxEvents: defaultRetentionEvents, MaxAge: defaultRetentionAge}

	var stateConfig *stateFlags

	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the engine and serve its gRPC API",
		Long: "Run the engine (durable state, validation, controllers) and serve the gRPC API that the client commands use.\n" +
			"The state lives in DATA-DIR/" + upshift.StateFileName + "; only one server may use a data dir at a time.\n" +
			"With --state etcd it lives in etcd instead, shared by several replicas: each serves the API, one (elected) runs\n" +
			"the controllers; every replica needs the first one's DATA-DIR/" + upshift.KeyFileName + " (and its ca.crt, ca.key for one client config).\n" +
			"On its first start it creates a CA, a server certificate and an admin client config (DATA-DIR/" + upshift.AdminConfigFileName + ")\n" +
			"in the data dir, and copies the config to $" + configEnv + " or " + userConfigPath() + " if nothing is there.\n" +
			"Every client is authenticated by mTLS, its role in its certificate (`upshift config new` issues more).\n" +
			"The event log keeps the events younger than --history-retention-age, at most --history-retention-events of them;\n" +
			"older ones are folded into a snapshot, so the state stays whole and `upshift history` says where the log begins.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			known, err := knownReleases(talosReleases, kubernetesReleases)
			if err != nil {
				return err
			}

			return serve(cmd.Context(), dataDir, listen, monitoring, retention, stateConfig, known...)
		},
	}

	cmd.Flags().StringVar(&dataDir, "data-dir", defaultDataDir(), "directory holding the engine's state")
	cmd.Flags().StringVar(&listen, "listen", upshift.DefaultListenAddress, "address of the gRPC API (host:port; port 0 picks a free one); loopback by default, mTLS on any address")
	cmd.Flags().Var((*retentionEvents)(&retention.MaxEvents), "history-retention-events",
		"keep at most this many of the newest events in the event log; older ones are folded into a snapshot (0: no limit)")
	cmd.Flags().Var((*retentionAge)(&retention.MaxAge), "history-retention-age",
		"keep only the events younger than this in the event log, e.g. 720h or 90d; older ones are folded into a snapshot (0: no limit)")
	cmd.Flags().StringArrayVar(&talosReleases, "talos-release", nil,
		"a Talos release the engine may upgrade to, besides the ones it ships with: VERSION or VERSION=INSTALLER-TAG (repeatable)")
	cmd.Flags().StringArrayVar(&kubernetesReleases, "kubernetes-release", nil,
		"a Kubernetes release the engine may upgrade to, besides the ones it ships with (repeatable)")
	cmd.Flags().StringVar(&monitoring.metricsListen, "metrics-listen", "",
		"serve Prometheus metrics on http://ADDR/metrics (HOST:PORT, or a port for loopback); off when empty")
	cmd.Flags().StringVar(&monitoring.logLevel, "log-level", "info", "least level logged: debug, info, warn or error")
	cmd.Flags().StringVar(&monitoring.logFormat, "log-format", logFormatConsole, "log format: console or json")
	stateConfig = addStateFlags(cmd)
	rootCmd.AddCommand(cmd)
}

// monitoringFlags are serve's flags for logs and metrics (README.md, "Monitoring").
type monitoringFlags struct {
	metricsListen, logLevel, logFormat string
}

// knownReleases turns --talos-release and --kubernetes-release into the upgrade options that add them to the
// releases the engine ships with.
func knownReleases(talos, kubernetes []string) ([]controllers.UpgradeOption, error) {
	var opts []controllers.UpgradeOption

	if len(talos) > 0 {
		catalogue := versions.Shipped()

		for _, r := range talos {
			version, tag, _ := strings.Cut(r, "=")
			if err := catalogue.Add(version, tag); err != nil {
				return nil, fmt.Errorf("--talos-release %q: %w", r, err)
			}
		}

		opts = append(opts, controllers.WithCatalogue(catalogue))
	}

	if len(kubernetes) > 0 {
		releases := slices.Clone(kuberollout.DefaultReleases)

		for _, r := range kubernetes {
			if _, err := resources.ParseVersion(r); err != nil {
				return nil, fmt.Errorf("--kubernetes-release: %w", err)
			}

			releases = append(releases, strings.TrimPrefix(r, "v"))
		}

		slices.SortFunc(releases, func(a, b string) int {
			va, _ := resources.ParseVersion(a) //nolint:errcheck // parsed above, or shipped
			vb, _ := resources.ParseVersion(b) //nolint:errcheck // parsed above, or shipped

			return va.Compare(vb)
		})

		opts = append(opts, controllers.WithKubernetesReleases(slices.Compact(releases)...))
	}

	return opts, nil
}

// defaultDataDir is ~/.upshift, or ./upshift-data when there is no home directory.
func defaultDataDir() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return "upshift-data"
	}

	return filepath.Join(home, ".upshift")
}

func serve(ctx context.Context, dataDir, listen string, monitoring monitoringFlags, retention store.Retention, stateConfig *stateFlags,
	upgradeOptions ...controllers.UpgradeOption,
) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger, err := newLogger(monitoring.logLevel, monitoring.logFormat)
	if err != nil {
		return err
	}

	metricsAddr := ""
	if monitoring.metricsListen != "" {
		if metricsAddr, err = metricsAddress(monitoring.metricsListen); err != nil {
			return err
		}
	}

	defer logger.Sync() //nolint:errcheck // nothing to do about a failed flush of stderr

	stateOptions, closeState, err := stateConfig.engineOptions(listen, logger)
	if err != nil {
		return err
	}

	defer closeState() //nolint:errcheck // the engine is closed by then; nothing to do about a failed client close

	engine, err := upshift.New(append(stateOptions, upshift.WithDataDir(dataDir), upshift.WithListenAddress(listen), upshift.WithLogger(logger),
		upshift.WithStoreOptions(store.WithRetention(retention)), upshift.WithUpgradeOptions(upgradeOptions...))...)
	if err != nil {
		return err
	}

	logger.Info("event log retention", zap.Uint64("max_events", retention.MaxEvents), zap.Duration("max_age", retention.MaxAge))

	// Scripts and tests read the address from this line (it matters with --listen 127.0.0.1:0).
	fmt.Printf("upshift serving on %s (state in %s)\n", engine.Addr(), stateConfig.where(dataDir))

	if metricsAddr != "" {
		served, err := serveMetrics(ctx, metricsAddr, engine.Metrics(), logger)
		if err != nil {
			return errors.Join(err, engine.Close())
		}

		// Scripts and tests read the address from this line too.
		fmt.Printf("upshift metrics on http://%s/metrics\n", served)
	}

	if err = installAdminConfig(filepath.Join(dataDir, upshift.AdminConfigFileName), defaultConfigPath()); err != nil {
		return errors.Join(err, engine.Close())
	}

	return engine.Run(ctx)
}

// installAdminConfig copies the admin config the engine wrote to the client commands' default config path when
// there is none, so the first `upshift get` after the first `upshift serve` needs no flag; one already there is
// left alone (it may be another server's, or a config of lesser rights on purpose).
func installAdminConfig(adminConfig, path string) error {
	cfg, err := server.LoadClientConfig(adminConfig)
	if err != nil {
		return err
	}

	if _, err = os.Stat(path); err == nil {
		fmt.Printf("admin client config: %s (%s holds another one, left as it is)\n", adminConfig, path)

		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("checking the client config at %s: %w", path, err)
	}

	if err = cfg.Write(path); err != nil {
		return fmt.Errorf("installing the admin client config: %w", err)
	}

	fmt.Printf("admin client config: %s (also written to %s, where the client commands look by default)\n", adminConfig, path)

	return nil
}

// retentionEvents is the --history-retention-events flag: a count of events, 0 for no limit.
type retentionEvents uint64

func (e *retentionEvents) String() string { return strconv.FormatUint(uint64(*e), 10) }

func (e *retentionEvents) Type() string { return "count" }

func (e *retentionEvents) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not a number of events (a whole number, 0 for no limit)", s)
	}

	*e = retentionEvents(n)

	return nil
}

// retentionAge is the --history-retention-age flag: a Go duration or a whole number of days ("90d", which Go
// durations lack and which is how people say a retention), 0 for no limit.
type retentionAge time.Duration

func (a *retentionAge) String() string {
	d := time.Duration(*a)
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}

	return d.String()
}

func (a *retentionAge) Type() string { return "age" }

func (a *retentionAge) Set(s string) error {
	d, err := parseRetentionAge(strings.TrimSpace(s))
	if err != nil {
		return err
	}

	*a = retentionAge(d)

	return nil
}

func parseRetentionAge(s string) (time.Duration, error) {
	bad := fmt.Errorf("%q is not an age like 720h or 90d (0 for no limit)", s)

	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16) // at most 65,535 days: beyond that, say 0
		if err != nil {
			return 0, bad
		}

		return time.Duration(n) * 24 * time.Hour, nil
	}

	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, bad
	}

	if d < 0 {
		return 0, fmt.Errorf("%q is negative: an age must be positive (0 for no limit)", s)
	}

	return d, nil
}
