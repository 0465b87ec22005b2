package controllers

import (
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/siderolabs/gen/optional"

	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources"
)

// Defaults of the Talos rollout controllers; UpgradeOptions change them (tests use short ones).
const (
	// DefaultPollInterval is how often machines and etcd are observed.
	DefaultPollInterval = 10 * time.Second
	// DefaultObserveTimeout bounds one observation of a machine or of etcd.
	DefaultObserveTimeout = 5 * time.Second
	// DefaultStepTimeout bounds how long a step waits for an unreachable machine before the upgrade fails.
	DefaultStepTimeout = 10 * time.Minute
	// DefaultRebootTimeout bounds how long a machine may take to come back from its reboot.
	DefaultRebootTimeout = 15 * time.Minute
	// DefaultRetryDelay is the pause between two tries of a step waiting for a machine (or the etcd gate).
	DefaultRetryDelay = 2 * time.Second
	// DefaultManifestCheckInterval is how often a cluster's bootstrap manifests are compared with the live objects.
	DefaultManifestCheckInterval = 5 * time.Minute
	// DefaultManifestRolloutTimeout bounds the wait for the rollouts an apply of bootstrap manifests caused.
	DefaultManifestRolloutTimeout = 5 * time.Minute
	// DefaultConcurrency is how many machines or clusters each controller reconciles at once.
	DefaultConcurrency = 16
)

// UpgradeConfig is the configuration of the Talos rollout controllers.
type UpgradeConfig struct {
	PollInterval   time.Duration
	ObserveTimeout time.Duration
	StepTimeout    time.Duration
	RebootTimeout  time.Duration
	RetryDelay     time.Duration
	Concurrency    uint
	Catalogue      *versions.Catalogue
	// KubernetesReleases are the Kubernetes releases upgrades may go to or through (kuberollout.DefaultReleases
	// by default).
	KubernetesReleases []string
	EtcdGrace          time.Duration

	ManifestCheckInterval  time.Duration
	ManifestRolloutTimeout time.Duration
}

// UpgradeOption changes an UpgradeConfig.
type UpgradeOption func(*UpgradeConfig)

// WithPollInterval sets how often machines and etcd are observed (DefaultPollInterval).
func WithPollInterval(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.PollInterval = d }
}

// WithObserveTimeout bounds one observation of a machine or of etcd (DefaultObserveTimeout).
func WithObserveTimeout(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.ObserveTimeout = d }
}

// WithStepTimeout bounds how long a step waits for an unreachable machine (DefaultStepTimeout).
func WithStepTimeout(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.StepTimeout = d }
}

// WithRebootTimeout bounds how long a machine may take to come back from its reboot (DefaultRebootTimeout).
func WithRebootTimeout(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.RebootTimeout = d }
}

// WithRetryDelay sets the pause between two tries of a waiting step (DefaultRetryDelay).
func WithRetryDelay(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.RetryDelay = d }
}

// WithConcurrency sets how many machines or clusters each controller reconciles at once (DefaultConcurrency).
func WithConcurrency(n uint) UpgradeOption {
	return func(c *UpgradeConfig) { c.Concurrency = max(n, 1) }
}

// WithEtcdGrace sets how long the rollout waits on the etcd gate before it calls the cluster Blocked
// (rollout.DefaultEtcdGrace).
func WithEtcdGrace(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.EtcdGrace = d }
}

// WithManifestCheckInterval sets how often bootstrap manifests are compared with the live objects
// (DefaultManifestCheckInterval); drift made inside a cluster shows within it.
func WithManifestCheckInterval(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.ManifestCheckInterval = d }
}

// WithManifestRolloutTimeout bounds the wait for the rollouts a manifest apply caused (DefaultManifestRolloutTimeout).
func WithManifestRolloutTimeout(d time.Duration) UpgradeOption {
	return func(c *UpgradeConfig) { c.ManifestRolloutTimeout = d }
}

// WithCatalogue sets the Talos releases upgrades may go to or through (versions.Shipped by default).
func WithCatalogue(catalogue *versions.Catalogue) UpgradeOption {
	return func(c *UpgradeConfig) { c.Catalogue = catalogue }
}

// WithKubernetesReleases sets the Kubernetes releases upgrades may go to or through, the latest patch of each minor
// (kuberollout.DefaultReleases by default): a Cluster may ask only for one of them.
func WithKubernetesReleases(releases ...string) UpgradeOption {
	return func(c *UpgradeConfig) { c.KubernetesReleases = releases }
}

// NewUpgradeConfig returns the defaults changed by opts.
func NewUpgradeConfig(opts ...UpgradeOption) UpgradeConfig {
	c := UpgradeConfig{
		PollInterval:   DefaultPollInterval,
		ObserveTimeout: DefaultObserveTimeout,
		StepTimeout:    DefaultStepTimeout,
		RebootTimeout:  DefaultRebootTimeout,
		RetryDelay:     DefaultRetryDelay,
		Concurrency:    DefaultConcurrency,
		EtcdGrace:      rollout.DefaultEtcdGrace,

		ManifestCheckInterval:  DefaultManifestCheckInterval,
		ManifestRolloutTimeout: DefaultManifestRolloutTimeout,
	}

	for _, opt := range opts {
		opt(&c)
	}

	if c.Catalogue == nil {
		c.Catalogue = versions.Shipped()
	}

	if c.KubernetesReleases == nil {
		c.KubernetesReleases = kuberollout.DefaultReleases
	}

	return c
}

// Known is the versions this configuration can roll out, which the validating state admits in a Cluster
// (validate.WithKnownVersions): the same catalogue, so a release added to it is admitted at once.
func (c UpgradeConfig) Known() versions.Known {
	return versions.Known{Talos: c.Catalogue, Kubernetes: c.KubernetesReleases}
}

// policy is the engine's side of the rollout's decisions.
func (c UpgradeConfig) policy() rollout.Policy {
	return rollout.Policy{Catalogue: c.Catalogue, EtcdGrace: c.EtcdGrace}
}

func (c UpgradeConfig) concurrency() optional.Optional[uint] { return optional.Some(c.Concurrency) }

// qInputs declares the inputs of a QController: primary, and the types mapped to it, all in resources.Namespace.
func qInputs(primary resource.Type, mapped ...resource.Type) []controller.Input {
	inputs := []controller.Input{{Namespace: resources.Namespace, Type: primary, Kind: controller.InputQPrimary}}

	for _, t := range mapped {
		inputs = append(inputs, controller.Input{Namespace: resources.Namespace, Type: t, Kind: controller.InputQMapped})
	}

	return inputs
}

// Upgrades registers the controllers of the rolling Talos upgrade: observation of machines and etcd, the
// per-cluster plan and schedule, the per-machine state machine; the Kubernetes upgrade; and, when conn also reaches
// bootstrap manifests (a ManifestConnector, as CredentialsConnector is), the manifest sync. Every one reaches the
// fleet only through conn.
func Upgrades(conn Connector, opts ...UpgradeOption) Registrar {
	cfg := NewUpgradeConfig(opts...)

	return func(engine controller.Engine) error {
		ctrls := []controller.QController{
			NewMachineStatusController(conn, cfg),
			NewEtcdStatusController(conn, cfg),
			NewTalosUpgradeStatusController(cfg),
			NewMachineUpgradeStatusController(conn, cfg),
			NewMachineConfigStatusController(conn, cfg),
			NewKubernetesUpgradeStatusController(conn, cfg),
		}

		if mc, ok := conn.(ManifestConnector); ok {
			ctrls = append(ctrls, NewManifestSyncController(mc, cfg))
		}

		for _, ctrl := range ctrls {
			if err := engine.RegisterQController(sweepOrphans(ctrl)); err != nil {
				return err
			}
		}

		return engine.RegisterController(NewTalosReleasesController(cfg.Catalogue))
	}
}

// Overridable runs registrars, then defaults for every controller the registrars did not register themselves: an
// embedder that registers its own Upgrades (other adapters, other timeouts) replaces the engine's default one
// instead of clashing with it.
func Overridable(defaults Registrar, registrars ...Registrar) Registrar {
	return func(engine controller.Engine) error {
		rec := &recordingEngine{Engine: engine, names: map[string]bool{}}

		for _, register := range registrars {
			if err := register(rec); err != nil {
				return err
			}
		}

		return defaults(&skippingEngine{Engine: engine, skip: rec.names})
	}
}

// recordingEngine records the names of the controllers registered through it.
type recordingEngine struct {
	controller.Engine
	names map[string]bool
}

func (e *recordingEngine) RegisterController(ctrl controller.Controller) error {
	e.names[ctrl.Name()] = true

	return e.Engine.RegisterController(ctrl)
}

func (e *recordingEngine) RegisterQController(ctrl controller.QController) error {
	e.names[ctrl.Name()] = true

	return e.Engine.RegisterQController(ctrl)
}

// skippingEngine leaves out the controllers named in skip.
type skippingEngine struct {
	controller.Engine
	skip map[string]bool
}

func (e *skippingEngine) RegisterController(ctrl controller.Controller) error {
	if e.skip[ctrl.Name()] {
		return nil
	}

	return e.Engine.RegisterController(ctrl)
}

func (e *skippingEngine) RegisterQController(ctrl controller.QController) error {
	if e.skip[ctrl.Name()] {
		return nil
	}

	return e.Engine.RegisterQController(ctrl)
}
