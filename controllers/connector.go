package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
)

// ErrClientReplaced is wrapped by a call made on a Talos client that new credentials replaced and that closed when
// the calls it carried returned (or that the connector's Close closed): the call was not sent, so it is safe to make
// again with a fresh client.
var ErrClientReplaced = errors.New("the cluster's Talos client was replaced by new credentials; the call was not sent")

// ErrNoKubernetes is wrapped by Connector.Kubernetes when a cluster gives no way to reach its Kubernetes API (its
// Credentials hold no kubeconfig). The upgrade then skips the Kubernetes side effects (cordon, drain, uncordon) and
// says so, rather than failing: a Talos-only fleet (or the lite emulator) still upgrades.
var ErrNoKubernetes = errors.New("no kubeconfig in the cluster's credentials")

// ClusterAccess is what a Connector needs to reach one cluster: its name, its credentials, and a machine's Talos
// endpoint for a talosconfig that names none.
type ClusterAccess struct {
	Cluster     string
	Credentials cluster.CredentialsSpec
	Endpoint    string
}

// Connector hands the controllers the adapters of one cluster. It is the only way controllers reach Talos and
// Kubernetes, so tests give doubles and the engine gives CredentialsConnector. Implementations are safe for
// concurrent use and may return the same client for the same access; callers never close what they get.
type Connector interface {
	Talos(ctx context.Context, access ClusterAccess) (talos.API, error)
	Kubernetes(ctx context.Context, access ClusterAccess) (kube.API, error)
}

// readAccess reads the Credentials of clusterID for a controller that declared them as an input. endpoint is the
// Talos endpoint of one of the cluster's machines.
func readAccess(ctx context.Context, r controller.Reader, clusterID, endpoint string) (ClusterAccess, error) {
	creds, err := safe.ReaderGetByID[*cluster.Credentials](ctx, r, clusterID)
	if err != nil {
		if state.IsNotFoundError(err) {
			return ClusterAccess{}, fmt.Errorf("cluster %q has no credentials: create its Credentials (talosconfig, kubeconfig)", clusterID)
		}

		return ClusterAccess{}, fmt.Errorf("reading credentials of cluster %q: %w", clusterID, err)
	}

	return ClusterAccess{Cluster: clusterID, Credentials: *creds.TypedSpec(), Endpoint: endpoint}, nil
}

// CredentialsConnector builds the real adapters from a cluster's Credentials: the machinery client from its
// talosconfig and client-go from its kubeconfig. It keeps one client per cluster and replaces it when the
// credentials change, so a reconcile never pays for a new connection (Omni opens one per reconcile). A replaced
// Talos client is closed only once the calls in flight on it return: a credentials rotation in the middle of an
// upgrade never cuts off an install, whose outcome the engine could then not tell.
type CredentialsConnector struct {
	kubeOptions []kube.Option
	// dial makes a Talos client; tests give a double.
	dial func(ctx context.Context, opts ...talos.Option) (talos.API, error)

	mu        sync.Mutex
	talos     map[string]*talosClients
	kube      map[string]kubeClient
	manifests map[string]manifestsClient
}

// kubeClient is the Kubernetes client of one cluster and the kubeconfig it was made from.
type kubeClient struct {
	kubeconfig string
	client     *kube.Client
}

// talosClients are the Talos clients of one cluster's talosconfig, parsed once: reading a talosconfig is YAML
// parsing, which cost more than the calls themselves when it was done on every call.
type talosClients struct {
	// talosconfig is compared as is: a hash or a copy on every call showed in profiles, and equal strings copied from
	// one resource share their bytes.
	talosconfig string
	// ownEndpoints is set when the talosconfig names endpoints: one client serves every machine. Otherwise each
	// machine's endpoint gets a client of its own.
	ownEndpoints bool
	byEndpoint   map[string]*talosConn // "" when ownEndpoints
}

// retire hands every client to its last call in flight, which closes it; idle ones close now.
func (tc *talosClients) retire() error {
	var errs []error

	for _, conn := range tc.byEndpoint {
		errs = append(errs, conn.retire())
	}

	return errors.Join(errs...)
}

// talosConn is one Talos client and the number of calls in flight on it. Connector.Talos hands out the talosConn
// itself, so every call is counted, and a client that new credentials replaced is retired: the calls already on it
// finish there, and it closes when the last one returns.
type talosConn struct {
	api talos.API

	mu       sync.Mutex
	inFlight int
	retired  bool // replaced by new credentials: closes when inFlight drops to 0
	closed   bool
}

var _ talos.API = (*talosConn)(nil)

// acquire counts a call in, unless the client is closed already.
func (tc *talosConn) acquire() bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()

	if tc.closed {
		return false
	}

	tc.inFlight++

	return true
}

// release counts a call out and closes a retired client after its last call. It reports whether the client was
// closed while the call was in flight, which only the connector's Close does.
func (tc *talosConn) release() (cutOff bool) {
	tc.mu.Lock()
	tc.inFlight--
	cutOff = tc.closed
	closeNow := tc.retired && tc.inFlight == 0 && !tc.closed
	tc.closed = tc.closed || closeNow
	tc.mu.Unlock()

	if closeNow {
		tc.api.Close() //nolint:errcheck // nobody is left to tell: the client was replaced
	}

	return cutOff
}

// retire marks the client replaced; it closes now when no call is in flight, else when the last one returns.
func (tc *talosConn) retire() error {
	tc.mu.Lock()
	tc.retired = true
	closeNow := tc.inFlight == 0 && !tc.closed
	tc.closed = tc.closed || closeNow
	tc.mu.Unlock()

	if closeNow {
		return tc.api.Close()
	}

	return nil
}

// shut closes the client now, calls in flight or not: the connector closes with the engine.
func (tc *talosConn) shut() error {
	tc.mu.Lock()
	wasClosed := tc.closed
	tc.closed = true
	tc.mu.Unlock()

	if wasClosed {
		return nil
	}

	return tc.api.Close()
}

// talosCall makes one counted call on tc. A call that finds the client closed is not sent (ErrClientReplaced). A
// call that the connector's Close cut off may have reached the machine, so it is unreachable (its outcome unknown),
// never a failure the machine reported.
func talosCall[T any](tc *talosConn, node, op string, call func(talos.API) (T, error)) (out T, err error) {
	if !tc.acquire() {
		return out, fmt.Errorf("node %q: %s: %w", node, op, ErrClientReplaced)
	}

	defer func() {
		if tc.release() && err != nil {
			err = &talos.Error{Node: node, Op: op, Kind: talos.KindUnreachable, Err: fmt.Errorf("the engine closed its Talos client during the call: %w", err)}
		}
	}()

	return call(tc.api)
}

// talosDo is talosCall for the calls that return only an error.
func talosDo(tc *talosConn, node, op string, call func(talos.API) error) error {
	_, err := talosCall(tc, node, op, func(api talos.API) (struct{}, error) { return struct{}{}, call(api) })

	return err
}

// Version implements talos.Observer.
func (tc *talosConn) Version(ctx context.Context, node string) (string, error) {
	return talosCall(tc, node, "reading version", func(api talos.API) (string, error) { return api.Version(ctx, node) })
}

// MachineStatus implements talos.Observer.
func (tc *talosConn) MachineStatus(ctx context.Context, node string) (talos.MachineStatus, error) {
	return talosCall(tc, node, "observing", func(api talos.API) (talos.MachineStatus, error) { return api.MachineStatus(ctx, node) })
}

// PullImage implements talos.Installer.
func (tc *talosConn) PullImage(ctx context.Context, node, image string) (string, error) {
	return talosCall(tc, node, "pulling image", func(api talos.API) (string, error) { return api.PullImage(ctx, node, image) })
}

// Install implements talos.Installer.
func (tc *talosConn) Install(ctx context.Context, node, image string) error {
	return talosDo(tc, node, "installing Talos", func(api talos.API) error { return api.Install(ctx, node, image) })
}

// LegacyUpgrade implements talos.Installer.
func (tc *talosConn) LegacyUpgrade(ctx context.Context, node, image string) error {
	return talosDo(tc, node, "upgrading Talos", func(api talos.API) error { return api.LegacyUpgrade(ctx, node, image) })
}

// Reboot implements talos.Installer.
func (tc *talosConn) Reboot(ctx context.Context, node string) error {
	return talosDo(tc, node, "rebooting", func(api talos.API) error { return api.Reboot(ctx, node) })
}

// EtcdMembers implements talos.Etcd.
func (tc *talosConn) EtcdMembers(ctx context.Context, node string) ([]talos.EtcdMember, error) {
	return talosCall(tc, node, "listing etcd members", func(api talos.API) ([]talos.EtcdMember, error) { return api.EtcdMembers(ctx, node) })
}

// EtcdMemberStatus implements talos.Etcd.
func (tc *talosConn) EtcdMemberStatus(ctx context.Context, node string) (talos.EtcdMemberStatus, error) {
	return talosCall(tc, node, "reading etcd member status", func(api talos.API) (talos.EtcdMemberStatus, error) {
		return api.EtcdMemberStatus(ctx, node)
	})
}

// EtcdForfeitLeadership implements talos.Etcd.
func (tc *talosConn) EtcdForfeitLeadership(ctx context.Context, node string) error {
	return talosDo(tc, node, "forfeiting etcd leadership", func(api talos.API) error { return api.EtcdForfeitLeadership(ctx, node) })
}

// MachineConfig implements talos.Configurer.
func (tc *talosConn) MachineConfig(ctx context.Context, node string) ([]byte, error) {
	return talosCall(tc, node, "reading machine config", func(api talos.API) ([]byte, error) { return api.MachineConfig(ctx, node) })
}

// ApplyConfiguration implements talos.Configurer.
func (tc *talosConn) ApplyConfiguration(ctx context.Context, node string, cfg []byte, mode machineapi.ApplyConfigurationRequest_Mode, dryRun bool) (string, error) {
	return talosCall(tc, node, "applying config", func(api talos.API) (string, error) { return api.ApplyConfiguration(ctx, node, cfg, mode, dryRun) })
}

// KubernetesImages implements talos.Kubernetes.
func (tc *talosConn) KubernetesImages(ctx context.Context, node string) (map[string]string, error) {
	return talosCall(tc, node, "reading Kubernetes images", func(api talos.API) (map[string]string, error) { return api.KubernetesImages(ctx, node) })
}

// SetKubernetesImage implements talos.Kubernetes.
func (tc *talosConn) SetKubernetesImage(ctx context.Context, node, component, image string) (bool, error) {
	return talosCall(tc, node, "setting the "+component+" image", func(api talos.API) (bool, error) {
		return api.SetKubernetesImage(ctx, node, component, image)
	})
}

// PullKubernetesImage implements talos.Kubernetes.
func (tc *talosConn) PullKubernetesImage(ctx context.Context, node, image string, cri bool) error {
	return talosDo(tc, node, "pulling "+image, func(api talos.API) error { return api.PullKubernetesImage(ctx, node, image, cri) })
}

// StaticPod implements talos.Kubernetes.
func (tc *talosConn) StaticPod(ctx context.Context, node, component string) (string, string, error) {
	pod, err := talosCall(tc, node, "reading the "+component+" static pod", func(api talos.API) ([2]string, error) {
		image, version, err := api.StaticPod(ctx, node, component)

		return [2]string{image, version}, err
	})

	return pod[0], pod[1], err
}

// KubeProxyDaemonSet implements talos.Kubernetes.
func (tc *talosConn) KubeProxyDaemonSet(ctx context.Context, node string) ([]byte, error) {
	return talosCall(tc, node, "reading the kube-proxy manifest", func(api talos.API) ([]byte, error) { return api.KubeProxyDaemonSet(ctx, node) })
}

// KubernetesChecks implements talos.Kubernetes.
func (tc *talosConn) KubernetesChecks(ctx context.Context, kubeconfig []byte, from, to string, controlPlanes, workers []string) ([]talos.Finding, error) {
	return talosCall(tc, "", "running Kubernetes pre-checks", func(api talos.API) ([]talos.Finding, error) {
		return api.KubernetesChecks(ctx, kubeconfig, from, to, controlPlanes, workers)
	})
}

// Close does nothing: the connector owns its clients, and callers never close what they get.
func (tc *talosConn) Close() error { return nil }

var _ Connector = (*CredentialsConnector)(nil)

// NewCredentialsConnector returns a connector with no client yet; kubeOptions configure every Kubernetes client.
func NewCredentialsConnector(kubeOptions ...kube.Option) *CredentialsConnector {
	return &CredentialsConnector{
		kubeOptions: kubeOptions,
		dial:        func(ctx context.Context, opts ...talos.Option) (talos.API, error) { return talos.New(ctx, opts...) },
		talos:       map[string]*talosClients{},
		kube:        map[string]kubeClient{},
		manifests:   map[string]manifestsClient{},
	}
}

// Talos implements Connector. The talosconfig's endpoints are used; when its context names none, the machine
// endpoint of access is.
func (c *CredentialsConnector) Talos(ctx context.Context, access ClusterAccess) (talos.API, error) {
	talosconfig := access.Credentials.Talosconfig
	if talosconfig == "" {
		return nil, fmt.Errorf("cluster %q: no talosconfig in its credentials", access.Cluster)
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	tc, ok := c.talos[access.Cluster]
	if !ok || tc.talosconfig != talosconfig {
		cfg, err := clientconfig.FromString(talosconfig)
		if err != nil {
			// The parser's message may quote the text it chokes on, a secret here: it ends up in statuses and logs.
			return nil, fmt.Errorf("cluster %q: its talosconfig does not parse (apply the Credentials again to see the problem)", access.Cluster)
		}

		if ok {
			tc.retire() //nolint:errcheck // replaced by clients with the new credentials
		}

		named, found := cfg.Contexts[cfg.Context]
		tc = &talosClients{talosconfig: talosconfig, ownEndpoints: found && len(named.Endpoints) > 0, byEndpoint: map[string]*talosConn{}}
		c.talos[access.Cluster] = tc
	}

	endpoint := ""
	if !tc.ownEndpoints {
		endpoint = access.Endpoint
	}

	if conn, ok := tc.byEndpoint[endpoint]; ok {
		return conn, nil
	}

	opts := []talos.Option{talos.WithTalosconfig([]byte(talosconfig))}
	if endpoint != "" {
		opts = append(opts, talos.WithEndpoint(endpoint))
	}

	client, err := c.dial(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", access.Cluster, err)
	}

	conn := &talosConn{api: client}
	tc.byEndpoint[endpoint] = conn

	return conn, nil
}

// Kubernetes implements Connector; it wraps ErrNoKubernetes when the credentials hold no kubeconfig.
func (c *CredentialsConnector) Kubernetes(_ context.Context, access ClusterAccess) (kube.API, error) {
	kubeconfig := access.Credentials.Kubeconfig
	if kubeconfig == "" {
		return nil, fmt.Errorf("cluster %q: %w", access.Cluster, ErrNoKubernetes)
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	if cached, ok := c.kube[access.Cluster]; ok && cached.kubeconfig == kubeconfig {
		return cached.client, nil
	}

	client, err := kube.New([]byte(kubeconfig), c.kubeOptions...)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", access.Cluster, err)
	}

	c.kube[access.Cluster] = kubeClient{kubeconfig: kubeconfig, client: client}

	return client, nil
}

// Close closes every current Talos client at once, for the engine that stops; calls still in flight on them end
// unreachable. A replaced client still in use closes when its last call returns.
func (c *CredentialsConnector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()

	var errs []error

	for id, tc := range c.talos {
		for _, conn := range tc.byEndpoint {
			errs = append(errs, conn.shut())
		}

		delete(c.talos, id)
	}

	clear(c.kube)
	clear(c.manifests)

	return errors.Join(errs...)
}
