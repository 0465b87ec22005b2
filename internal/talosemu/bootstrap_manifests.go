package talosemu

import (
	"context"
	"fmt"
	"strings"

	"github.com/siderolabs/go-kubernetes/kubernetes/ssa"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// releaseComponents are the versions of the bootstrap components a Talos release renders when the machine config
// does not pin an image, like each real release's defaults: a Talos upgrade changes the rendered CoreDNS and CNI,
// and leaves the running cluster on the old ones until someone applies the manifests.
var releaseComponents = map[string]struct{ coreDNS, flannel string }{
	"1.11": {coreDNS: "v1.12.3", flannel: "v0.27.2"},
	"1.12": {coreDNS: "v1.12.4", flannel: "v0.27.4"},
	"1.13": {coreDNS: "v1.13.1", flannel: "v0.27.4"},
	"1.14": {coreDNS: constants.DefaultCoreDNSVersion, flannel: "v0.28.0"},
}

// flannelImage is the repository of the Flannel image Talos renders.
const flannelImage = "ghcr.io/siderolabs/flannel"

// bootstrapFieldManager is the field manager Talos applies its bootstrap manifests with.
const bootstrapFieldManager = "talos"

// bootstrapManifests renders the bootstrap manifests of a control plane running talosVersion: kube-proxy follows the
// Kubernetes version and the extra args of the machine config; CoreDNS and Flannel follow the release's defaults
// unless the config pins an image.
func bootstrapManifests(cfg config.Config, talosVersion string) []renderedManifest {
	minor := talosVersion
	if parts := strings.SplitN(talosVersion, ".", 3); len(parts) >= 2 {
		minor = parts[0] + "." + parts[1]
	}

	release := releaseComponents[minor]

	var out []renderedManifest

	if image, ok := componentImages(cfg)[componentKubeProxy]; ok {
		command := append([]string{"/usr/local/bin/kube-proxy"}, commandLine(componentDefaults[componentKubeProxy], componentExtraArgs(cfg, componentKubeProxy))...)
		out = append(out, renderedManifest{id: kubeProxyManifestID, objects: kubeProxyObjects(image, command)})
	}

	if c := cfg.K8sCoreDNSConfig(); c != nil && c.Enabled() {
		image := c.Image()
		if image == constants.CoreDNSImage+":"+constants.DefaultCoreDNSVersion && release.coreDNS != "" {
			image = constants.CoreDNSImage + ":" + release.coreDNS
		}

		out = append(out, renderedManifest{id: "11-core-dns", objects: coreDNSObjects(image)})
	}

	if cfg.K8sFlannelCNIConfig() != nil && release.flannel != "" {
		out = append(out, renderedManifest{id: "05-flannel", objects: flannelObjects(flannelImage + ":" + release.flannel)})
	}

	return out
}

func flannelObjects(image string) []map[string]any {
	labels := map[string]any{"app": "flannel", "k8s-app": "flannel", "tier": "node"}

	return []map[string]any{
		{
			"apiVersion": "v1",
			"kind":       "ServiceAccount",
			"metadata":   map[string]any{"name": "flannel", "namespace": "kube-system"},
		},
		{
			"apiVersion": "apps/v1",
			"kind":       "DaemonSet",
			"metadata":   map[string]any{"name": "kube-flannel", "namespace": "kube-system", "labels": labels},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "flannel"}},
				"template": map[string]any{
					"metadata": map[string]any{"labels": labels},
					"spec": map[string]any{
						"serviceAccountName": "flannel",
						"hostNetwork":        true,
						"tolerations":        []any{map[string]any{"operator": "Exists"}},
						"containers": []any{map[string]any{
							"name":    "kube-flannel",
							"image":   image,
							"command": []any{"/opt/bin/flanneld", "--ip-masq", "--kube-subnet-mgr"},
						}},
					},
				},
			},
		},
	}
}

// applyBootstrapManifests creates in the cluster's new Kubernetes API the bootstrap objects its first control plane
// renders, as Talos does at bootstrap, with Talos' field manager: with Talos' inventory on Talos >= 1.13; on older
// releases objects that exist are left as they are.
func (c *cluster) applyBootstrapManifests(ctx context.Context) error {
	var first *Node

	for _, n := range c.nodes {
		if n.controlPlane {
			first = n

			break
		}
	}

	if first == nil {
		return nil
	}

	first.mu.Lock()
	manifests, version := first.rendered.manifests, first.running
	first.mu.Unlock()

	restConfig, err := clientcmd.RESTConfigFromKubeConfig(c.kubeconfig)
	if clientcmd.IsEmptyConfig(err) {
		return nil // a control plane that serves no API (a double recording kubelets) has nothing to create
	}

	if err != nil {
		return fmt.Errorf("reading kubeconfig of cluster %q: %w", c.name, err)
	}

	if servesLifecycleAPI(version) {
		return applyWithInventory(ctx, restConfig, manifests)
	}

	dc, err := discovery.NewDiscoveryClientForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("discovery client of cluster %q: %w", c.name, err)
	}

	client, err := dynamic.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("dynamic client of cluster %q: %w", c.name, err)
	}

	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	for _, m := range manifests {
		for _, o := range m.objects {
			if err := createIfMissing(ctx, mapper, client, &unstructured.Unstructured{Object: o}); err != nil {
				return fmt.Errorf("bootstrap manifest %s of cluster %q: %w", m.id, c.name, err)
			}
		}
	}

	return nil
}

// applyWithInventory applies the manifests as Talos >= 1.13 does: server-side apply under Talos' field manager,
// recorded in Talos' inventory.
func applyWithInventory(ctx context.Context, restConfig *rest.Config, manifests []renderedManifest) error {
	manager, err := ssa.NewManager(ctx, restConfig, bootstrapFieldManager, "kube-system", "talos-bootstrap-manifests-inventory")
	if err != nil {
		return fmt.Errorf("server-side apply manager: %w", err)
	}

	defer manager.Close()

	var objects []*unstructured.Unstructured

	for _, m := range manifests {
		for _, o := range m.objects {
			objects = append(objects, (&unstructured.Unstructured{Object: o}).DeepCopy())
		}
	}

	if _, err = manager.Apply(ctx, objects, ssa.ApplyOptions{InventoryPolicy: ssa.InventoryPolicyAdoptIfNoInventory, NoPrune: true}); err != nil {
		return fmt.Errorf("applying the bootstrap manifests: %w", err)
	}

	return nil
}

// createIfMissing server-side applies obj as Talos' field manager unless it exists already.
func createIfMissing(ctx context.Context, mapper meta.RESTMapper, client dynamic.Interface, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()

	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("mapping %s: %w", gvk, err)
	}

	resource := client.Resource(mapping.Resource).Namespace(obj.GetNamespace())

	if _, err = resource.Get(ctx, obj.GetName(), metav1.GetOptions{}); err == nil || !apierrors.IsNotFound(err) {
		return err
	}

	data, err := obj.MarshalJSON()
	if err != nil {
		return fmt.Errorf("encoding %s %s: %w", gvk.Kind, obj.GetName(), err)
	}

	force := true

	_, err = resource.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: bootstrapFieldManager, Force: &force})

	return err
}
