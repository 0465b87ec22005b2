package kubeemu

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A settled pod must produce no further status writes, or every kubelet would update its pods forever.
func TestRunningPodStatusSettles(t *testing.T) {
	pod := &corev1.Pod{
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "img:1"}, {Name: "b", Image: "img:2"}}},
		Status: corev1.PodStatus{
			Phase:    corev1.PodPending,
			QOSClass: corev1.PodQOSBestEffort,
		},
	}

	start := time.Now()
	first := runningPodStatus(pod, "10.0.0.1", true, start)

	if first.Phase != corev1.PodRunning || first.HostIP != "10.0.0.1" || first.QOSClass != corev1.PodQOSBestEffort {
		t.Fatalf("status = %+v", first)
	}

	if len(first.ContainerStatuses) != 2 || !first.ContainerStatuses[1].Ready || first.ContainerStatuses[1].Image != "img:2" {
		t.Fatalf("container statuses = %+v", first.ContainerStatuses)
	}

	pod.Status = first
	second := runningPodStatus(pod, "10.0.0.1", true, start.Add(time.Minute))

	if !apiequality.Semantic.DeepEqual(first, second) {
		t.Fatalf("a settled status changed:\n%+v\n%+v", first, second)
	}

	pod.Status = second
	notReady := runningPodStatus(pod, "10.0.0.1", false, start.Add(2*time.Minute))

	for _, condition := range notReady.Conditions {
		switch condition.Type {
		case corev1.PodReady, corev1.ContainersReady:
			if condition.Status != corev1.ConditionFalse || !condition.LastTransitionTime.Time.Equal(start.Add(2*time.Minute)) {
				t.Errorf("condition %s = %+v, want False since the node went down", condition.Type, condition)
			}
		default:
			if !condition.LastTransitionTime.Time.Equal(start) {
				t.Errorf("condition %s moved its transition time: %+v", condition.Type, condition)
			}
		}
	}

	if notReady.ContainerStatuses[0].Ready {
		t.Error("a container is ready on a down node")
	}
}

// Heartbeats alone are not a change; readiness and versions are.
func TestNodeStatusChanges(t *testing.T) {
	cfg := NodeConfig{Name: "n1", KubeletVersion: "v1.37.2", InternalIP: "10.0.0.1"}
	start := time.Now()

	up := nodeStatus(corev1.NodeStatus{}, cfg, true, start)
	if !nodeStatusChanged(corev1.NodeStatus{}, up) {
		t.Fatal("registering status is not a change")
	}

	if again := nodeStatus(up, cfg, true, start.Add(time.Minute)); nodeStatusChanged(up, again) {
		t.Fatal("a heartbeat counts as a change")
	}

	down := nodeStatus(up, cfg, false, start.Add(time.Minute))
	if !nodeStatusChanged(up, down) {
		t.Fatal("going not ready is not a change")
	}

	if down.NodeInfo.KubeletVersion != "v1.37.2" || down.Conditions[0].Status != corev1.ConditionFalse {
		t.Fatalf("down status = %+v", down)
	}

	cfg.KubeletVersion = "v1.37.3"
	if upgraded := nodeStatus(up, cfg, true, start.Add(time.Minute)); !nodeStatusChanged(up, upgraded) {
		t.Fatal("a new kubelet version is not a change")
	}
}

// The mirror pod of a static pod changes its hash exactly when the manifest changes.
func TestMirrorPodHash(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp-1", UID: "uid-1"}}
	static := StaticPod{Name: "kube-apiserver", Image: "registry.k8s.io/kube-apiserver:v1.37.2",
		Annotations: map[string]string{"talos.dev/config-version": "1"}}

	pod := mirrorPod(node, static)
	if pod.Name != "kube-apiserver-cp-1" || pod.Spec.NodeName != "cp-1" || pod.OwnerReferences[0].UID != "uid-1" {
		t.Fatalf("mirror pod = %+v", pod.ObjectMeta)
	}

	hash := pod.Annotations[AnnotationConfigMirror]
	if hash == "" || mirrorPod(node, static).Annotations[AnnotationConfigMirror] != hash {
		t.Fatal("the mirror hash is not stable")
	}

	if static.Annotations[AnnotationConfigMirror] != "" {
		t.Fatal("mirrorPod wrote into the caller's annotations")
	}

	static.Image = "registry.k8s.io/kube-apiserver:v1.37.3"
	if mirrorPod(node, static).Annotations[AnnotationConfigMirror] == hash {
		t.Fatal("a new image keeps the hash")
	}
}
