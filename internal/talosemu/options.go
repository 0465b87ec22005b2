package talosemu

import (
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Option configures a fleet.
type Option func(*options) error

type options struct {
	stateDir          string
	listenAddress     string
	clusters          int
	controlPlanes     int
	workers           int
	talosVersion      string
	nodeVersions      map[string]string // node name -> the version it runs at start instead of talosVersion
	kubernetesVersion string
	lite              bool
	rebootDowntime    time.Duration
	slowRebootFactor  int
	staticPodRestart  time.Duration
	faults            []NodeFault
	kubernetes        KubernetesRunner
	logger            *zap.Logger
}

// DefaultRebootDowntime is how long a rebooting node stays unreachable unless configured.
const DefaultRebootDowntime = 2 * time.Second

// DefaultStaticPodRestart is how long a restarted control-plane static pod stays not Ready (and the cluster's API
// endpoint unreachable when it is a kube-apiserver) unless configured: about what a kube-apiserver takes to serve
// again.
const DefaultStaticPodRestart = time.Second

func defaultOptions() options {
	return options{
		listenAddress:     "127.0.0.1:0",
		clusters:          1,
		controlPlanes:     3,
		workers:           3,
		talosVersion:      DefaultTalosVersion,
		kubernetesVersion: DefaultKubernetesVersion,
		rebootDowntime:    DefaultRebootDowntime,
		slowRebootFactor:  5,
		staticPodRestart:  DefaultStaticPodRestart,
		logger:            zap.NewNop(),
	}
}

func (o *options) validate() error {
	switch {
	case o.stateDir == "":
		return fmt.Errorf("a state directory is required")
	case o.clusters < 1:
		return fmt.Errorf("clusters must be at least 1, got %d", o.clusters)
	case o.controlPlanes < 1:
		return fmt.Errorf("control planes must be at least 1, got %d", o.controlPlanes)
	case o.workers < 0:
		return fmt.Errorf("workers must not be negative, got %d", o.workers)
	}

	return nil
}

// WithStateDir sets the directory for the talosconfig, kubeconfigs, journal and node data (required).
func WithStateDir(dir string) Option {
	return func(o *options) error {
		o.stateDir = dir

		return nil
	}
}

// WithListenAddress sets the address of the fleet's gRPC endpoint (default 127.0.0.1:0, a free port).
func WithListenAddress(addr string) Option {
	return func(o *options) error {
		o.listenAddress = addr

		return nil
	}
}

// WithClusters sets the number of clusters (named c1, c2, ...).
func WithClusters(n int) Option {
	return func(o *options) error {
		o.clusters = n

		return nil
	}
}

// WithControlPlanes sets the number of control-plane nodes per cluster.
func WithControlPlanes(n int) Option {
	return func(o *options) error {
		o.controlPlanes = n

		return nil
	}
}

// WithWorkers sets the number of worker nodes per cluster.
func WithWorkers(n int) Option {
	return func(o *options) error {
		o.workers = n

		return nil
	}
}

// WithTalosVersion sets the Talos version every node runs at start; it must be one of SupportedVersions.
func WithTalosVersion(v string) Option {
	return func(o *options) error {
		normalized, err := normalizeVersion(v)
		if err != nil {
			return err
		}

		o.talosVersion = normalized

		return nil
	}
}

// WithNodeVersion makes one node run version v at start instead of the fleet's version (WithTalosVersion), as a
// node reinstalled or upgraded on its own does in a real cluster, so a rollout can be tested on a cluster whose
// machines do not all start from the same release. v must be one of SupportedVersions; the node must exist in the
// fleet, which New checks.
func WithNodeVersion(node, v string) Option {
	return func(o *options) error {
		if node == "" {
			return fmt.Errorf("node version %q: the node name is empty", v)
		}

		normalized, err := normalizeVersion(v)
		if err != nil {
			return fmt.Errorf("version of node %q: %w", node, err)
		}

		if o.nodeVersions == nil {
			o.nodeVersions = map[string]string{}
		}

		o.nodeVersions[node] = normalized

		return nil
	}
}

// versionOf is the Talos version node runs at start.
func (o *options) versionOf(node string) string {
	if v, ok := o.nodeVersions[node]; ok {
		return v
	}

	return o.talosVersion
}

// oldestVersion is the oldest version any node runs at start.
func (o *options) oldestVersion() string {
	oldest := slices.Index(supportedVersions, o.talosVersion)

	for _, v := range o.nodeVersions {
		oldest = min(oldest, slices.Index(supportedVersions, v))
	}

	return supportedVersions[oldest]
}

// WithKubernetesVersion sets the Kubernetes version of every cluster's machine configs.
func WithKubernetesVersion(v string) Option {
	return func(o *options) error {
		if v == "" {
			return fmt.Errorf("kubernetes version must not be empty")
		}

		o.kubernetesVersion = v

		return nil
	}
}

// WithLite drops etcd and Kubernetes (etcd membership is modelled in memory) so one process can hold thousands of
// nodes.
func WithLite() Option {
	return func(o *options) error {
		o.lite = true

		return nil
	}
}

// WithRebootDowntime sets how long a rebooting node stays unreachable (0 is allowed).
func WithRebootDowntime(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("reboot downtime must not be negative, got %s", d)
		}

		o.rebootDowntime = d

		return nil
	}
}

// WithStaticPodRestart sets how long a control-plane static pod whose config changed stays not Ready while the
// kubelet restarts it, and how long the cluster's API endpoint is unreachable when that pod is a kube-apiserver
// (0 is allowed: no delay, e.g. for benchmarks).
func WithStaticPodRestart(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("static pod restart must not be negative, got %s", d)
		}

		o.staticPodRestart = d

		return nil
	}
}

// WithSlowRebootFactor sets how many times longer a node with the slow-reboot fault stays down (default 5).
func WithSlowRebootFactor(factor int) Option {
	return func(o *options) error {
		if factor < 1 {
			return fmt.Errorf("slow reboot factor must be at least 1, got %d", factor)
		}

		o.slowRebootFactor = factor

		return nil
	}
}

// WithFault injects a fault into a node from the start.
func WithFault(node string, fault Fault) Option {
	return WithNodeFault(NodeFault{Node: node, Fault: fault})
}

// WithNodeFault injects a fault into a node from the start, for a while when its For is set.
func WithNodeFault(nf NodeFault) Option {
	return func(o *options) error {
		if err := nf.validate(); err != nil {
			return err
		}

		o.faults = append(o.faults, nf)

		return nil
	}
}

// WithKubernetes runs every cluster's Kubernetes half with the given runner (ignored in lite mode).
func WithKubernetes(runner KubernetesRunner) Option {
	return func(o *options) error {
		o.kubernetes = runner

		return nil
	}
}

// WithLogger sets the fleet's logger.
func WithLogger(logger *zap.Logger) Option {
	return func(o *options) error {
		o.logger = logger

		return nil
	}
}
