package kubeemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Mirror pod annotations, as a kubelet writes them for a static pod read from a file.
const (
	AnnotationConfigHash   = "kubernetes.io/config.hash"
	AnnotationConfigSource = "kubernetes.io/config.source"
	// AnnotationConfigMirror marks a mirror pod; drain and the API treat such pods specially.
	AnnotationConfigMirror = corev1.MirrorPodAnnotationKey
)

// staticPodNamespace is where static pods' mirror pods live.
const staticPodNamespace = metav1.NamespaceSystem

// staticPodPriorityClass is the priority class Talos gives its control-plane static pods.
const staticPodPriorityClass = "system-cluster-critical"

// syncMirrorPods makes the node's mirror pods match its static pods: missing ones are created, outdated ones
// (another image, labels or annotations) are replaced, and ones without a static pod are deleted. A down kubelet
// changes nothing.
func (k *Kubelet) syncMirrorPods(ctx context.Context, cfg NodeConfig, ready bool) error {
	if !ready {
		return nil
	}

	node, err := k.client.CoreV1().Nodes().Get(ctx, k.name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %q for its mirror pods: %w", k.name, err)
	}

	existing, err := k.pods.Pods(staticPodNamespace).List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing the mirror pods of node %q: %w", k.name, err)
	}

	current := map[string]*corev1.Pod{}

	for _, pod := range existing {
		if isMirrorPod(pod) {
			current[pod.Name] = pod
		}
	}

	var errs []error

	for _, static := range cfg.StaticPods {
		want := mirrorPod(node, static)
		have, ok := current[want.Name]
		delete(current, want.Name)

		if ok && have.DeletionTimestamp == nil &&
			have.Annotations[AnnotationConfigMirror] == want.Annotations[AnnotationConfigMirror] {
			continue
		}

		if ok {
			if err := k.deletePodNow(ctx, have); err != nil {
				errs = append(errs, err)

				continue
			}

			delete(k.starts, have.UID)
		}

		// AlreadyExists means the cache has not seen our own create yet; its event queues another sync.
		created, err := k.client.CoreV1().Pods(staticPodNamespace).Create(ctx, want, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue
		}

		if err != nil {
			errs = append(errs, fmt.Errorf("creating mirror pod %q: %w", want.Name, err))

			continue
		}

		k.starts[created.UID] = time.Now()

		k.logger.Info("mirror pod created", zap.String("pod", want.Name), zap.String("image", static.Image))
	}

	for _, stale := range current {
		errs = append(errs, k.deletePodNow(ctx, stale))
	}

	return errors.Join(errs...)
}

// isMirrorPod reports whether pod is a kubelet's mirror of a static pod.
func isMirrorPod(pod *corev1.Pod) bool {
	_, ok := pod.Annotations[AnnotationConfigMirror]

	return ok
}

// mirrorPod is the mirror pod of static on node: named "<static>-<node>", owned by the Node, labelled like Talos'
// control-plane pods, and annotated with a hash of its manifest so a change is detected.
func mirrorPod(node *corev1.Node, static StaticPod) *corev1.Pod {
	podLabels := map[string]string{
		"k8s-app":   static.Name,
		"component": static.Name,
		"tier":      "control-plane",
	}
	maps.Copy(podLabels, static.Labels)

	annotations := maps.Clone(static.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}

	hash := manifestHash(static.Image, podLabels, annotations)
	annotations[AnnotationConfigHash] = hash
	annotations[AnnotationConfigMirror] = hash
	annotations[AnnotationConfigSource] = "file"

	controller := true

	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        static.Name + "-" + node.Name,
			Namespace:   staticPodNamespace,
			Labels:      podLabels,
			Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID, Controller: &controller,
			}},
		},
		Spec: corev1.PodSpec{
			NodeName:          node.Name,
			HostNetwork:       true,
			PriorityClassName: staticPodPriorityClass,
			Containers:        []corev1.Container{{Name: static.Name, Image: static.Image}},
			Tolerations:       []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		},
	}
}

// manifestHash identifies a static pod manifest; fmt prints maps in key order, so equal manifests hash equally.
func manifestHash(image string, podLabels, annotations map[string]string) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\n%v\n%v", image, podLabels, annotations))

	return hex.EncodeToString(sum[:8])
}
