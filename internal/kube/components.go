package kube

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/siderolabs/go-kubernetes/kubernetes/ssa"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
)

// ConfigVersionAnnotation is the annotation Talos sets on a static pod (and the kubelet copies to its mirror pod):
// the version of the configuration the pod was rendered from.
const ConfigVersionAnnotation = "talos.dev/config-version"

// MirrorPod is what the engine observes of a control-plane component's mirror pod on one node.
type MirrorPod struct {
	Image         string
	ConfigVersion string
	Ready         bool
}

// Rollout is what the engine observes of a DaemonSet's rollout.
type Rollout struct {
	Image                       string
	Desired, Updated, Available int32
	// Observed is true once the DaemonSet controller has seen the current generation.
	Observed bool
}

// Complete reports whether every desired pod runs the current template and is available.
func (r Rollout) Complete() bool {
	return r.Observed && r.Updated == r.Desired && r.Available == r.Desired
}

// Components is what a Kubernetes upgrade reads and writes in the cluster: mirror pods, the kube-proxy DaemonSet and
// the nodes. It never deletes anything.
type Components interface {
	// MirrorPod returns the mirror pod of component (its k8s-app label) on node.
	MirrorPod(ctx context.Context, node, component string) (MirrorPod, error)
	// ApplyDaemonSet server-side applies one DaemonSet given as JSON.
	ApplyDaemonSet(ctx context.Context, object []byte) error
	// DaemonSetRollout returns the rollout of a DaemonSet.
	DaemonSetRollout(ctx context.Context, namespace, name string) (Rollout, error)
}

// API is everything the engine does with one cluster's Kubernetes API.
type API interface {
	Nodes
	Components
}

var _ API = (*Client)(nil)

// MirrorPod implements Components.
func (c *Client) MirrorPod(ctx context.Context, node, component string) (MirrorPod, error) {
	pods, err := c.cs.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		LabelSelector: "k8s-app=" + component,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return MirrorPod{}, fmt.Errorf("listing %s pods of node %q: %w", component, node, err)
	}

	if len(pods.Items) == 0 {
		return MirrorPod{}, fmt.Errorf("node %q has no %s pod", node, component)
	}

	pod := pods.Items[0]
	out := MirrorPod{ConfigVersion: pod.Annotations[ConfigVersionAnnotation]}

	if len(pod.Spec.Containers) > 0 {
		out.Image = pod.Spec.Containers[0].Image
	}

	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady {
			out.Ready = cond.Status == corev1.ConditionTrue
		}
	}

	return out, nil
}

// ApplyDaemonSet implements Components. The object keeps the live DaemonSet's owning-inventory annotation: applied
// under Talos' field manager without it, server-side apply would remove the annotation Talos' own sync set, and the
// bootstrap manifests would be out of sync (and the object outside the inventory) after every Kubernetes upgrade.
func (c *Client) ApplyDaemonSet(ctx context.Context, object []byte) error {
	var ds map[string]any

	if err := json.Unmarshal(object, &ds); err != nil {
		return fmt.Errorf("reading the DaemonSet to apply: %w", err)
	}

	namespace, _, _ := unstructured.NestedString(ds, "metadata", "namespace")
	name, _, _ := unstructured.NestedString(ds, "metadata", "name")

	live, err := c.cs.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})

	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("reading DaemonSet %s/%s: %w", namespace, name, err)
	default:
		if inventory, ok := live.Annotations[ssa.InventoryAnnotationKey]; ok {
			if err = unstructured.SetNestedField(ds, inventory, "metadata", "annotations", ssa.InventoryAnnotationKey); err != nil {
				return fmt.Errorf("keeping the inventory of DaemonSet %s/%s: %w", namespace, name, err)
			}
		}
	}

	if object, err = json.Marshal(ds); err != nil {
		return fmt.Errorf("encoding DaemonSet %s/%s: %w", namespace, name, err)
	}

	force := true

	if _, err := c.cs.AppsV1().DaemonSets(namespace).Patch(ctx, name, types.ApplyPatchType, object,
		metav1.PatchOptions{FieldManager: FieldManager, Force: &force}); err != nil {
		return fmt.Errorf("applying DaemonSet %s/%s: %w", namespace, name, err)
	}

	return nil
}

// DaemonSetRollout implements Components.
func (c *Client) DaemonSetRollout(ctx context.Context, namespace, name string) (Rollout, error) {
	ds, err := c.cs.AppsV1().DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Rollout{}, fmt.Errorf("reading DaemonSet %s/%s: %w", namespace, name, err)
	}

	out := Rollout{
		Desired: ds.Status.DesiredNumberScheduled, Updated: ds.Status.UpdatedNumberScheduled, Available: ds.Status.NumberAvailable,
		Observed: ds.Status.ObservedGeneration >= ds.Generation,
	}

	if len(ds.Spec.Template.Spec.Containers) > 0 {
		out.Image = ds.Spec.Template.Spec.Containers[0].Image
	}

	return out, nil
}
