package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"k8s.io/klog/v2"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/demoview"
	"github.com/upshift-io/upshift/internal/kubeemu"
	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/testbed"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// demoFlags are the `upshift demo` flags.
type demoFlags struct {
	dataDir        string
	listen         string
	clusters       int
	workers        int
	from, to       string
	kubernetesTo   string
	faults         []string
	retryAfter     time.Duration
	locks          []string
	unlockAfter    time.Duration
	keep           bool
	plain          bool
	rebootDowntime time.Duration
	timeout        time.Duration
}

func init() {
	supported := talosemu.SupportedVersions()

	var flags demoFlags

	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Upgrade an emulated fleet (real etcd, real kube-apiserver) with an engine in this process, live",
		Long: "Start an engine and an emulated Talos fleet in this process, register clusters of 3 control planes and\n" +
			"--workers workers, and upgrade Talos from --from to --to while showing every machine's phase live; then\n" +
			"upgrade Kubernetes to --kubernetes-to (by default the next release the engine offers), step by step, and\n" +
			"end with the bootstrap manifests the engine finds out of sync after both upgrades.\n" +
			"The engine serves its gRPC API while the demo runs, so the CLI works against it from another terminal.\n" +
			"On a terminal the view redraws in place; otherwise (CI, a pipe, --plain) it prints one line per transition.\n\n" +
			"--fault NODE=KIND makes a node misbehave (kinds: " + fmt.Sprint(talosemu.Faults()) + "). When the\n" +
			"upgrade stops on it, the demo shows the failure and its reason, repairs the node (clears the fault) and\n" +
			"prints the retry command; run it yourself, or after --retry-after the demo runs it for you. A fault that\n" +
			"blocks the rollout instead (etcd-unhealthy) is shown, then repaired after --retry-after.\n\n" +
			"--lock MACHINE stages the rollout: the demo locks the worker before the upgrade, the others upgrade, the\n" +
			"rollout stops Blocked on the lock and the demo prints the unlock command; run it yourself, or after\n" +
			"--unlock-after the demo runs it for you, and the locked machine upgrades next.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), flags, cmd.Flags().Changed("listen"))
		},
	}

	f := cmd.Flags()
	f.StringVar(&flags.dataDir, "data-dir", "", "directory for the engine's state (DIR/engine/state.db), the fleet and demo.log (default: a new temporary directory)")
	f.StringVar(&flags.listen, "listen", upshift.DefaultListenAddress, "address of the engine's gRPC API (by default a free port when this one is taken)")
	f.IntVar(&flags.clusters, "clusters", 1, "number of clusters (c1, c2, ...)")
	f.IntVar(&flags.workers, "workers", 3, "workers per cluster (each cluster has 3 control planes)")
	f.StringVar(&flags.from, "from", supported[0], "Talos version the fleet runs at start")
	f.StringVar(&flags.to, "to", supported[len(supported)-1], "Talos version to upgrade to")
	f.StringVar(&flags.kubernetesTo, "kubernetes-to", "",
		"Kubernetes version to upgrade to after the Talos rollout (default: the first one the engine offers then); "+kubernetesNone+" skips it")
	f.StringArrayVar(&flags.faults, "fault", nil, "make a node misbehave, NODE=KIND[:DURATION] (repeatable), e.g. c1-w-1=rollback")
	f.DurationVar(&flags.retryAfter, "retry-after", 20*time.Second, "after a failure, how long the demo leaves you to run the retry command before it runs it itself")
	f.StringArrayVar(&flags.locks, "lock", nil, "lock a worker before the upgrade (repeatable), for a staged rollout, e.g. c1-w-2")
	f.DurationVar(&flags.unlockAfter, "unlock-after", 20*time.Second, "once the rollout is Blocked on --lock, how long the demo leaves you to run the unlock command before it runs it itself")
	f.BoolVar(&flags.keep, "keep", false, "keep the engine and the fleet running after the upgrade, until Ctrl-C")
	f.BoolVar(&flags.plain, "plain", false, "print one line per transition even on a terminal")
	f.DurationVar(&flags.rebootDowntime, "reboot-downtime", talosemu.DefaultRebootDowntime, "how long a rebooting node stays unreachable")
	f.DurationVar(&flags.timeout, "timeout", 20*time.Minute, "give up when the upgrade has not finished by then")
	rootCmd.AddCommand(cmd)
}

// kubernetesNone as --kubernetes-to leaves Kubernetes alone: the demo ends after the Talos rollout.
const kubernetesNone = "none"

// demoTick is how often the live view redraws and the demo checks whether to act (retry, finish).
const demoTick = 200 * time.Millisecond

// demo is one run of `upshift demo`: it drives the run (requests, repairs, retries); the console shows it.
type demo struct {
	flags   demoFlags
	console *demoview.Console
	bed     *testbed.Bed
	logger  *zap.Logger // demo.log
	// faults are the injected faults not cleared yet, by node.
	faults    map[string][]talosemu.Fault
	incidents map[string]*incident // by cluster
	// blocked says since when each blocked cluster has been blocked while one of its nodes has an injected fault.
	blocked map[string]time.Time
	// kubernetes is the Kubernetes version asked for after the Talos rollout, once asked (by cluster).
	kubernetes map[string]string
	// locks are the machines the demo locked (--lock), in flag order.
	locks []*stagedLock
}

// stagedLock is a machine the demo locked before the upgrade, until it is unlocked.
type stagedLock struct {
	machine, cluster string
	// unlockAt is when the demo unlocks it itself, set once the rollout is Blocked on it.
	unlockAt time.Time
	command  []string
	// ran says the demo ran the unlock command; unlocked that the rollout no longer waits on the machine.
	ran, unlocked bool
}

// incident is an upgrade stopped on a failed machine, until it is retried. Its notes are held on the console
// under its cluster's ID until it is over.
type incident struct {
	machine string
	retryAt time.Time
	command []string
	retried bool
}

func runDemo(ctx context.Context, out io.Writer, flags demoFlags, listenSet bool) (err error) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	d := &demo{
		flags: flags, console: demoview.NewConsole(out, flags.plain, time.Now()),
		faults: map[string][]talosemu.Fault{}, incidents: map[string]*incident{}, blocked: map[string]time.Time{},
		kubernetes: map[string]string{},
	}

	fleetOptions, err := d.fleetOptions()
	if err != nil {
		return err
	}

	tempDir := d.flags.dataDir == ""
	if tempDir {
		if d.flags.dataDir, err = os.MkdirTemp("", "upshift-demo-"); err != nil {
			return fmt.Errorf("creating a data directory: %w", err)
		}
	}

	if !listenSet && !free(d.flags.listen) {
		d.flags.listen = "127.0.0.1:0"
	}

	logPath := filepath.Join(d.flags.dataDir, "demo.log")

	logger, err := fileLogger(logPath)
	if err != nil {
		return err
	}

	defer logger.Sync() //nolint:errcheck // best effort for a log file

	d.logger = logger

	klogFile, err := klogTo(logPath)
	if err != nil {
		return err
	}

	defer klogFile.Close() //nolint:errcheck // best effort for a log file

	d.console.Starting(flags.clusters, flags.workers, flags.from, logPath)

	findKubeBinaries()

	d.bed, err = testbed.Start(ctx,
		testbed.WithDir(d.flags.dataDir),
		testbed.WithLogger(logger),
		testbed.WithFleetOptions(fleetOptions...),
		testbed.WithEngineOptions(upshift.WithListenAddress(d.flags.listen)),
		testbed.WithUpgradeOptions(d.upgradeOptions()...),
	)
	if err != nil {
		return fmt.Errorf("starting the demo: %w", err)
	}

	defer func() {
		err = errors.Join(err, d.bed.Close())

		if tempDir {
			// The emulated nodes' data (etcd WALs) is large and useless once they are gone; the engine's state stays.
			err = errors.Join(err, os.RemoveAll(filepath.Join(d.flags.dataDir, "fleet")))
		}
	}()

	d.console.Introduce(demoview.Intro{
		Endpoint: d.bed.Endpoint(), StateFile: d.stateFile(),
		TalosEndpoint: d.bed.Fleet.Endpoint(), Talosconfig: d.bed.Fleet.TalosconfigPath(), Config: d.bed.ConfigPath(),
	})

	if err = d.run(ctx); err != nil {
		return err
	}

	if !flags.keep {
		return nil
	}

	d.console.KeepServing()
	<-ctx.Done()

	return nil
}

func (d *demo) fleetOptions() ([]talosemu.Option, error) {
	if d.flags.clusters < 1 {
		return nil, fmt.Errorf("--clusters must be at least 1, got %d", d.flags.clusters)
	}

	if d.flags.workers < 0 {
		return nil, fmt.Errorf("--workers must not be negative, got %d", d.flags.workers)
	}

	if d.flags.retryAfter < 0 {
		return nil, fmt.Errorf("--retry-after must not be negative, got %s", d.flags.retryAfter)
	}

	if d.flags.unlockAfter < 0 {
		return nil, fmt.Errorf("--unlock-after must not be negative, got %s", d.flags.unlockAfter)
	}

	if !slices.Contains(talosemu.SupportedVersions(), strings.TrimPrefix(d.flags.to, "v")) {
		return nil, fmt.Errorf("--to %s: the emulator runs only %s", d.flags.to, strings.Join(talosemu.SupportedVersions(), ", "))
	}

	if k := d.flags.kubernetesTo; k != "" && k != kubernetesNone {
		if _, err := kuberollout.NewPlan(k, k, k, nil); err != nil {
			return nil, fmt.Errorf("--kubernetes-to: %w", err)
		}
	}

	opts := []talosemu.Option{
		talosemu.WithClusters(d.flags.clusters),
		talosemu.WithControlPlanes(3),
		talosemu.WithWorkers(d.flags.workers),
		talosemu.WithTalosVersion(d.flags.from),
		talosemu.WithRebootDowntime(d.flags.rebootDowntime),
	}

	for _, spec := range d.flags.faults {
		nf, err := talosemu.ParseNodeFault(spec)
		if err != nil {
			return nil, fmt.Errorf("--fault: %w", err)
		}

		opts = append(opts, talosemu.WithNodeFault(nf))

		if nf.For == 0 {
			d.faults[nf.Node] = append(d.faults[nf.Node], nf.Fault)
		}
	}

	return opts, nil
}

// upgradeOptions make the engine react within a second or so, give up on a machine within a minute rather than
// the production quarter of an hour, and call etcd blocking once a member stays unhealthy for well over what the
// emulated reboots take to rejoin, so a fault shows quickly.
func (d *demo) upgradeOptions() []controllers.UpgradeOption {
	return []controllers.UpgradeOption{
		controllers.WithPollInterval(time.Second),
		controllers.WithRetryDelay(250 * time.Millisecond),
		controllers.WithStepTimeout(30 * time.Second),
		controllers.WithRebootTimeout(30*time.Second + 10*d.flags.rebootDowntime),
		controllers.WithEtcdGrace(20*time.Second + 2*d.flags.rebootDowntime),
	}
}

// findKubeBinaries points the fleet at the Kubernetes binaries next to this one (where `make` puts both) unless
// $UPSHIFT_KUBE_BIN_DIR says where they are, so `_out/bin/upshift demo` works without it.
func findKubeBinaries() {
	if os.Getenv(kubeemu.BinDirEnv) != "" {
		return
	}

	dir := filepath.Dir(self())
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err == nil {
		_ = os.Setenv(kubeemu.BinDirEnv, dir) //nolint:errcheck // a valid name and value cannot fail
	}
}

// free reports whether addr can be listened on now.
func free(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}

	return l.Close() == nil
}

// klogTo sends klog's output to the demo's log at path. client-go logs through klog, to stderr by default: the
// API server restarts of a Kubernetes upgrade's static-pod steps make its watches log errors that would tear the
// live view.
func klogTo(path string) (io.Closer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the demo log for klog: %w", err)
	}

	klog.LogToStderr(false)
	klog.SetOutput(f)

	return f, nil
}

func fileLogger(path string) (*zap.Logger, error) {
	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	cfg.OutputPaths, cfg.ErrorOutputPaths = []string{path}, []string{path}

	logger, err := cfg.Build()
	if err != nil {
		return nil, fmt.Errorf("opening the demo log: %w", err)
	}

	return logger, nil
}

// stateFile is the engine's state and event log.
func (d *demo) stateFile() string { return filepath.Join(d.bed.EngineDir(), upshift.StateFileName) }

// run requests the upgrade of every cluster and follows it to its end.
func (d *demo) run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.flags.timeout)
	defer cancel()

	st := d.bed.State()
	events := make(chan state.Event, 256)

	for _, t := range []resource.Type{cluster.MachineType, observe.MachineStatusType, observe.EtcdStatusType,
		upgrade.TalosUpgradeStatusType, upgrade.MachineUpgradeStatusType, upgrade.KubernetesUpgradeStatusType,
		manifest.ManifestSyncType} {
		if err := st.WatchKind(ctx, resource.NewMetadata(resources.Namespace, t, "", resource.VersionUndefined), events,
			state.WithBootstrapContents(true)); err != nil {
			return fmt.Errorf("watching %s: %w", t, err)
		}
	}

	if err := d.lock(ctx); err != nil {
		return err
	}

	for _, id := range d.bed.Fleet.Clusters() {
		if _, err := safe.StateUpdateWithConflicts(ctx, st, cluster.NewCluster(id).Metadata(), func(c *cluster.Cluster) error {
			c.TypedSpec().TalosVersion = "v" + strings.TrimPrefix(d.flags.to, "v")

			return nil
		}); err != nil {
			return fmt.Errorf("requesting the Talos upgrade of cluster %q: %w", id, err)
		}

		d.console.Requested(id, d.target())
	}

	ticker := time.NewTicker(demoTick)
	defer ticker.Stop()

	d.console.HideCursor()
	defer d.console.ShowCursor()

	for {
		select {
		case <-ctx.Done():
			d.console.Redraw()

			return d.finish(fmt.Errorf("the upgrade did not finish: %w", context.Cause(ctx)))
		case ev := <-events:
			if err := d.handle(ev); err != nil {
				return err
			}

			continue
		case <-ticker.C:
		}

		if err := d.act(ctx); err != nil {
			return err
		}

		if err := d.requestKubernetes(ctx); err != nil {
			return err
		}

		d.console.Redraw()

		if d.finished() {
			return d.finish(nil)
		}
	}
}

func (d *demo) target() string { return "v" + strings.TrimPrefix(d.flags.to, "v") }

func (d *demo) handle(ev state.Event) error {
	switch ev.Type {
	case state.Errored:
		return fmt.Errorf("watching the engine: %w", ev.Error)
	case state.Created, state.Updated:
		d.console.Update(ev.Resource)
	case state.Destroyed, state.Bootstrapped, state.Noop:
	}

	return nil
}

// finished reports whether every cluster is through: its Talos upgrade done with every machine on the target, as
// far as the engine knows, then its Kubernetes upgrade done (unless none was asked for), and the engine's diff of
// the bootstrap manifests computed since.
func (d *demo) finished() bool {
	for _, id := range d.bed.Fleet.Clusters() {
		if !d.talosDone(id) {
			return false
		}

		if d.flags.kubernetesTo != kubernetesNone {
			want, asked := d.kubernetes[id]
			kus, ok := d.console.View().KubernetesUpgrade(id)

			if !asked || !ok || kus.Phase != upgrade.PhaseDone || !kuberollout.SameVersion(kus.ToVersion, want) {
				return false
			}
		}

		if _, ok := d.console.View().ManifestsAfterUpgrades(id); !ok {
			return false
		}
	}

	return true
}

// talosDone reports whether the cluster's Talos upgrade is done and every machine runs the target, as far as the
// engine knows.
func (d *demo) talosDone(id string) bool {
	tus, ok := d.console.View().TalosUpgrade(id)

	return ok && tus.Phase == upgrade.PhaseDone && tus.ToVersion == d.target() && d.console.View().OnVersion(id, d.target())
}

// requestKubernetes asks, for every cluster whose Talos rollout is done, for its Kubernetes upgrade, through the
// same code as `upshift upgrade kubernetes` (its plan, its refusals): to --kubernetes-to, or else to the first
// version the engine offers the cluster (KubernetesUpgradeStatus.AvailableVersions, the next minor). A cluster
// whose machines the engine has not observed enough to plan from yet is asked again at the next tick.
func (d *demo) requestKubernetes(ctx context.Context) error {
	if d.flags.kubernetesTo == kubernetesNone {
		return nil
	}

	for _, id := range d.bed.Fleet.Clusters() {
		if _, asked := d.kubernetes[id]; asked || !d.talosDone(id) {
			continue
		}

		to := d.flags.kubernetesTo
		if to == "" {
			kus, ok := d.console.View().KubernetesUpgrade(id)
			if !ok || len(kus.AvailableVersions) == 0 {
				continue // the engine has not offered a version since the rollout yet
			}

			to = "v" + kuberollout.Canonical(kus.AvailableVersions[0])
		}

		var out strings.Builder

		err := upgradeKubernetes(ctx, d.bed.State(), &out, id, to, nil, false)
		if errors.Is(err, errNotPlannableYet) {
			continue
		}

		d.logger.Info("upshift upgrade kubernetes "+id+" --to "+to, zap.String("output", out.String()), zap.Error(err))

		if err != nil {
			return fmt.Errorf("requesting the Kubernetes upgrade of cluster %q: %w", id, err)
		}

		d.kubernetes[id] = to
		d.console.Note("", fmt.Sprintf("requested: %s to Kubernetes %s, as", id, to),
			fmt.Sprintf("  `upshift upgrade kubernetes %s --to %s` does", id, to))
	}

	return nil
}

// lock locks the machines of --lock before the upgrade, as `upshift lock` does (a control plane is refused).
func (d *demo) lock(ctx context.Context) error {
	for _, id := range d.flags.locks {
		n, err := d.bed.Fleet.Node(id)
		if err != nil {
			return fmt.Errorf("--lock %s: %w", id, err)
		}

		l := cluster.NewMachineLock(id)
		l.TypedSpec().Reason = "staged rollout: the others first"

		if err = d.bed.State().Create(ctx, l); err != nil {
			return fmt.Errorf("--lock %s: %w", id, err)
		}

		d.locks = append(d.locks, &stagedLock{
			machine: id, cluster: n.Cluster(), command: []string{"unlock", id, "--config", d.bed.ConfigPath()},
		})
		d.console.Note("", fmt.Sprintf("locked: %s, so %s upgrades without it first", id, n.Cluster()))
	}

	return nil
}

// stage follows the machines the demo locked in a cluster: once its Talos upgrade is Blocked on one, it says so
// and how to unlock it, and unlocks it itself after --unlock-after; once unlocked, it says the rollout goes on.
func (d *demo) stage(ctx context.Context, clusterID string, tus upgrade.TalosUpgradeStatusSpec) error {
	for _, l := range d.locks {
		waiting := slices.Contains(tus.WaitingOnLock, l.machine)

		switch {
		case l.cluster != clusterID || l.unlocked:
		case l.unlockAt.IsZero():
			if tus.Phase != upgrade.PhaseBlocked || !waiting {
				continue
			}

			l.unlockAt = time.Now().Add(d.flags.unlockAfter)
			d.console.Note("", fmt.Sprintf("! %s is Blocked: %s", clusterID, tus.Error),
				"  Unlock it from another terminal:", "    upshift "+strings.Join(l.command, " "),
				fmt.Sprintf("  or the demo runs it in %s.", d.flags.unlockAfter))
		case !waiting:
			l.unlocked = true
			d.console.Note("", fmt.Sprintf("✓ %s unlocked; it upgrades next", l.machine))
		case !l.ran && !time.Now().Before(l.unlockAt):
			l.ran = true

			if err := d.runCommand(ctx, "", "unlocking "+l.machine, l.command); err != nil {
				return err
			}
		}
	}

	return nil
}

// runCommand runs the upshift command a user would type (args), saying so under the note key.
func (d *demo) runCommand(ctx context.Context, key, what string, args []string) error {
	d.console.Note(key, "  The demo runs: upshift "+strings.Join(args, " "))

	if out, err := exec.CommandContext(ctx, self(), args...).CombinedOutput(); err != nil { //nolint:gosec // our own binary
		return fmt.Errorf("%s: %w: %s", what, err, out)
	}

	return nil
}

// act deals with stopped upgrades: a failed machine is shown with its reason, repaired (its injected faults
// cleared) and retried (by the user, or by the demo after --retry-after); a rollout Blocked on the demo's locks
// is unlocked (by the user, or by the demo after --unlock-after).
func (d *demo) act(ctx context.Context) error {
	for _, id := range d.bed.Fleet.Clusters() {
		tus, _ := d.console.View().TalosUpgrade(id)
		inc := d.incidents[id]

		if err := d.unblock(ctx, id, tus); err != nil {
			return err
		}

		if err := d.stage(ctx, id, tus); err != nil {
			return err
		}

		switch {
		case tus.Phase == upgrade.PhaseFailed && (inc == nil || inc.machine != tus.FailedMachine):
			if err := d.open(ctx, id, tus); err != nil {
				return err
			}
		case inc == nil:
		case tus.Phase != upgrade.PhaseFailed:
			d.console.Note("", fmt.Sprintf("✓ %s: retried after its failure; the upgrade goes on", inc.machine))
			d.console.Drop(id)
			delete(d.incidents, id)
		case !inc.retried && !time.Now().Before(inc.retryAt):
			inc.retried = true

			if err := d.runCommand(ctx, id, "retrying "+inc.machine, inc.command); err != nil {
				return err
			}
		}
	}

	return nil
}

// unblock repairs the faulted nodes of a cluster whose upgrade has been blocked for --retry-after (a fault such as
// etcd-unhealthy blocks the rollout rather than failing a machine), after saying why it is blocked.
func (d *demo) unblock(ctx context.Context, clusterID string, tus upgrade.TalosUpgradeStatusSpec) error {
	var faulted []string

	for node := range d.faults {
		if n, err := d.bed.Fleet.Node(node); err == nil && n.Cluster() == clusterID {
			faulted = append(faulted, node)
		}
	}

	since, wasBlocked := d.blocked[clusterID]

	switch {
	case tus.Phase != upgrade.PhaseBlocked || len(faulted) == 0:
		delete(d.blocked, clusterID)
	case !wasBlocked:
		d.blocked[clusterID] = time.Now()
		d.console.Note("", fmt.Sprintf("! %s is blocked: %s", clusterID, tus.Error),
			fmt.Sprintf("  The demo repairs %s in %s.", strings.Join(faulted, ", "), d.flags.retryAfter))
	case time.Since(since) >= d.flags.retryAfter:
		delete(d.blocked, clusterID)

		for _, node := range faulted {
			if err := d.repair(ctx, "", node); err != nil {
				return err
			}
		}
	}

	return nil
}

// repair clears the faults injected into node, saying so (under the note key of an incident, when it is one's).
func (d *demo) repair(ctx context.Context, key, node string) error {
	for _, fault := range d.faults[node] {
		if err := d.bed.Fleet.ClearFault(ctx, node, fault); err != nil {
			return fmt.Errorf("clearing fault %s of %s: %w", fault, node, err)
		}

		d.console.Note(key, fmt.Sprintf("  The demo repaired %s (cleared the emulated %s fault).", node, fault))
	}

	delete(d.faults, node)

	return nil
}

// open records the failure of a cluster's upgrade, says why and how to retry, and repairs the machine.
func (d *demo) open(ctx context.Context, clusterID string, tus upgrade.TalosUpgradeStatusSpec) error {
	m := tus.FailedMachine
	inc := &incident{
		machine: m,
		retryAt: time.Now().Add(d.flags.retryAfter),
		command: []string{"upgrade", "retry", clusterID, "--machine", m, "--config", d.bed.ConfigPath()},
	}
	d.incidents[clusterID] = inc
	d.console.Drop(clusterID) // the notes of an incident it replaces

	d.console.Note(clusterID, fmt.Sprintf("✗ %s failed: %s", m, strings.TrimPrefix(tus.Error, m+": ")),
		"  No new machine of "+clusterID+" starts until you retry, skip or revert it.")

	if err := d.repair(ctx, clusterID, m); err != nil {
		return err
	}

	d.console.Note(clusterID, "  Retry it from another terminal:",
		"    upshift "+strings.Join(inc.command, " "),
		fmt.Sprintf("  or the demo runs it in %s.", d.flags.retryAfter))

	return nil
}

// finish prints the summary, and returns err or, when some machine is not on the target, why not.
func (d *demo) finish(err error) error {
	kubernetes := ""
	if d.flags.kubernetesTo != kubernetesNone {
		kubernetes = d.kubernetes[d.bed.Fleet.Clusters()[0]]
		if kubernetes == "" {
			kubernetes = "(not requested)" // the run ended before the Talos rollout did
		}
	}

	return d.console.Finish(demoview.Closing{
		Clusters: d.bed.Fleet.Clusters(), Target: d.target(), Kubernetes: kubernetes, Endpoint: d.bed.Endpoint(),
		Config: d.bed.ConfigPath(), EngineDir: d.bed.EngineDir(), StateFile: d.stateFile(), Keep: d.flags.keep,
	}, err)
}

// self is this binary, which the demo runs to show a command a user would type.
func self() string {
	if path, err := os.Executable(); err == nil {
		return path
	}

	return os.Args[0]
}
