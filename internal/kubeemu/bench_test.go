package kubeemu_test

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/upshift-io/upshift/internal/kubeemu"
)

// podsPerOp is how many pods one benchmark iteration creates on each side, to average out single outliers.
const podsPerOp = 10

// BenchmarkKubeletPodReady measures how long a pod bound to an emulated node takes to be reported Running and Ready,
// against a baseline measured in the same run: a pod bound to a node no kubelet serves, observed when the apiserver's
// watch delivers it. The ratio is the cost of the kubelet emulation over a bare apiserver round trip.
func BenchmarkKubeletPodReady(b *testing.B) {
	node := kubeemu.NodeConfig{Name: "bench-1", KubeletVersion: "v1.37.2", InternalIP: "10.5.0.9"}
	c := startCluster(b, node)
	ctx := b.Context()

	if _, err := c.client.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}

	var baseline, ready time.Duration

	for i := 0; b.Loop(); i++ {
		for j := range podsPerOp {
			baseline += timePod(b, c, fmt.Sprintf("ghost-%d-%d", i, j), "no-kubelet", func(*corev1.Pod) bool { return true })
			ready += timePod(b, c, fmt.Sprintf("real-%d-%d", i, j), node.Name, func(pod *corev1.Pod) bool {
				return pod.Status.Phase == corev1.PodRunning && podReady(pod)
			})
		}
	}

	pods := float64(b.N * podsPerOp)
	b.ReportMetric(float64(baseline.Microseconds())/1000/pods, "baseline-ms/pod")
	b.ReportMetric(float64(ready.Microseconds())/1000/pods, "ready-ms/pod")
	b.ReportMetric(float64(ready)/float64(baseline), "ready/baseline")
}

// timePod creates a pod bound to nodeName and returns how long until a watch shows it satisfying done.
func timePod(b *testing.B, c *testCluster, name, nodeName string, done func(*corev1.Pod) bool) time.Duration {
	b.Helper()

	ctx := b.Context()
	pods := c.client.CoreV1().Pods(testNamespace)

	w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		b.Fatal(err)
	}

	defer w.Stop()

	started := time.Now()

	if _, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:   nodeName,
			Containers: []corev1.Container{{Name: "main", Image: "registry.example/bench:1"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}

	timeout := time.After(waitTimeout)

	for {
		select {
		case event, ok := <-w.ResultChan():
			if !ok {
				b.Fatalf("watch of pod %s closed", name)
			}

			if pod, isPod := event.Object.(*corev1.Pod); isPod && event.Type != watch.Deleted && done(pod) {
				return time.Since(started)
			}
		case <-timeout:
			b.Fatalf("pod %s not done within %s", name, waitTimeout)
		}
	}
}
