package kubeemu

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// manifestFieldManager is the field manager of the bootstrap manifests, the one Talos applies them with.
const manifestFieldManager = "talos"

// ApplyManifests server-side applies objects (bootstrap manifests rendered by the emulated Talos nodes, such as the
// kube-proxy DaemonSet), as the bootstrap node of a Talos cluster applies its manifests when the cluster starts.
// It talks to the API server directly, not through the endpoint.
func (cp *ControlPlane) ApplyManifests(ctx context.Context, objects []map[string]any) error {
	cfg := cp.RESTConfig()

	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating a client for the manifests: %w", err)
	}

	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating a discovery client for the manifests: %w", err)
	}

	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco))

	for _, object := range objects {
		u := &unstructured.Unstructured{Object: object}
		gvk := u.GroupVersionKind()

		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("mapping %s: %w", gvk, err)
		}

		data, err := json.Marshal(object)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", gvk.Kind, u.GetName(), err)
		}

		force := true

		if _, err = client.Resource(mapping.Resource).Namespace(u.GetNamespace()).Patch(ctx, u.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: manifestFieldManager, Force: &force}); err != nil {
			return fmt.Errorf("applying %s %s/%s: %w", gvk.Kind, u.GetNamespace(), u.GetName(), err)
		}
	}

	return nil
}
