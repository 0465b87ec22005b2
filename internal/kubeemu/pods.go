package kubeemu

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// podKey is the work queue key of a pod, "namespace/name".
func podKey(pod *corev1.Pod) string {
	return pod.Namespace + "/" + pod.Name
}

// syncPod brings one pod of the node to where a kubelet would: a terminating pod is removed once its grace period
// has passed since the kubelet saw it terminating, and a live pod is reported Running, Ready while the node is.
// Finished pods are left alone.
func (k *Kubelet) syncPod(ctx context.Context, key string, cfg NodeConfig, nodeReady bool) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return fmt.Errorf("bad pod key %q: %w", key, err)
	}

	pod, err := k.pods.Pods(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		delete(k.terminations, key)

		return nil
	}

	if err != nil {
		return fmt.Errorf("reading pod %s: %w", key, err)
	}

	if pod.DeletionTimestamp != nil {
		if !nodeReady {
			return nil // a down kubelet kills nothing; SetReady(true) re-queues the pod
		}

		return k.finishTermination(ctx, key, pod)
	}

	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}

	starting, wait := k.starting(pod, cfg.StaticPodRestart)
	if wait > 0 {
		k.queue.AddAfter(key, wait)
	}

	status := runningPodStatus(pod, cfg.InternalIP, nodeReady && !starting, time.Now())
	if apiequality.Semantic.DeepEqual(pod.Status, status) {
		return nil
	}

	updated := pod.DeepCopy()
	updated.Status = status

	if _, err := k.client.CoreV1().Pods(namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}

		return fmt.Errorf("reporting the status of pod %s: %w", key, err)
	}

	return nil
}

// starting reports whether a mirror pod this kubelet created is still starting (reported not Ready) and how much
// longer it starts. Such a pod is first reported not Ready even when its start time has already passed, as a
// kubelet reports a new pod's containers starting before they are ready; the status update queues it again.
func (k *Kubelet) starting(pod *corev1.Pod, restart time.Duration) (bool, time.Duration) {
	started, ok := k.starts[pod.UID]
	if !ok {
		return false, 0
	}

	if wait := time.Until(started.Add(restart)); wait > 0 {
		return true, wait
	}

	if pod.Status.Phase == "" {
		return true, 0
	}

	delete(k.starts, pod.UID)

	return false, 0
}

// finishTermination deletes a terminating pod for good (grace 0) once its own grace period has run from the moment
// the kubelet first saw it terminating, as a kubelet does after stopping the containers; until then it re-queues the
// pod for that moment.
func (k *Kubelet) finishTermination(ctx context.Context, key string, pod *corev1.Pod) error {
	seen, ok := k.terminations[key]
	if !ok || seen.uid != string(pod.UID) {
		seen = termination{uid: string(pod.UID), seen: time.Now()}
		k.terminations[key] = seen
	}

	var grace time.Duration
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}

	if exit, ok := exitsAfterSIGTERM(pod); ok {
		grace = min(grace, exit)
	}

	if wait := time.Until(seen.seen.Add(grace)); wait > 0 {
		k.queue.AddAfter(key, wait)

		return nil
	}

	if err := k.deletePodNow(ctx, pod); err != nil {
		return err
	}

	k.logger.Debug("pod terminated", zap.String("pod", key), zap.Duration("grace", grace))

	return nil
}

// coreDNSLameduck is how long CoreDNS keeps serving after SIGTERM before it exits: the lameduck of the health plugin
// in the Corefile Talos renders.
const coreDNSLameduck = 5 * time.Second

// exitsAfterSIGTERM says how long the processes of a pod the emulator knows take to exit on SIGTERM, which ends the
// pod before its grace period does, as a real kubelet ends it when its containers exit: node agents run by a
// DaemonSet (kube-proxy, the CNI) exit at once, so a DaemonSet rollout takes as long as on a real node; CoreDNS
// (the bootstrap Deployment, k8s-app=kube-dns) after its lameduck, so a drain that evicts it does not wait a full
// grace period (30 s by default). Other pods are held for their grace period.
func exitsAfterSIGTERM(pod *corev1.Pod) (time.Duration, bool) {
	switch {
	case ownedByDaemonSet(pod):
		return 0, true
	case pod.Namespace == metav1.NamespaceSystem && pod.Labels["k8s-app"] == "kube-dns":
		return coreDNSLameduck, true
	}

	return 0, false
}

// ownedByDaemonSet reports whether a DaemonSet runs the pod.
func ownedByDaemonSet(pod *corev1.Pod) bool {
	owner := metav1.GetControllerOf(pod)

	return owner != nil && owner.Kind == "DaemonSet"
}

// deletePodNow removes pod at once (grace 0) if it is still the same object, as a kubelet does once the pod's
// containers are gone. A pod already gone or replaced is not an error.
func (k *Kubelet) deletePodNow(ctx context.Context, pod *corev1.Pod) error {
	grace := int64(0)

	err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &grace,
		Preconditions:      metav1.NewUIDPreconditions(string(pod.UID)),
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting pod %s: %w", podKey(pod), err)
	}

	return nil
}

// runningPodStatus is the status a kubelet reports for a running pod: phase Running, containers running, and Ready
// as the node is. Times already set are kept, so a settled pod's status does not change.
func runningPodStatus(pod *corev1.Pod, hostIP string, ready bool, now time.Time) corev1.PodStatus {
	status := *pod.Status.DeepCopy()
	stamp := metav1.NewTime(now)

	status.Phase = corev1.PodRunning
	if status.StartTime == nil {
		status.StartTime = &stamp
	}

	if hostIP != "" {
		status.HostIP = hostIP
		status.HostIPs = []corev1.HostIP{{IP: hostIP}}

		if pod.Spec.HostNetwork {
			status.PodIP = hostIP
			status.PodIPs = []corev1.PodIP{{IP: hostIP}}
		}
	}

	readyStatus := corev1.ConditionFalse
	if ready {
		readyStatus = corev1.ConditionTrue
	}

	for _, condition := range []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue},
		{Type: corev1.ContainersReady, Status: readyStatus},
		{Type: corev1.PodReady, Status: readyStatus},
	} {
		condition.LastTransitionTime = stamp
		status.Conditions = setCondition(status.Conditions, condition, podConditionFields)
	}

	previous := map[string]corev1.ContainerStatus{}
	for _, cs := range pod.Status.ContainerStatuses {
		previous[cs.Name] = cs
	}

	status.ContainerStatuses = make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))

	for _, container := range pod.Spec.Containers {
		startedAt := stamp
		if prev, ok := previous[container.Name]; ok && prev.State.Running != nil && prev.Image == container.Image {
			startedAt = prev.State.Running.StartedAt
		}

		started := true

		status.ContainerStatuses = append(status.ContainerStatuses, corev1.ContainerStatus{
			Name:    container.Name,
			Image:   container.Image,
			ImageID: container.Image,
			Ready:   ready,
			Started: &started,
			State:   corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}},
		})
	}

	return status
}
