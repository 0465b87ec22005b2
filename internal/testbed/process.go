package testbed

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/controllers"
)

// Command builds the command line of a child engine that serves the data dir on listen and prints, like
// `upshift serve`, "upshift serving on ADDR" on its standard output once it listens.
type Command func(dataDir, listen string) *exec.Cmd

// servingLine is what a child engine prints once it listens; the address is what clients dial.
var servingLine = regexp.MustCompile(`upshift serving on (\S+)`)

// childEnv switches a re-executed test binary into a child engine (SelfCommand, ServeIfChild); its value is
// "DATA-DIR\nLISTEN".
const childEnv = "UPSHIFT_TESTBED_ENGINE"

// etcdEnv makes a child engine a replica on etcd; its value is "ENDPOINTS\nREPLICA-NAME\nLEASE-TTL", endpoints
// comma-separated.
const etcdEnv = "UPSHIFT_TESTBED_ETCD"

// startTimeout bounds how long a child engine may take to listen.
const startTimeout = 60 * time.Second

// SelfCommand re-executes the running binary (a test binary whose TestMain calls ServeIfChild first) as a child
// engine: it lets a test run the engine with the controller options it chooses, and kill it.
func SelfCommand() Command {
	return func(dataDir, listen string) *exec.Cmd {
		cmd := exec.Command(os.Args[0]) //nolint:gosec // the binary re-executes itself
		cmd.Env = append(os.Environ(), childEnv+"="+dataDir+"\n"+listen)

		return cmd
	}
}

// ServeIfChild returns at once unless this process was started by SelfCommand; then it runs an engine with the
// Talos rollout controllers configured by opts until it is killed or interrupted, and exits.
func ServeIfChild(opts ...controllers.UpgradeOption) {
	spec, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}

	var dataDir, listen string

	if _, err := fmt.Sscanf(spec, "%s\n%s", &dataDir, &listen); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", childEnv, spec, err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := serveChild(ctx, dataDir, listen, opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1) //nolint:gocritic // the deferred stop does not matter to an exiting child
	}

	os.Exit(0)
}

func serveChild(ctx context.Context, dataDir, listen string, opts []controllers.UpgradeOption) error {
	conn := controllers.NewCredentialsConnector()
	defer conn.Close() //nolint:errcheck // the process exits

	engineOptions := []upshift.Option{upshift.WithDataDir(dataDir), upshift.WithListenAddress(listen),
		upshift.WithConnector(conn), upshift.WithUpgradeOptions(opts...)}

	if spec, ok := os.LookupEnv(etcdEnv); ok {
		replicaOptions, closeClient, err := replicaOf(spec)
		if err != nil {
			return err
		}

		defer closeClient() //nolint:errcheck // the process exits

		engineOptions = append(engineOptions, replicaOptions...)
	}

	e, err := upshift.New(engineOptions...)
	if err != nil {
		return err
	}

	fmt.Printf("upshift serving on %s (state in %s)\n", e.Addr(), filepath.Join(dataDir, upshift.StateFileName))

	return e.Run(ctx)
}

// process is an engine running as a child process; its output goes to DATA-DIR/../engine-N.log.
type process struct {
	cmd     *exec.Cmd
	address string
	exited  chan struct{}
}

func startProcess(ctx context.Context, command Command, dataDir, listen string) (*process, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dataDir, err)
	}

	logFile, err := os.CreateTemp(filepath.Dir(dataDir), "engine-*.log")
	if err != nil {
		return nil, fmt.Errorf("creating the engine log: %w", err)
	}

	cmd := command(dataDir, listen)
	cmd.Stderr = logFile

	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, errors.Join(err, logFile.Close())
	}

	if err = cmd.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("starting the engine: %w", err), logFile.Close())
	}

	p := &process{cmd: cmd, exited: make(chan struct{})}
	addr := make(chan string, 1)

	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			if m := servingLine.FindStringSubmatch(scanner.Text()); m != nil {
				addr <- m[1]
			}

			fmt.Fprintln(logFile, scanner.Text())
		}

		_, _ = io.Copy(logFile, stdout) //nolint:errcheck // best effort after a scan error
		_ = cmd.Wait()                  //nolint:errcheck // killed on purpose, or reported by the missing line
		_ = logFile.Close()             //nolint:errcheck // the log is for humans

		close(p.exited)
	}()

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()

	select {
	case p.address = <-addr:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("the engine exited before serving (see %s)", logFile.Name())
	case <-timer.C:
		return nil, errors.Join(fmt.Errorf("the engine did not serve within %s (see %s)", startTimeout, logFile.Name()), p.stop())
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), p.stop())
	}
}

func (p *process) addr() string { return p.address }

// signal sends sig to the child (SIGSTOP and SIGCONT pause and resume it).
func (p *process) signal(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("sending %s to the engine: %w", sig, err)
	}

	return nil
}

// stop kills the child with SIGKILL, a crash, and waits for it to be gone.
func (p *process) stop() error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing the engine: %w", err)
	}

	<-p.exited

	return nil
}

// Usage is what a child engine consumed so far.
type Usage struct {
	// CPU is the user and system CPU time the engine used.
	CPU time.Duration
	// PeakRSS is the most resident memory the engine held at once, in bytes.
	PeakRSS uint64
}

// clockTicks is the kernel's USER_HZ, the unit of CPU times in /proc (100 on every Linux platform Go supports).
const clockTicks = 100

// usage reads the child's CPU time and peak resident memory from /proc.
func (p *process) usage() (Usage, error) {
	pid := p.cmd.Process.Pid

	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Usage{}, fmt.Errorf("reading the engine's CPU time: %w", err)
	}

	// The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 13 {
		return Usage{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}

	var ticks uint64

	for _, f := range fields[11:13] { // utime and stime, fields 14 and 15 of the file
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}

		ticks += n
	}

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Usage{}, fmt.Errorf("reading the engine's memory: %w", err)
	}

	u := Usage{CPU: time.Duration(ticks) * time.Second / clockTicks}

	for line := range strings.Lines(string(status)) {
		if kb, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 10, 64)
			if err != nil {
				return Usage{}, fmt.Errorf("/proc/%d/status: VmHWM: %w", pid, err)
			}

			u.PeakRSS = n * 1024
		}
	}

	return u, nil
}

// replicaOf turns etcdEnv's value into the options of a replica on etcd, with a logger on standard error (the
// child's log) so that its terms and lost leases are in the log a failing test points at.
func replicaOf(spec string) ([]upshift.Option, func() error, error) {
	parts := strings.Split(spec, "\n")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("%s=%q: want ENDPOINTS, REPLICA and LEASE-TTL lines", etcdEnv, spec)
	}

	ttl, err := time.ParseDuration(parts[2])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: lease TTL: %w", etcdEnv, err)
	}

	logger, err := zap.NewDevelopment(zap.IncreaseLevel(zap.InfoLevel))
	if err != nil {
		return nil, nil, err
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(parts[0], ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to etcd: %w", err)
	}

	return []upshift.Option{upshift.WithEtcd(cli, parts[1], ttl), upshift.WithLogger(logger)}, cli.Close, nil
}
