package talosemu

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
)

// Fleet is a running emulated fleet: clusters of Talos nodes behind one mTLS gRPC endpoint.
type Fleet struct {
	opts     options
	logger   *zap.Logger
	journal  *Journal
	pki      *pki
	clusters []*cluster
	meta     state.CoreState // the meta namespace every node shares

	// mu guards nodes, order and every cluster's nodes, which AddWorker grows while the API serves.
	mu    sync.RWMutex
	nodes map[string]*Node
	order []*Node

	journalFile *os.File
	listener    net.Listener
	server      *grpc.Server
	serveErr    chan error

	ctx    context.Context //nolint:containedctx // the fleet's lifetime, ended by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// cluster is one emulated cluster: its nodes, its etcd and, when running, its Kubernetes control plane.
type cluster struct {
	name         string
	dir          string
	nodes        []*Node
	etcd         *etcdCluster // nil in lite mode
	kube         KubernetesControlPlane
	kubeconfig   []byte
	workerConfig talosconfig.Provider // what a worker added to the running cluster boots with
	// discovery is the cluster's "cluster" namespace (discovery Members), which every node of a real cluster
	// converges on: one copy serves them all.
	discovery state.CoreState
}

// New creates the fleet, boots every node and starts serving. Close stops it.
func New(ctx context.Context, opts ...Option) (*Fleet, error) {
	o := defaultOptions()

	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}

	if err := o.validate(); err != nil {
		return nil, err
	}

	f := &Fleet{opts: o, logger: o.logger, nodes: map[string]*Node{}, serveErr: make(chan error, 1)}
	f.ctx, f.cancel = context.WithCancel(context.Background())

	if err := f.start(ctx); err != nil {
		return nil, errors.Join(err, f.Close())
	}

	return f, nil
}

func (f *Fleet) start(ctx context.Context) error {
	if err := os.MkdirAll(f.opts.stateDir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}

	var err error

	if f.journalFile, err = os.Create(filepath.Join(f.opts.stateDir, "journal.jsonl")); err != nil {
		return fmt.Errorf("creating journal: %w", err)
	}

	f.journal = newJournal(f.journalFile)

	if f.pki, err = newPKI(); err != nil {
		return err
	}

	if err = f.createNodes(ctx); err != nil {
		return err
	}

	if err = f.bootNodes(ctx); err != nil {
		return err
	}

	if f.opts.kubernetes != nil && !f.opts.lite {
		if err = f.startKubernetes(ctx); err != nil {
			return err
		}
	}

	return f.serve()
}

// createNodes builds every cluster's machine configs and nodes, with their initial resources.
func (f *Fleet) createNodes(ctx context.Context) error {
	meta, err := newMetaState(ctx)
	if err != nil {
		return err
	}

	f.meta = meta

	// The machine configs are generated for the oldest version any node runs, so that every node of a mixed fleet
	// can read its config, as a cluster's configs are generated for the release it was created with.
	contract, err := talosconfig.ParseContractFromVersion("v" + f.opts.oldestVersion())
	if err != nil {
		return fmt.Errorf("parsing version contract: %w", err)
	}

	// One secrets bundle for the fleet: generating one per cluster costs seconds, and nothing here depends on the
	// clusters having distinct CAs.
	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), contract, secrets.WithECDSAServiceAccountKey())
	if err != nil {
		return fmt.Errorf("generating secrets bundle: %w", err)
	}

	for i := 1; i <= f.opts.clusters; i++ {
		c := &cluster{name: fmt.Sprintf("c%d", i)}
		c.dir = filepath.Join(f.opts.stateDir, c.name)

		if err = f.createCluster(ctx, c, contract, bundle, uint64(i)); err != nil {
			return fmt.Errorf("creating cluster %q: %w", c.name, err)
		}

		f.clusters = append(f.clusters, c)
	}

	for _, node := range slices.Sorted(maps.Keys(f.opts.nodeVersions)) {
		if _, ok := f.nodes[node]; !ok {
			return fmt.Errorf("talos version %s for unknown node %q", f.opts.nodeVersions[node], node)
		}
	}

	for _, nf := range f.opts.faults {
		n, ok := f.nodes[nf.Node]
		if !ok {
			return fmt.Errorf("fault %s for unknown node %q", nf.Fault, nf.Node)
		}

		n.markFaultLocked(nf, true)

		if nf.For > 0 {
			f.clearFaultAfter(n, nf)
		}
	}

	return nil
}

func (f *Fleet) createCluster(ctx context.Context, c *cluster, contract *talosconfig.VersionContract, bundle *secrets.Bundle, seed uint64) error {

	input, err := generate.NewInput(c.name, "https://"+c.name+".emulated:6443", f.opts.kubernetesVersion,
		generate.WithVersionContract(contract), generate.WithSecretsBundle(bundle))
	if err != nil {
		return fmt.Errorf("preparing machine config: %w", err)
	}

	cpConfig, err := input.Config(machine.TypeControlPlane)
	if err != nil {
		return fmt.Errorf("generating control plane config: %w", err)
	}

	workerConfig, err := input.Config(machine.TypeWorker)
	if err != nil {
		return fmt.Errorf("generating worker config: %w", err)
	}

	if cpConfig, err = readOnly(cpConfig); err != nil {
		return err
	}

	if workerConfig, err = readOnly(workerConfig); err != nil {
		return err
	}

	var lite *liteEtcdCluster

	if f.opts.lite {
		lite = newLiteEtcdCluster(seed)
	} else {
		c.etcd = newEtcdCluster(c.name, f.logger)

		// Only this fleet's own node directories are cleared: a state dir may be reused between runs.
		if err = os.RemoveAll(c.dir); err != nil {
			return fmt.Errorf("clearing %s: %w", c.dir, err)
		}
	}

	c.workerConfig = workerConfig
	c.discovery = newDiscoveryState()

	add := func(name string, controlPlane bool, cfg talosconfig.Provider) error {
		n := f.newNode(c, name, controlPlane, cfg)

		if controlPlane {
			if lite != nil {
				n.etcd = lite.addMember(name)
			} else {
				member, err := c.etcd.addMember(name, filepath.Join(c.dir, name, "etcd"))
				if err != nil {
					return err
				}

				n.etcd = member
			}
		}

		if err := n.publishInitial(ctx); err != nil {
			return err
		}

		f.addNode(n)

		return nil
	}

	for i := 1; i <= f.opts.controlPlanes; i++ {
		if err = add(fmt.Sprintf("%s-cp-%d", c.name, i), true, cpConfig); err != nil {
			return err
		}
	}

	for i := 1; i <= f.opts.workers; i++ {
		if err = add(fmt.Sprintf("%s-w-%d", c.name, i), false, workerConfig); err != nil {
			return err
		}
	}

	return nil
}

// bootNodes boots every node; the members of a real etcd cluster must start together to form it.
func (f *Fleet) bootNodes(ctx context.Context) error {
	if f.opts.lite {
		for _, n := range f.order {
			if err := n.boot(ctx); err != nil {
				return err
			}
		}

		return nil
	}

	eg, ctx := errgroup.WithContext(ctx)

	for _, n := range f.order {
		eg.Go(func() error { return n.boot(ctx) })
	}

	return eg.Wait()
}

// startKubernetes starts each cluster's control plane on its etcd and one kubelet per node.
func (f *Fleet) startKubernetes(ctx context.Context) error {
	for _, c := range f.clusters {
		if err := os.MkdirAll(c.dir, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", c.dir, err)
		}

		kube, err := f.opts.kubernetes.StartControlPlane(ctx, KubernetesControlPlaneConfig{
			Cluster:       c.name,
			Dir:           filepath.Join(c.dir, "kubernetes"),
			EtcdEndpoints: c.etcd.clientURLs(),
			Logger:        f.logger.Named("kubernetes").With(zap.String("cluster", c.name)),
		})
		if err != nil {
			return fmt.Errorf("starting Kubernetes of cluster %q: %w", c.name, err)
		}

		c.kube, c.kubeconfig = kube, kube.Kubeconfig()

		if err = kube.ApplyManifests(ctx, c.bootstrapManifests()); err != nil {
			return fmt.Errorf("applying the bootstrap manifests of cluster %q: %w", c.name, err)
		}

		if err = os.WriteFile(filepath.Join(c.dir, "kubeconfig"), c.kubeconfig, 0o600); err != nil {
			return fmt.Errorf("writing kubeconfig of cluster %q: %w", c.name, err)
		}

		for _, n := range c.nodes {
			if err = f.startKubelet(kube, n); err != nil {
				return err
			}
		}

		if err = c.applyBootstrapManifests(ctx); err != nil {
			return err
		}
	}

	return nil
}

// startKubelet starts playing a node's kubelet in its cluster's Kubernetes, ready when the node is up.
func (f *Fleet) startKubelet(kube KubernetesControlPlane, n *Node) error {
	kubelet, err := kube.StartKubelet(f.ctx, n.kubeletConfig())
	if err != nil {
		return fmt.Errorf("starting kubelet of %q: %w", n.name, err)
	}

	kubelet.SetReady(n.Up())

	n.mu.Lock()
	n.kubelet = kubelet
	n.mu.Unlock()

	return nil
}

// bootstrapManifests are the objects the first control plane renders into the kube-proxy bootstrap manifest: what
// the emulator applies when the cluster starts. CoreDNS is rendered but not applied: its pods would only add churn
// to every drain, and nothing the engine does reads them.
func (c *cluster) bootstrapManifests() []map[string]any {
	n := c.nodes[0] // control planes come first, and every cluster has one

	n.mu.Lock()
	defer n.mu.Unlock()

	for _, m := range n.rendered.manifests {
		if m.id == kubeProxyManifestID {
			return m.objects
		}
	}

	return nil
}

// serve starts the gRPC endpoint and writes the talosconfig.
func (f *Fleet) serve() error {
	var err error

	if f.listener, err = net.Listen("tcp", f.opts.listenAddress); err != nil {
		return fmt.Errorf("listening on %s: %w", f.opts.listenAddress, err)
	}

	f.server = newServer(f)

	go func() { f.serveErr <- f.server.Serve(f.listener) }()

	if err = f.Talosconfig().Save(f.TalosconfigPath()); err != nil {
		return fmt.Errorf("writing talosconfig: %w", err)
	}

	return nil
}

// background runs a node sequence that must end when the fleet closes.
func (f *Fleet) background(run func(ctx context.Context)) {
	f.wg.Go(func() { run(f.ctx) })
}

// Close stops serving, ends reboots in progress and stops every etcd member and Kubernetes control plane.
func (f *Fleet) Close() error {
	f.closeOnce.Do(func() {
		if f.server != nil {
			f.server.Stop()
		}

		f.cancel()
		f.wg.Wait()

		var errs []error

		for _, c := range f.clusters {
			if c.kube != nil {
				if err := c.kube.Stop(); err != nil {
					errs = append(errs, fmt.Errorf("stopping Kubernetes of cluster %q: %w", c.name, err))
				}
			}
		}

		var stopping sync.WaitGroup

		for _, n := range f.Nodes() {
			if n.etcd != nil {
				stopping.Go(n.etcd.stop)
			}
		}

		stopping.Wait()

		if f.journal != nil {
			errs = append(errs, f.journal.Err())
		}

		if f.journalFile != nil {
			errs = append(errs, f.journalFile.Close())
		}

		f.closeErr = errors.Join(errs...)
	})

	return f.closeErr
}

// Endpoint is the fleet's Talos API endpoint (host:port).
func (f *Fleet) Endpoint() string { return f.listener.Addr().String() }

// StateDir is the directory holding the talosconfig, kubeconfigs, journal and node data.
func (f *Fleet) StateDir() string { return f.opts.stateDir }

// TalosconfigPath is where the fleet's talosconfig is written.
func (f *Fleet) TalosconfigPath() string { return filepath.Join(f.opts.stateDir, "talosconfig") }

// Talosconfig is a client configuration for the whole fleet: its endpoint, CA and an admin client certificate.
func (f *Fleet) Talosconfig() *clientconfig.Config {
	return f.pki.talosconfig("upshift-emulator", f.Endpoint(), nodeNames(f.Nodes()))
}

// ClusterTalosconfig is a client configuration for one cluster, as a real cluster's talosconfig is: the fleet's
// endpoint and credentials, with only that cluster's nodes. A fleet-wide one lists every node of the fleet, which
// makes each cluster's credentials grow with the fleet.
func (f *Fleet) ClusterTalosconfig(name string) (*clientconfig.Config, error) {
	c, err := f.cluster(name)
	if err != nil {
		return nil, err
	}

	return f.pki.talosconfig("upshift-emulator-"+name, f.Endpoint(), nodeNames(f.clusterNodes(c))), nil
}

// nodeNames lists the names of nodes, in order.
func nodeNames(nodes []*Node) []string {
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		names = append(names, n.name)
	}

	return names
}

// ClientTLSConfig is the TLS configuration a machinery client needs (client.WithTLSConfig) to reach the fleet.
func (f *Fleet) ClientTLSConfig() (*tls.Config, error) { return f.pki.clientTLS() }

// Journal is the record of every call and reboot.
func (f *Fleet) Journal() *Journal { return f.journal }

// Node returns a node by name.
func (f *Fleet) Node(name string) (*Node, error) {
	n, ok := f.lookup(name)
	if !ok {
		return nil, fmt.Errorf("no node %q in the emulated fleet", name)
	}

	return n, nil
}

// Nodes lists every node, cluster by cluster, control planes first.
func (f *Fleet) Nodes() []*Node {
	f.mu.RLock()
	defer f.mu.RUnlock()

	return append([]*Node(nil), f.order...)
}

// Clusters lists the cluster names (c1, c2, ...).
func (f *Fleet) Clusters() []string {
	names := make([]string, 0, len(f.clusters))
	for _, c := range f.clusters {
		names = append(names, c.name)
	}

	return names
}

// ClusterNodes lists the nodes of one cluster, control planes first.
func (f *Fleet) ClusterNodes(name string) ([]*Node, error) {
	c, err := f.cluster(name)
	if err != nil {
		return nil, err
	}

	return f.clusterNodes(c), nil
}

// KubeconfigPath is where a cluster's admin kubeconfig is written once its Kubernetes control plane runs.
func (f *Fleet) KubeconfigPath(clusterName string) string {
	return filepath.Join(f.opts.stateDir, clusterName, "kubeconfig")
}

// EtcdEndpoints lists the client URLs of a cluster's real etcd members (none in lite mode).
func (f *Fleet) EtcdEndpoints(clusterName string) ([]string, error) {
	c, err := f.cluster(clusterName)
	if err != nil {
		return nil, err
	}

	if c.etcd == nil {
		return nil, nil
	}

	return c.etcd.clientURLs(), nil
}

func (f *Fleet) cluster(name string) (*cluster, error) {
	for _, c := range f.clusters {
		if c.name == name {
			return c, nil
		}
	}

	return nil, fmt.Errorf("no cluster %q in the emulated fleet", name)
}

// SetFault injects a fault into a running node.
func (f *Fleet) SetFault(ctx context.Context, node string, fault Fault) error {
	return f.SetNodeFault(ctx, NodeFault{Node: node, Fault: fault})
}

// ClearFault removes a fault from a running node (a node held down by no-return comes back).
func (f *Fleet) ClearFault(ctx context.Context, node string, fault Fault) error {
	return f.ClearNodeFault(ctx, NodeFault{Node: node, Fault: fault})
}

// SetFaultFor injects a fault into a running node that clears itself after d (e.g. api-down for a while).
func (f *Fleet) SetFaultFor(ctx context.Context, node string, fault Fault, d time.Duration) error {
	return f.SetNodeFault(ctx, NodeFault{Node: node, Fault: fault, For: d})
}

// SetNodeFault injects a fault into a running node: e.g. a pull-fail of one image (Image), or one that clears itself
// after For.
func (f *Fleet) SetNodeFault(ctx context.Context, nf NodeFault) error {
	n, err := f.faultNode(nf)
	if err != nil {
		return err
	}

	if err = n.setFault(ctx, nf, true); err != nil {
		return err
	}

	if nf.For > 0 {
		f.clearFaultAfter(n, nf)
	}

	return nil
}

// ClearNodeFault removes a fault set by SetNodeFault (or at start); a pull-fail of one image is cleared by naming the
// same image.
func (f *Fleet) ClearNodeFault(ctx context.Context, nf NodeFault) error {
	n, err := f.faultNode(nf)
	if err != nil {
		return err
	}

	return n.setFault(ctx, nf, false)
}

func (f *Fleet) faultNode(nf NodeFault) (*Node, error) {
	if err := nf.validate(); err != nil {
		return nil, err
	}

	return f.Node(nf.Node)
}

func (f *Fleet) clearFaultAfter(n *Node, nf NodeFault) {
	f.background(func(ctx context.Context) {
		timer := time.NewTimer(nf.For)
		defer timer.Stop()

		select {
		case <-ctx.Done():
		case <-timer.C:
			if err := n.setFault(ctx, nf, false); err != nil {
				f.logger.Error("clearing fault", zap.String("node", n.name), zap.String("fault", string(nf.Fault)), zap.Error(err))
			}
		}
	})
}

// Kubeconfig is a cluster's admin kubeconfig, or nil when its Kubernetes control plane does not run (lite mode, or
// no KubernetesRunner).
func (f *Fleet) Kubeconfig(clusterName string) ([]byte, error) {
	c, err := f.cluster(clusterName)
	if err != nil {
		return nil, err
	}

	return c.kubeconfig, nil
}

// StopAPIServer stops a cluster's kube-apiserver process (its etcd, other components and kubelets keep running)
// until StartAPIServer: a real API server outage in the middle of whatever the engine is doing.
func (f *Fleet) StopAPIServer(clusterName string) error {
	kube, err := f.kubernetes(clusterName)
	if err != nil {
		return err
	}

	if err := kube.StopAPIServer(); err != nil {
		return fmt.Errorf("cluster %q: %w", clusterName, err)
	}

	return nil
}

// StartAPIServer starts a cluster's kube-apiserver stopped by StopAPIServer again, on the same port with the same
// certificates and etcd, and returns once it is ready.
func (f *Fleet) StartAPIServer(ctx context.Context, clusterName string) error {
	kube, err := f.kubernetes(clusterName)
	if err != nil {
		return err
	}

	if err := kube.StartAPIServer(ctx); err != nil {
		return fmt.Errorf("cluster %q: %w", clusterName, err)
	}

	return nil
}

// kubernetes is a cluster's running Kubernetes control plane.
func (f *Fleet) kubernetes(clusterName string) (KubernetesControlPlane, error) {
	c, err := f.cluster(clusterName)
	if err != nil {
		return nil, err
	}

	if c.kube == nil {
		return nil, fmt.Errorf("cluster %q runs no Kubernetes control plane (lite mode, or no KubernetesRunner)", clusterName)
	}

	return c.kube, nil
}

// TalosVersion is the Talos version the fleet's nodes started with, except those given their own by
// WithNodeVersion (Node.Version says what each one runs).
func (f *Fleet) TalosVersion() string { return f.opts.talosVersion }

// KubernetesVersion is the Kubernetes version of the fleet's machine configs at start.
func (f *Fleet) KubernetesVersion() string { return f.opts.kubernetesVersion }

// readOnly reloads a generated config as a read-only one, like configs loaded from bytes: every node of a role
// shares it, and COSI copies of a read-only config do not clone it.
func readOnly(cfg talosconfig.Provider) (talosconfig.Provider, error) {
	b, err := cfg.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		return nil, fmt.Errorf("encoding machine config: %w", err)
	}

	loaded, err := configloader.NewFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("loading machine config: %w", err)
	}

	return loaded, nil
}
