package upshift

import (
	"github.com/cosi-project/runtime/pkg/controller/runtime/options"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/state/store"
)

// DefaultListenAddress is where `upshift serve` listens and where the CLI looks by default: loopback only, so
// nothing is exposed beyond the machine unless asked for.
const DefaultListenAddress = "127.0.0.1:50651"

// StateFileName is the bbolt file the engine keeps in its data dir.
const StateFileName = "state.db"

// AdminConfigFileName is the admin client config the engine keeps in its data dir once it serves the gRPC API
// (with the CA and server certificate beside it): what `upshift serve` copies to the CLI's default config path.
const AdminConfigFileName = "admin.upshiftconfig"

// AdminName is the name in the certificate of the admin config the engine writes, and so the writer the event log
// records for its writes.
const AdminName = "admin"

// Option configures New.
type Option func(*engineOptions)

type engineOptions struct {
	logger         *zap.Logger
	dataDir        string
	listenAddress  string
	registrars     []controllers.Registrar
	connector      controllers.Connector
	upgradeOptions []controllers.UpgradeOption
	runtimeOptions []options.Option
	storeOptions   []store.Option
	encryptionKey  []byte
	etcd           *etcdOptions // nil: the state is the data dir's bbolt file
}

func defaultOptions() engineOptions {
	return engineOptions{
		logger:        zap.NewNop(),
		listenAddress: DefaultListenAddress,
	}
}

// WithDataDir sets the directory holding the engine's state (DataDir/state.db) and, unless WithEncryptionKey gives
// the key, the key that encrypts its secrets (DataDir/state.key). Required.
func WithDataDir(dir string) Option {
	return func(o *engineOptions) {
		o.dataDir = dir
	}
}

// WithLogger sets the logger of the engine, its store and its controllers. Default: no logging.
func WithLogger(logger *zap.Logger) Option {
	return func(o *engineOptions) {
		if logger != nil {
			o.logger = logger
		}
	}
}

// WithListenAddress sets where the gRPC API listens (host:port; port 0 picks a free one). An empty address serves
// no gRPC at all, for a management plane that only uses the Go API. Default: DefaultListenAddress.
func WithListenAddress(addr string) Option {
	return func(o *engineOptions) {
		o.listenAddress = addr
	}
}

// WithControllers adds controllers to the engine; one named like a default controller (e.g. from
// controllers.Upgrades) replaces it. Each registrar is called on every (re)start of the controller
// runtime, so controllers that need adapters (a Talos client, a Kubernetes client) capture them in the closure.
func WithControllers(registrars ...controllers.Registrar) Option {
	return func(o *engineOptions) {
		o.registrars = append(o.registrars, registrars...)
	}
}

// WithConnector sets how the Talos rollout controllers reach each cluster's Talos and Kubernetes APIs. Default: a
// controllers.CredentialsConnector, which builds the clients from each cluster's Credentials resource.
func WithConnector(conn controllers.Connector) Option {
	return func(o *engineOptions) {
		o.connector = conn
	}
}

// WithUpgradeOptions tunes the Talos rollout controllers: poll interval, step and reboot timeouts, the release
// catalogue and the Kubernetes releases (see the controllers.With... upgrade options). The validating state admits
// in a Cluster only the versions the catalogue and releases given here hold (an embedder that registers its own
// controllers.Upgrades with WithControllers passes the same ones here too).
func WithUpgradeOptions(opts ...controllers.UpgradeOption) Option {
	return func(o *engineOptions) {
		o.upgradeOptions = append(o.upgradeOptions, opts...)
	}
}

// WithRuntimeOptions passes options to the COSI controller runtime, e.g. caches for the types controllers read.
func WithRuntimeOptions(opts ...options.Option) Option {
	return func(o *engineOptions) {
		o.runtimeOptions = append(o.runtimeOptions, opts...)
	}
}

// WithStoreOptions passes options to the durable store: log retention, open timeout, watch history capacity.
func WithStoreOptions(opts ...store.Option) Option {
	return func(o *engineOptions) {
		o.storeOptions = append(o.storeOptions, opts...)
	}
}
