package kube_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/upshift-io/upshift/internal/kube"
)

// cluster is a fake clientset with what the fake lacks for a drain: the eviction subresource in discovery, pod
// lists filtered by node, and evictions that delete the pod unless a "budget" refuses them (HTTP 429, like a
// PodDisruptionBudget with no disruptions allowed).
type cluster struct {
	*fake.Clientset

	mu        sync.Mutex
	evictions []eviction
	refuse    map[string]int // pod name -> evictions still to refuse (-1: always)
}

type eviction struct {
	pod         string
	at          time.Time
	gracePeriod *int64
}

func newCluster(t *testing.T, objects ...runtime.Object) *cluster {
	t.Helper()

	c := &cluster{Clientset: fake.NewClientset(objects...), refuse: map[string]int{}}

	c.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{
		GroupVersion: "v1",
		APIResources: []metav1.APIResource{
			{Name: "pods", Kind: "Pod", Namespaced: true},
			{Name: "pods/eviction", Kind: "Eviction", Group: "policy", Version: "v1", Namespaced: true},
		},
	}}

	podsGVR := schema.GroupVersionResource{Version: "v1", Resource: "pods"}

	c.PrependReactor("list", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		list := action.(k8stesting.ListAction)

		obj, err := c.Tracker().List(podsGVR, schema.GroupVersionKind{Version: "v1", Kind: "Pod"}, list.GetNamespace())
		if err != nil {
			return true, nil, err
		}

		pods := obj.(*corev1.PodList)
		sel := list.GetListRestrictions().Fields
		pods.Items = slices.DeleteFunc(pods.Items, func(p corev1.Pod) bool {
			return !sel.Matches(fields.Set{"spec.nodeName": p.Spec.NodeName})
		})

		return true, pods, nil
	})

	c.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "eviction" {
			return false, nil, nil
		}

		ev := action.(k8stesting.CreateAction).GetObject().(*policyv1.Eviction)

		c.mu.Lock()
		c.evictions = append(c.evictions, eviction{pod: ev.Name, at: time.Now(), gracePeriod: ev.DeleteOptions.GracePeriodSeconds})

		left := c.refuse[ev.Name]
		if left > 0 {
			c.refuse[ev.Name] = left - 1
		}
		c.mu.Unlock()

		if left != 0 {
			return true, nil, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
		}

		return true, nil, c.Tracker().Delete(podsGVR, ev.Namespace, ev.Name)
	})

	return c
}

func (c *cluster) evicted() []eviction {
	c.mu.Lock()
	defer c.mu.Unlock()

	return slices.Clone(c.evictions)
}

func (c *cluster) podNames(t *testing.T) []string {
	t.Helper()

	pods, err := c.CoreV1().Pods("").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}

	var names []string
	for _, p := range pods.Items {
		names = append(names, p.Name)
	}

	slices.Sort(names)

	return names
}

func node(name string, ready, cordoned bool) *corev1.Node {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}

	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{Unschedulable: cordoned},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse}, {Type: corev1.NodeReady, Status: status}},
			NodeInfo:   corev1.NodeSystemInfo{KubeletVersion: "v1.35.0"},
		},
	}
}

func pod(name, nodeName string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	grace := int64(45)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "default",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "rs-uid", Controller: ptr(true)}},
		},
		Spec: corev1.PodSpec{NodeName: nodeName, TerminationGracePeriodSeconds: &grace},
	}

	for _, m := range mutate {
		m(p)
	}

	return p
}

func ptr[T any](v T) *T { return &v }

func ownedByDaemonSet(p *corev1.Pod) {
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "ds", UID: "ds-uid", Controller: ptr(true)}}
}

func mirror(p *corev1.Pod) {
	p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "hash"}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: p.Spec.NodeName, UID: "node-uid", Controller: ptr(true)}}
}

func TestNodeCordonUncordon(t *testing.T) {
	cs := newCluster(t, node("n1", true, false), node("n2", false, true))
	c := kube.NewForClientset(cs)
	ctx := t.Context()

	n, err := c.Node(ctx, "n1")
	if err != nil || n != (kube.Node{Name: "n1", Ready: true, KubeletVersion: "v1.35.0"}) {
		t.Fatalf("Node(n1) = %+v, %v", n, err)
	}

	if n, _ := c.Node(ctx, "n2"); n.Ready || !n.Cordoned {
		t.Errorf("Node(n2) = %+v", n)
	}

	if _, err := c.Node(ctx, "missing"); !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), `reading node "missing"`) {
		t.Errorf("Node(missing) = %v", err)
	}

	for range 2 { // idempotent
		if err := c.Cordon(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
	}

	if n, _ := c.Node(ctx, "n1"); !n.Cordoned {
		t.Error("n1 not cordoned")
	}

	if err := c.Uncordon(ctx, "n1"); err != nil {
		t.Fatal(err)
	}

	if n, _ := c.Node(ctx, "n1"); n.Cordoned {
		t.Error("n1 still cordoned")
	}

	if err := c.Uncordon(ctx, "missing"); err != nil {
		t.Errorf("Uncordon(missing) = %v", err)
	}

	if err := c.Cordon(ctx, "missing"); !apierrors.IsNotFound(err) {
		t.Errorf("Cordon(missing) = %v", err)
	}
}

func TestDrainEvictsWithOwnGracePeriodAndLeavesDaemonSetAndMirrorPods(t *testing.T) {
	cs := newCluster(t,
		node("n1", true, true), node("n2", true, false),
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ds", Namespace: "default", UID: "ds-uid"}},
		pod("app-1", "n1"), pod("app-2", "n1"), pod("bare", "n1", func(p *corev1.Pod) { p.OwnerReferences = nil }),
		pod("ds-pod", "n1", ownedByDaemonSet), pod("kube-apiserver-n1", "n1", mirror),
		pod("other-node", "n2"),
	)

	var (
		mu       sync.Mutex
		progress []string
	)

	c := kube.NewForClientset(cs, kube.WithEvictionRetryDelay(10*time.Millisecond), kube.WithProgress(func(node, msg string) {
		mu.Lock()
		defer mu.Unlock()

		progress = append(progress, node+": "+msg)
	}))

	if err := c.Drain(t.Context(), "n1", 10*time.Second); err != nil {
		t.Fatal(err)
	}

	if got := cs.podNames(t); strings.Join(got, " ") != "ds-pod kube-apiserver-n1 other-node" {
		t.Errorf("pods left = %v", got)
	}

	var evicted []string

	for _, e := range cs.evicted() {
		evicted = append(evicted, e.pod)

		if e.gracePeriod != nil {
			t.Errorf("eviction of %s overrides the grace period with %d", e.pod, *e.gracePeriod)
		}
	}

	slices.Sort(evicted)

	if strings.Join(evicted, " ") != "app-1 app-2 bare" {
		t.Errorf("evicted = %v", evicted)
	}

	mu.Lock()
	defer mu.Unlock()

	slices.Sort(progress)

	if strings.Join(progress, "|") != "n1: pod default/app-1 evicted|n1: pod default/app-2 evicted|n1: pod default/bare evicted" {
		t.Errorf("progress = %q", progress)
	}
}

func TestDrainRetriesBudgetRefusalsAfterTheDelay(t *testing.T) {
	cs := newCluster(t, node("n1", true, true), pod("guarded", "n1"))
	cs.refuse["guarded"] = 3

	const delay = 40 * time.Millisecond

	if err := kube.NewForClientset(cs, kube.WithEvictionRetryDelay(delay)).Drain(t.Context(), "n1", 10*time.Second); err != nil {
		t.Fatal(err)
	}

	attempts := cs.evicted()
	if len(attempts) != 4 {
		t.Fatalf("%d eviction attempts, want 4 (3 refused, 1 accepted)", len(attempts))
	}

	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i].at.Sub(attempts[i-1].at); gap < delay {
			t.Errorf("attempt %d came %s after the previous one, before the %s retry delay", i+1, gap, delay)
		}
	}
}

func TestDrainTimesOutOnABudgetThatNeverAllows(t *testing.T) {
	cs := newCluster(t, node("n1", true, true), pod("guarded", "n1"), pod("free", "n1"))
	cs.refuse["guarded"] = -1

	const (
		delay   = 50 * time.Millisecond
		timeout = 400 * time.Millisecond
	)

	err := kube.NewForClientset(cs, kube.WithEvictionRetryDelay(delay)).Drain(t.Context(), "n1", timeout)
	if !errors.Is(err, kube.ErrDrainTimeout) || !strings.Contains(err.Error(), `draining node "n1"`) {
		t.Fatalf("Drain = %v, want ErrDrainTimeout", err)
	}

	if got := cs.podNames(t); strings.Join(got, " ") != "guarded" {
		t.Errorf("pods left = %v", got)
	}

	// No hot loop: attempts on the guarded pod are bounded by the timeout over the delay.
	guarded := 0

	for _, e := range cs.evicted() {
		if e.pod == "guarded" {
			guarded++
		}
	}

	if maxAttempts := int(timeout/delay) + 2; guarded > maxAttempts {
		t.Errorf("%d eviction attempts in %s with a %s delay (max %d)", guarded, timeout, delay, maxAttempts)
	}
}

func TestDrainStopsWithItsContext(t *testing.T) {
	cs := newCluster(t, node("n1", true, true), pod("guarded", "n1"))
	cs.refuse["guarded"] = -1

	ctx, cancel := context.WithCancel(t.Context())
	cs.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		cancel()

		return false, nil, nil
	})

	err := kube.NewForClientset(cs, kube.WithEvictionRetryDelay(10*time.Millisecond)).Drain(ctx, "n1", time.Minute)
	if !errors.Is(err, context.Canceled) || errors.Is(err, kube.ErrDrainTimeout) {
		t.Fatalf("Drain = %v, want context.Canceled", err)
	}
}

func TestNewFromKubeconfig(t *testing.T) {
	if _, err := kube.New([]byte("not: [a kubeconfig")); err == nil {
		t.Error("garbage kubeconfig accepted")
	}

	if _, err := kube.New([]byte("apiVersion: v1\nkind: Config\n")); err == nil {
		t.Error("kubeconfig without a cluster accepted")
	}

	const kubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c1, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: t}}]
contexts: [{name: admin@c1, context: {cluster: c1, user: admin}}]
current-context: admin@c1
`

	if _, err := kube.New([]byte(kubeconfig)); err != nil {
		t.Errorf("New = %v", err)
	}
}
