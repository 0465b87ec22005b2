package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
)

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
	Kubernetes(ctx context.Context, access ClusterAccess) (kube.Nodes, error)
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
// credentials change, so a reconcile never pays for a new connection (Omni opens one per reconcile).
type CredentialsConnector struct {
	kubeOptions []kube.Option

	mu    sync.Mutex
	talos map[string]*talosClients
	kube  map[string]kubeClient
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
	byEndpoint   map[string]*talos.Client // "" when ownEndpoints
}

func (tc *talosClients) close() error {
	var errs []error

	for _, client := range tc.byEndpoint {
		errs = append(errs, client.Close())
	}

	return errors.Join(errs...)
}

var _ Connector = (*CredentialsConnector)(nil)

// NewCredentialsConnector returns a connector with no client yet; kubeOptions configure every Kubernetes client.
func NewCredentialsConnector(kubeOptions ...kube.Option) *CredentialsConnector {
	return &CredentialsConnector{
		kubeOptions: kubeOptions,
		talos:       map[string]*talosClients{},
		kube:        map[string]kubeClient{},
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
			return nil, fmt.Errorf("cluster %q: reading talosconfig: %w", access.Cluster, err)
		}

		if ok {
			tc.close() //nolint:errcheck // replaced by clients with the new credentials
		}

		named, found := cfg.Contexts[cfg.Context]
		tc = &talosClients{talosconfig: talosconfig, ownEndpoints: found && len(named.Endpoints) > 0, byEndpoint: map[string]*talos.Client{}}
		c.talos[access.Cluster] = tc
	}

	endpoint := ""
	if !tc.ownEndpoints {
		endpoint = access.Endpoint
	}

	if client, ok := tc.byEndpoint[endpoint]; ok {
		return client, nil
	}

	opts := []talos.Option{talos.WithTalosconfig([]byte(talosconfig))}
	if endpoint != "" {
		opts = append(opts, talos.WithEndpoint(endpoint))
	}

	client, err := talos.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", access.Cluster, err)
	}

	tc.byEndpoint[endpoint] = client

	return client, nil
}

// Kubernetes implements Connector; it wraps ErrNoKubernetes when the credentials hold no kubeconfig.
func (c *CredentialsConnector) Kubernetes(_ context.Context, access ClusterAccess) (kube.Nodes, error) {
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

// Close closes every Talos client.
func (c *CredentialsConnector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()

	var errs []error

	for id, tc := range c.talos {
		errs = append(errs, tc.close())
		delete(c.talos, id)
	}

	clear(c.kube)

	return errors.Join(errs...)
}
