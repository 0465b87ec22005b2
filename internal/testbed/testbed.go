package testbed

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kubeemu"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/talosemu/realkube"
	"github.com/upshift-io/upshift/state/server"
)

// Option configures Start.
type Option func(*options)

type options struct {
	dir            string
	lite           bool
	fleetOptions   []talosemu.Option
	engineOptions  []upshift.Option
	upgradeOptions []controllers.UpgradeOption
	process        Command
	logger         *zap.Logger
	unregistered   bool
}

// WithDir sets the directory holding the fleet (DIR/fleet) and the engine's data (DIR/engine). Required.
func WithDir(dir string) Option {
	return func(o *options) { o.dir = dir }
}

// WithLite runs a lite fleet (no etcd, no Kubernetes), for scale runs.
func WithLite() Option {
	return func(o *options) { o.lite = true }
}

// WithFleetOptions passes options to the emulated fleet (size, versions, reboot downtime, faults).
func WithFleetOptions(opts ...talosemu.Option) Option {
	return func(o *options) { o.fleetOptions = append(o.fleetOptions, opts...) }
}

// WithEngineOptions passes options to the in-process engine.
func WithEngineOptions(opts ...upshift.Option) Option {
	return func(o *options) { o.engineOptions = append(o.engineOptions, opts...) }
}

// WithUpgradeOptions configures the Talos rollout controllers of the in-process engine (tests use short intervals
// and timeouts). A child engine is configured by its own command.
func WithUpgradeOptions(opts ...controllers.UpgradeOption) Option {
	return func(o *options) { o.upgradeOptions = append(o.upgradeOptions, opts...) }
}

// WithEngineProcess runs the engine as a child process built by cmd instead of in this process, so a test can
// kill it (Bed.KillEngine) and start it again on the same data (Bed.StartEngine).
func WithEngineProcess(cmd Command) Option {
	return func(o *options) { o.process = cmd }
}

// WithoutRegister leaves the engine empty: the fleet runs, but no Cluster, Machine or Credentials describes it
// until a test writes them (as `upshift cluster import` does).
func WithoutRegister() Option {
	return func(o *options) { o.unregistered = true }
}

// WithLogger sets the logger of the fleet and the in-process engine. Default: no logging.
func WithLogger(logger *zap.Logger) Option {
	return func(o *options) { o.logger = logger }
}

// Bed is an emulated fleet managed by an engine, with the fleet registered in it.
type Bed struct {
	// Fleet is the emulated fleet: its journal, faults and nodes.
	Fleet *talosemu.Fleet

	opts     options
	engine   engine
	local    *inProcess // the engine, when it runs in this process
	endpoint string
	client   *server.Client
}

// engine is the engine of a bed: in this process or a child process.
type engine interface {
	addr() string
	stop() error
}

// Start starts the fleet and the engine, and registers the fleet (unless WithoutRegister). Close stops both.
func Start(ctx context.Context, opts ...Option) (*Bed, error) {
	o := options{logger: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}

	if o.dir == "" {
		return nil, errors.New("testbed: no directory: pass testbed.WithDir")
	}

	fleetOptions := []talosemu.Option{
		talosemu.WithStateDir(filepath.Join(o.dir, "fleet")),
		talosemu.WithLogger(o.logger),
	}

	if o.lite {
		fleetOptions = append(fleetOptions, talosemu.WithLite())
	} else {
		fleetOptions = append(fleetOptions, talosemu.WithKubernetes(realkube.Runner{
			KubeletOptions: []kubeemu.KubeletOption{kubeemu.WithHeartbeatInterval(time.Second)},
		}))
	}

	fleet, err := talosemu.New(ctx, append(fleetOptions, o.fleetOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("starting the emulated fleet: %w", err)
	}

	b := &Bed{Fleet: fleet, opts: o}

	if err = b.StartEngine(ctx); err != nil {
		return nil, errors.Join(err, fleet.Close())
	}

	if o.unregistered {
		return b, nil
	}

	if err = Register(ctx, b.State(), fleet); err != nil {
		return nil, errors.Join(err, b.Close())
	}

	return b, nil
}

// EngineDir is the engine's data dir.
func (b *Bed) EngineDir() string { return filepath.Join(b.opts.dir, "engine") }

// Endpoint is the engine's gRPC address, for the CLI (--endpoint). It stays the same across engine restarts.
func (b *Bed) Endpoint() string { return b.endpoint }

// ConfigPath is the admin client config the engine wrote in its data dir, for the CLI (--config).
func (b *Bed) ConfigPath() string { return filepath.Join(b.EngineDir(), upshift.AdminConfigFileName) }

// Dial connects to the engine's gRPC API as its admin; the caller closes the client.
func (b *Bed) Dial() (*server.Client, error) {
	cfg, err := server.LoadClientConfig(b.ConfigPath())
	if err != nil {
		return nil, fmt.Errorf("connecting to the engine: %w", err)
	}

	c, err := server.Dial(b.endpoint, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the engine: %w", err)
	}

	return c, nil
}

// State is the engine's state: the engine's own for an in-process engine, a gRPC client's for a child process
// (which reconnects by itself after a restart; watches open across a kill end with an error).
func (b *Bed) State() state.State {
	if b.client != nil {
		return b.client.State()
	}

	return b.local.engine.State()
}

// StartEngine starts the engine (again) on the bed's data dir, listening on the same address as before.
func (b *Bed) StartEngine(ctx context.Context) error {
	if b.engine != nil {
		return errors.New("testbed: the engine is running")
	}

	listen := b.endpoint
	if listen == "" {
		listen = "127.0.0.1:0"
	}

	var (
		e   engine
		err error
	)

	if b.opts.process != nil {
		e, err = startProcess(ctx, b.opts.process, b.EngineDir(), listen)
	} else {
		b.local, err = startInProcess(b.opts, b.EngineDir(), listen)
		e = b.local
	}

	if err != nil {
		return err
	}

	b.engine = e

	if b.endpoint == "" {
		b.endpoint = e.addr()
	}

	if b.opts.process != nil && b.client == nil {
		if b.client, err = b.Dial(); err != nil {
			return err
		}
	}

	return nil
}

// StopEngine stops the engine: gracefully in this process, with SIGKILL for a child process (a crash).
func (b *Bed) StopEngine() error {
	if b.engine == nil {
		return nil
	}

	err := b.engine.stop()
	b.engine, b.local = nil, nil

	return err
}

// EngineUsage reports the CPU time and peak memory of a child engine (see WithEngineProcess) since it started.
func (b *Bed) EngineUsage() (Usage, error) {
	p, ok := b.engine.(*process)
	if !ok {
		return Usage{}, errors.New("testbed: the engine is not a running child process")
	}

	return p.usage()
}

// Close stops the engine and the fleet.
func (b *Bed) Close() error {
	err := b.StopEngine()

	if b.client != nil {
		err = errors.Join(err, b.client.Close())
	}

	return errors.Join(err, b.Fleet.Close())
}

// inProcess is an engine running in this process.
type inProcess struct {
	engine *upshift.Engine
	conn   *controllers.CredentialsConnector
	cancel context.CancelFunc
	done   chan error
}

func startInProcess(o options, dir, listen string) (*inProcess, error) {
	conn := controllers.NewCredentialsConnector()

	e, err := upshift.New(append([]upshift.Option{
		upshift.WithDataDir(dir),
		upshift.WithListenAddress(listen),
		upshift.WithLogger(o.logger),
		upshift.WithConnector(conn),
		upshift.WithUpgradeOptions(o.upgradeOptions...), // the engine's own, so its validation knows the same releases
	}, o.engineOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("building the engine: %w", err)
	}

	// The engine outlives the context it was started with: it stops in stop.
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{engine: e, conn: conn, cancel: cancel, done: make(chan error, 1)}

	go func() { p.done <- e.Run(ctx) }()

	return p, nil
}

func (p *inProcess) addr() string { return p.engine.Addr().String() }

func (p *inProcess) stop() error {
	p.cancel()

	return errors.Join(<-p.done, p.conn.Close())
}
