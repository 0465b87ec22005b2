package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/talosemu/realkube"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/state/server"
)

// emulatorFlags are the `upshift emulator` flags; scripts and tests rely on them and on the fleet's conventions
// (README.md, "Command reference"; docs/architecture.md, "The test bed").
type emulatorFlags struct {
	stateDir          string
	listen            string
	clusters          int
	controlPlanes     int
	workers           int
	talosVersion      string
	nodeVersions      []string
	kubernetesVersion string
	lite              bool
	rebootDowntime    time.Duration
	staticPodRestart  time.Duration
	faults            []string
	register          string
	config            string // the client config --register connects with
}

func init() {
	var flags emulatorFlags

	cmd := &cobra.Command{
		Use:   "emulator",
		Short: "Run an emulated Talos fleet (real Talos API, etcd members and Kubernetes) until interrupted",
		Long: "Run an emulated fleet of Talos clusters behind one Talos API endpoint that routes on the node name, like apid.\n" +
			"Clusters are c1, c2, ...; machines c1-cp-1, c1-w-1, ... (also their Talos and Kubernetes node names).\n" +
			"STATE-DIR holds the talosconfig, CLUSTER/kubeconfig, journal.jsonl and the nodes' data.\n" +
			"Without --lite, every control plane runs a real etcd member and every cluster a real kube-apiserver\n" +
			"(binaries from $UPSHIFT_KUBE_BIN_DIR, see `make kube-bins`).\n" +
			"Supported Talos versions: " + fmt.Sprint(talosemu.SupportedVersions()) + ".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEmulator(cmd.Context(), cmd.OutOrStdout(), flags)
		},
	}

	f := cmd.Flags()
	f.StringVar(&flags.stateDir, "state-dir", "", "directory for the talosconfig, kubeconfigs, journal and node data (default: a new temporary directory)")
	f.StringVar(&flags.listen, "listen", "127.0.0.1:0", "address of the fleet's Talos API endpoint")
	f.IntVar(&flags.clusters, "clusters", 1, "number of clusters")
	f.IntVar(&flags.controlPlanes, "control-planes", 3, "control-plane nodes per cluster")
	f.IntVar(&flags.workers, "workers", 3, "worker nodes per cluster")
	f.StringVar(&flags.talosVersion, "talos", talosemu.DefaultTalosVersion, "Talos version every node runs at start")
	f.StringArrayVar(&flags.nodeVersions, "node-talos", nil, "run one node on its own Talos version at start, NODE=VERSION (repeatable), e.g. c1-w-1=v1.14.1")
	f.StringVar(&flags.kubernetesVersion, "kubernetes", talosemu.DefaultKubernetesVersion, "Kubernetes version of the clusters")
	f.BoolVar(&flags.lite, "lite", false, "no etcd and no Kubernetes: thousands of nodes in one process")
	f.DurationVar(&flags.rebootDowntime, "reboot-downtime", talosemu.DefaultRebootDowntime, "how long a rebooting node stays unreachable")
	f.DurationVar(&flags.staticPodRestart, "static-pod-restart", talosemu.DefaultStaticPodRestart, "how long a control-plane static pod whose config changed is not Ready (and the cluster's API endpoint down, for a kube-apiserver)")
	f.StringArrayVar(&flags.faults, "fault", nil, "inject a fault, NODE=KIND[:DURATION] or NODE=pull-fail:IMAGE (repeatable; with a duration it clears itself; with an image only that image fails to pull); kinds: "+fmt.Sprint(talosemu.Faults()))
	f.StringVar(&flags.register, "register", "", "create the Cluster, Machine and Credentials resources in the upshift server at this endpoint")
	f.StringVar(&flags.config, "config", defaultConfigPath(), "with --register: an admin client config of that server (default from $"+configEnv+", else "+userConfigPath()+")")
	rootCmd.AddCommand(cmd)
}

func runEmulator(ctx context.Context, out io.Writer, flags emulatorFlags) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	if flags.stateDir == "" {
		dir, err := os.MkdirTemp("", "upshift-emulator-")
		if err != nil {
			return fmt.Errorf("creating a state directory: %w", err)
		}

		flags.stateDir = dir
	}

	logger, err := zap.NewDevelopment(zap.IncreaseLevel(zap.WarnLevel))
	if err != nil {
		return fmt.Errorf("building logger: %w", err)
	}

	defer logger.Sync() //nolint:errcheck // nothing to do about a failed flush of stderr

	opts := []talosemu.Option{
		talosemu.WithStateDir(flags.stateDir),
		talosemu.WithListenAddress(flags.listen),
		talosemu.WithClusters(flags.clusters),
		talosemu.WithControlPlanes(flags.controlPlanes),
		talosemu.WithWorkers(flags.workers),
		talosemu.WithTalosVersion(flags.talosVersion),
		talosemu.WithKubernetesVersion(flags.kubernetesVersion),
		talosemu.WithRebootDowntime(flags.rebootDowntime),
		talosemu.WithStaticPodRestart(flags.staticPodRestart),
		talosemu.WithLogger(logger),
	}

	if flags.lite {
		opts = append(opts, talosemu.WithLite())
	} else {
		opts = append(opts, talosemu.WithKubernetes(realkube.Runner{}))
	}

	for _, spec := range flags.nodeVersions {
		node, version, ok := strings.Cut(spec, "=")
		if !ok || node == "" || version == "" {
			return fmt.Errorf("--node-talos %q: expected NODE=VERSION", spec)
		}

		opts = append(opts, talosemu.WithNodeVersion(node, version))
	}

	for _, spec := range flags.faults {
		nf, err := talosemu.ParseNodeFault(spec)
		if err != nil {
			return err
		}

		opts = append(opts, talosemu.WithNodeFault(nf))
	}

	fleet, err := talosemu.New(ctx, opts...)
	if err != nil {
		return fmt.Errorf("starting the emulated fleet: %w", err)
	}

	defer fleet.Close() //nolint:errcheck // the error is reported by the explicit Close below

	fmt.Fprintf(out, "endpoint:    %s\n", fleet.Endpoint())
	fmt.Fprintf(out, "talosconfig: %s\n", fleet.TalosconfigPath())
	fmt.Fprintf(out, "journal:     %s\n", filepath.Join(fleet.StateDir(), "journal.jsonl"))

	for _, name := range fleet.Clusters() {
		if kubeconfig, _ := fleet.Kubeconfig(name); kubeconfig != nil { //nolint:errcheck // the cluster exists
			fmt.Fprintf(out, "kubeconfig:  %s\n", fleet.KubeconfigPath(name))
		}
	}

	fmt.Fprintf(out, "nodes:       %d in %d cluster(s), Talos v%s\n", len(fleet.Nodes()), len(fleet.Clusters()), fleet.TalosVersion())

	for _, n := range fleet.Nodes() {
		if n.Version() != fleet.TalosVersion() {
			fmt.Fprintf(out, "node:        %s on Talos v%s\n", n.Name(), n.Version())
		}
	}

	if flags.register != "" {
		if err = registerFleet(ctx, fleet, &target{endpoint: flags.register, config: flags.config}); err != nil {
			return err
		}

		fmt.Fprintf(out, "registered:  %s\n", flags.register)
	}

	<-ctx.Done()

	return fleet.Close()
}

// registerFleet creates (or updates) the fleet's Cluster, Credentials and Machine resources in a running engine.
func registerFleet(ctx context.Context, fleet *talosemu.Fleet, to *target) error {
	c, err := connect(to)
	if err != nil {
		return fmt.Errorf("connecting to upshift at %s: %w", to.endpoint, err)
	}

	defer c.Close() //nolint:errcheck

	// Credentials are compared with the stored ones, so registering the same fleet again writes nothing new.
	return explain(to, testbed.Register(server.WithSecretsShown(ctx), c.State(), fleet))
}
