package talos

import (
	"context"

	"github.com/siderolabs/go-kubernetes/kubernetes/manifests"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// ManifestReader reads the bootstrap manifests a control plane renders from its machine config (kube-proxy,
// CoreDNS, the CNI, ...), Talos' Manifest resources.
type ManifestReader interface {
	BootstrapManifests(ctx context.Context, node string) ([]*unstructured.Unstructured, error)
}

var _ ManifestReader = (*Client)(nil)

// BootstrapManifests implements ManifestReader, in the order Talos applies them (by manifest ID).
func (c *Client) BootstrapManifests(ctx context.Context, node string) ([]*unstructured.Unstructured, error) {
	objs, err := manifests.GetBootstrapManifests(client.WithNode(ctx, node), c.c.COSI, nil)

	return objs, wrap(node, "reading bootstrap manifests", err)
}
