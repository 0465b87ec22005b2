package controllers

import (
	"context"
	"fmt"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/talos"
)

// ManifestConnector reaches what bootstrap-manifest sync needs of a cluster: the manifests a control plane renders
// (Talos) and the live objects (Kubernetes). CredentialsConnector implements it; controller tests give doubles.
type ManifestConnector interface {
	BootstrapManifests(ctx context.Context, access ClusterAccess, node string) ([]kube.Object, error)
	BootstrapObjects(ctx context.Context, access ClusterAccess) (kube.BootstrapObjects, error)
}

var _ ManifestConnector = (*CredentialsConnector)(nil)

// BootstrapManifests implements ManifestConnector through the cluster's Talos client.
func (c *CredentialsConnector) BootstrapManifests(ctx context.Context, access ClusterAccess, node string) ([]kube.Object, error) {
	api, err := c.Talos(ctx, access)
	if err != nil {
		return nil, err
	}

	tc, ok := api.(*talosConn)
	if !ok {
		return nil, fmt.Errorf("cluster %q: the Talos client does not read manifests", access.Cluster)
	}

	return talosCall(tc, node, "reading bootstrap manifests", func(api talos.API) ([]kube.Object, error) {
		reader, ok := api.(talos.ManifestReader)
		if !ok {
			return nil, fmt.Errorf("the Talos client does not read manifests")
		}

		return reader.BootstrapManifests(ctx, node)
	})
}

// BootstrapObjects implements ManifestConnector; like Kubernetes, it keeps one client per cluster and kubeconfig.
func (c *CredentialsConnector) BootstrapObjects(ctx context.Context, access ClusterAccess) (kube.BootstrapObjects, error) {
	kubeconfig := access.Credentials.Kubeconfig
	if kubeconfig == "" {
		return nil, fmt.Errorf("cluster %q: %w", access.Cluster, ErrNoKubernetes)
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	if cached, ok := c.manifests[access.Cluster]; ok && cached.kubeconfig == kubeconfig {
		return cached.client, nil
	}

	client, err := kube.NewManifests(ctx, []byte(kubeconfig))
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", access.Cluster, err)
	}

	c.manifests[access.Cluster] = manifestsClient{kubeconfig: kubeconfig, client: client}

	return client, nil
}

// manifestsClient is the bootstrap-objects client of one cluster and the kubeconfig it was made from.
type manifestsClient struct {
	kubeconfig string
	client     *kube.Manifests
}
