// Package upshift is the engine that keeps Talos Linux clusters up to date, as a library: New builds it (durable
// event-sourced state, validation, supervised controllers, gRPC API), Run runs it, State gives a management plane
// direct access to its resources (see the resources packages for the types).
package upshift

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/registry"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/leader"
	"github.com/upshift-io/upshift/internal/metrics"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/store"
	"github.com/upshift-io/upshift/state/validate"
)

// Engine is one upshift engine. Build it with New, run it with Run.
type Engine struct {
	logger  *zap.Logger
	store   backend
	state   state.State
	elector *leader.Elector // nil on bbolt: the one engine always runs the controllers
	fence   fence
	// compactLog runs the retention of a log in etcd, which only the leader compacts; nil on bbolt, whose store
	// compacts by itself.
	compactLog func(context.Context)
	runtime    *controllers.Runtime
	grpc       *grpc.Server
	pki        *server.PKI // the CA of the gRPC API's mTLS; nil when the engine serves no API
	listener   net.Listener
	served     bool // the gRPC server took the listener over (and closes it)
	// connector is the engine's own CredentialsConnector, closed with it; nil when the embedder gave one.
	connector *controllers.CredentialsConnector
	metrics   *metrics.Metrics

	closeOnce sync.Once
	closeErr  error
}

// New builds an engine: it opens (or creates) the state in the data dir, registers the resource definitions and
// binds the gRPC listener, so every set-up error (a data dir another engine holds, a port in use) surfaces here.
// Nothing runs until Run. An engine that is never run must be closed with Close.
func New(opts ...Option) (*Engine, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}

	if o.dataDir == "" {
		return nil, errors.New("no data dir: pass upshift.WithDataDir")
	}

	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}

	// The metrics see the store's commits, so they exist before it opens.
	engineMetrics := metrics.New(o.logger.Named("upgrades"))
	o.storeOptions = append(slices.Clone(o.storeOptions), store.WithCommitObserver(engineMetrics.CommitObserver))

	st, indexed, err := openBackend(o)
	if err != nil {
		return nil, err
	}

	// Validation admits the versions the controllers can roll out: the same catalogue, shared (an operator's
	// Catalogue.Add counts for both).
	upgradeConfig := controllers.NewUpgradeConfig(o.upgradeOptions...)
	upgradeOptions := append(slices.Clone(o.upgradeOptions), controllers.WithCatalogue(upgradeConfig.Catalogue))
	validated := validate.NewState(indexed, validate.WithKnownVersions(upgradeConfig.Known()))
	e := &Engine{logger: o.logger, store: st, state: state.WrapCore(validated), metrics: engineMetrics}
	e.metrics.Bind(e.state)

	runtimeState := e.state

	if o.etcd != nil {
		e.elector = leader.New(o.etcd.client, o.etcd.replica, o.etcd.leaseTTL, o.logger.Named("leader"))
		// The controllers' writes, and only theirs, are fenced by the leadership (docs/architecture.md, "Several
		// replicas on etcd").
		runtimeState = state.WrapCore(&fencedState{CoreState: validated, fence: &e.fence})
		e.compactLog = st.(*store.EtcdStore).RunRetention //nolint:forcetypeassert // openBackend opens etcd with WithEtcd
	}

	if err = e.registerDefinitions(); err != nil {
		return nil, errors.Join(err, e.Close())
	}

	if o.connector == nil {
		credentials := controllers.NewCredentialsConnector()
		o.connector, e.connector = credentials, credentials
	}

	// Controllers given with WithControllers replace the default ones of the same name (e.g. their own Upgrades).
	registrars := controllers.Overridable(controllers.Upgrades(o.connector, upgradeOptions...),
		append([]controllers.Registrar{controllers.Builtin}, o.registrars...)...)

	e.runtime = controllers.NewRuntime(runtimeState, o.logger.Named("controllers"),
		controllers.WithRegistrars(registrars),
		controllers.WithRuntimeOptions(o.runtimeOptions...),
	)

	if o.listenAddress != "" {
		if e.listener, err = net.Listen("tcp", o.listenAddress); err != nil {
			return nil, errors.Join(fmt.Errorf("listening for the API: %w", err), e.Close())
		}

		if e.pki, err = server.LoadOrCreatePKI(o.dataDir); err != nil {
			return nil, errors.Join(fmt.Errorf("setting up the API's certificates: %w", err), e.Close())
		}

		if err = e.writeAdminConfig(filepath.Join(o.dataDir, AdminConfigFileName)); err != nil {
			return nil, errors.Join(err, e.Close())
		}

		e.grpc = server.New(e.state, st, e.pki, upgradeConfig.Known(), grpc.ChainStreamInterceptor(e.metrics.StreamInterceptor))
		server.RegisterEngineStatus(e.grpc, e)
	}

	return e, nil
}

// registerDefinitions registers the upshift namespace and resource definitions, which live in memory and are
// registered on every start.
func (e *Engine) registerDefinitions() error {
	ctx := context.Background()

	if err := registry.NewNamespaceRegistry(e.state).Register(ctx, resources.Namespace, "upshift resources"); err != nil {
		return fmt.Errorf("registering namespace: %w", err)
	}

	reg := registry.NewResourceRegistry(e.state)

	if err := reg.RegisterDefault(ctx); err != nil {
		return fmt.Errorf("registering COSI definitions: %w", err)
	}

	return catalog.Register(ctx, reg)
}

// State returns the engine's state, for a management plane that embeds the engine: writes are validated the same
// way as over gRPC, and watches see every change. Name the writer for the event log with WithWriter.
func (e *Engine) State() state.State {
	return e.state
}

// Metrics returns the engine's Prometheus metrics (docs/architecture.md, "Metrics and logs"), for an embedding
// program to register with its own registry; `upshift serve --metrics-listen` serves the same collector.
func (e *Engine) Metrics() prometheus.Collector {
	return e.metrics
}

// Addr returns the address the gRPC API listens on, or nil when it serves none.
func (e *Engine) Addr() net.Addr {
	if e.listener == nil {
		return nil
	}

	return e.listener.Addr()
}

// IssueClientConfig issues a client config of the engine's gRPC API for name (the writer the event log records for
// its writes) with role, pointing at the address the engine listens on. The Go API itself needs none: the embedding
// program is trusted; the configs are for the people and tools it lets at the API.
func (e *Engine) IssueClientConfig(name string, role server.Role) (*server.ClientConfig, error) {
	if e.pki == nil {
		return nil, errors.New("the engine serves no gRPC API (upshift.WithListenAddress is empty): a client config would reach nothing")
	}

	return e.pki.Issue(name, role, e.clientEndpoint())
}

// clientEndpoint is the address a client on this machine dials: the listener's, with loopback for an unspecified
// host (a server listening on every address).
func (e *Engine) clientEndpoint() string {
	addr := e.listener.Addr().(*net.TCPAddr) //nolint:forcetypeassert // the listener is TCP
	if addr.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))
	}

	return addr.String()
}

// writeAdminConfig keeps an admin client config at path: issued on first start, and its endpoint brought up to
// date on a later start on another address (a port picked at start).
func (e *Engine) writeAdminConfig(path string) error {
	cfg, err := server.LoadClientConfig(path)
	if err != nil || !e.pki.Signed(cfg) {
		if cfg, err = e.IssueClientConfig(AdminName, server.RoleAdmin); err != nil {
			return err
		}
	} else if cfg.Endpoint == e.clientEndpoint() {
		return nil
	}

	cfg.Endpoint = e.clientEndpoint()

	if err = cfg.Write(path); err != nil {
		return fmt.Errorf("writing the admin client config: %w", err)
	}

	return nil
}

// WithWriter names who writes through ctx (a user of the management plane), for the event log.
func WithWriter(ctx context.Context, writer string) context.Context {
	return store.WithWriter(ctx, writer)
}

// shutdownGrace bounds how long Run waits for in-flight API calls (and open watches) when it stops.
const shutdownGrace = 5 * time.Second

// Run runs the controllers and serves the API until ctx is done, then stops them and closes the state.
// It returns an error only if the API server fails.
func (e *Engine) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup

	wg.Go(func() {
		if e.elector == nil {
			e.metrics.Run(runCtx) // alongside the controllers, as a leader's term runs it (lead)

			return
		}

		e.elector.Run(runCtx, e.lead)
	})

	if e.elector == nil {
		wg.Go(func() { _ = e.runtime.Run(runCtx) }) //nolint:errcheck // the supervised runtime returns only when runCtx is done
	}

	serveErr := make(chan error, 1)

	if e.grpc != nil {
		e.logger.Info("serving the upshift API", zap.Stringer("address", e.listener.Addr()))

		e.served = true

		wg.Go(func() { serveErr <- e.grpc.Serve(e.listener) })
	}

	var err error

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serving the API: %w", err)
	}

	cancel()

	if e.grpc != nil {
		e.stopServer()
	}

	wg.Wait()

	return errors.Join(err, e.Close())
}

// stopServer stops the API server, gracefully for up to shutdownGrace.
func (e *Engine) stopServer() {
	stopped := make(chan struct{})

	go func() {
		e.grpc.GracefulStop()
		close(stopped)
	}()

	timer := time.NewTimer(shutdownGrace)
	defer timer.Stop()

	select {
	case <-stopped:
	case <-timer.C:
		e.grpc.Stop()
		<-stopped
	}
}

// Close releases the state file and the listener. Run calls it; call it yourself only for an engine never run.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		if e.listener != nil && !e.served {
			e.closeErr = e.listener.Close()
		}

		e.closeErr = errors.Join(e.closeErr, e.store.Close())

		if e.connector != nil {
			e.closeErr = errors.Join(e.closeErr, e.connector.Close())
		}
	})

	return e.closeErr
}
