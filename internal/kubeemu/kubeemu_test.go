package kubeemu_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/go-kubernetes/kubernetes/nodedrain"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/kubectl/pkg/drain"

	"go.uber.org/zap/zaptest"

	"github.com/upshift-io/upshift/internal/kubeemu"
)

const (
	testNamespace = "apps"
	waitTimeout   = 60 * time.Second
)

func staticPods(version string) []kubeemu.StaticPod {
	pods := make([]kubeemu.StaticPod, 0, 3)

	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		pods = append(pods, kubeemu.StaticPod{
			Name:        name,
			Image:       "registry.k8s.io/" + name + ":" + version,
			Annotations: map[string]string{"talos.dev/config-version": "1"},
		})
	}

	return pods
}

var (
	controlPlaneNode = kubeemu.NodeConfig{
		Name: "c1-cp-1", KubeletVersion: "v1.37.2", ControlPlane: true, InternalIP: "10.5.0.2",
		OSImage: "Talos (v1.14.1)", StaticPods: staticPods("v1.37.2"),
	}
	worker1 = kubeemu.NodeConfig{Name: "c1-w-1", KubeletVersion: "v1.36.3", InternalIP: "10.5.0.3"}
	worker2 = kubeemu.NodeConfig{Name: "c1-w-2", KubeletVersion: "v1.36.3", InternalIP: "10.5.0.4"}
)

// TestCluster runs one real control plane with three emulated kubelets through what the upgrade engine relies on:
// nodes and versions, mirror pods, readiness, DaemonSets, and drains that honour PodDisruptionBudgets and grace
// periods. The steps build on each other.
func TestCluster(t *testing.T) {
	c := startCluster(t, controlPlaneNode, worker1, worker2)
	ctx := t.Context()

	t.Run("nodes report their kubelet versions", func(t *testing.T) {
		want := map[string]string{controlPlaneNode.Name: "v1.37.2", worker1.Name: "v1.36.3", worker2.Name: "v1.36.3"}
		eventually(t, waitTimeout, "three Ready nodes with their kubelet versions", func() (bool, error) {
			nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}

			got := map[string]string{}

			for _, node := range nodes.Items {
				if nodeReady(&node) {
					got[node.Name] = node.Status.NodeInfo.KubeletVersion
				}
			}

			return fmt.Sprint(got) == fmt.Sprint(want), fmt.Errorf("ready nodes and versions: %v", got)
		})

		// The node lifecycle controller lifts the not-ready taint admission put on the new Nodes.
		eventually(t, waitTimeout, "the not-ready taints to be lifted", func() (bool, error) {
			cp, w := getNode(t, c, controlPlaneNode.Name), getNode(t, c, worker1.Name)

			return len(cp.Spec.Taints) == 1 && cp.Spec.Taints[0].Key == kubeemu.LabelControlPlane &&
					cp.Spec.Taints[0].Effect == corev1.TaintEffectNoSchedule && len(w.Spec.Taints) == 0,
				fmt.Errorf("control plane taints %v, worker taints %v", cp.Spec.Taints, w.Spec.Taints)
		})

		cp := getNode(t, c, controlPlaneNode.Name)
		if _, ok := cp.Labels[kubeemu.LabelControlPlane]; !ok {
			t.Errorf("control plane node labels %v lack %s", cp.Labels, kubeemu.LabelControlPlane)
		}

		if cp.Status.NodeInfo.OSImage != "Talos (v1.14.1)" || nodeInternalIP(cp) != "10.5.0.2" {
			t.Errorf("control plane osImage %q, internal IP %q", cp.Status.NodeInfo.OSImage, nodeInternalIP(cp))
		}

		eventually(t, waitTimeout, "node leases", func() (bool, error) {
			lease, err := c.client.CoordinationV1().Leases("kube-node-lease").Get(ctx, worker1.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}

			return lease.Spec.RenewTime != nil && *lease.Spec.HolderIdentity == worker1.Name, nil
		})
	})

	t.Run("a node registers with its kubelet version", func(t *testing.T) {
		watchCtx, cancel := context.WithTimeout(ctx, waitTimeout)
		defer cancel()

		late := kubeemu.NodeConfig{Name: "c1-w-3", KubeletVersion: "v1.36.3", InternalIP: "10.5.0.5"}

		w, err := c.client.CoreV1().Nodes().Watch(watchCtx, metav1.ListOptions{FieldSelector: "metadata.name=" + late.Name})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()

		kubelet := kubeemu.NewKubelet(c.cp.RESTConfig(), late, zaptest.NewLogger(t), kubeemu.WithHeartbeatInterval(time.Second))
		done := make(chan error, 1)

		go func() { done <- kubelet.Run(watchCtx) }()

		defer func() {
			cancel()

			if err := <-done; err != nil {
				t.Errorf("kubelet %s: %v", late.Name, err)
			}

			// Gone for good, so that the later steps schedule nothing on it.
			if err := c.client.CoreV1().Nodes().Delete(ctx, late.Name, metav1.DeleteOptions{}); err != nil {
				t.Errorf("deleting node %s: %v", late.Name, err)
			}
		}()

		for e := range w.ResultChan() {
			if node, ok := e.Object.(*corev1.Node); ok && e.Type == watch.Added {
				if got := node.Status.NodeInfo.KubeletVersion; got != late.KubeletVersion {
					t.Fatalf("the Node as first registered reports kubelet version %q, want %q", got, late.KubeletVersion)
				}

				return
			}
		}

		t.Fatal("the watch ended before the node registered")
	})

	t.Run("mirror pods follow the static pods", func(t *testing.T) {
		waitMirrorPods(t, c, "v1.37.2", "1")

		updated := controlPlaneNode
		updated.KubeletVersion = "v1.37.3"
		updated.StaticPods = staticPods("v1.37.3")
		updated.StaticPods[0].Annotations["talos.dev/config-version"] = "2"
		c.kubelets[controlPlaneNode.Name].Update(updated)

		waitMirrorPods(t, c, "v1.37.3", "2")
		eventually(t, waitTimeout, "the new kubelet version", func() (bool, error) {
			v := getNode(t, c, controlPlaneNode.Name).Status.NodeInfo.KubeletVersion

			return v == "v1.37.3", fmt.Errorf("kubelet version %s", v)
		})
	})

	t.Run("a rebooting node and its pods are not ready", func(t *testing.T) {
		kubelet := c.kubelets[controlPlaneNode.Name]

		kubelet.SetReady(false)
		waitNodeAndPodsReady(t, c, controlPlaneNode.Name, false)

		kubelet.SetReady(true)
		waitNodeAndPodsReady(t, c, controlPlaneNode.Name, true)
	})

	t.Run("daemonset pods run on every node", func(t *testing.T) {
		if _, err := c.client.CoreV1().Namespaces().Create(ctx,
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}

		createDaemonSet(t, c)

		eventually(t, waitTimeout, "a Ready node-agent pod on each node", func() (bool, error) {
			pods := listPods(t, c, testNamespace, "app=node-agent")
			nodes := map[string]bool{}

			for _, pod := range pods {
				if podReady(&pod) {
					nodes[pod.Spec.NodeName] = true
				}
			}

			return len(nodes) == 3, fmt.Errorf("ready on %v", nodes)
		})
	})

	t.Run("settled pods are not rewritten", func(t *testing.T) {
		before := listPodsOn(t, c, worker1.Name, "")
		if len(before) == 0 {
			t.Fatalf("no pods on %s", worker1.Name)
		}

		// Two lease renewals are two heartbeats: every kubelet loop has run meanwhile.
		renewals := 0
		lastRenew := metav1.MicroTime{}

		eventually(t, waitTimeout, "two lease renewals", func() (bool, error) {
			lease, err := c.client.CoordinationV1().Leases("kube-node-lease").Get(ctx, worker1.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}

			if !lease.Spec.RenewTime.Equal(&lastRenew) {
				renewals++
				lastRenew = *lease.Spec.RenewTime
			}

			return renewals > 2, nil
		})

		for _, pod := range before {
			after, err := c.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}

			if after.ResourceVersion != pod.ResourceVersion {
				t.Errorf("settled pod %s was rewritten: %+v", pod.Name, after.Status)
			}
		}
	})

	// drained is the worker emptied under the PodDisruptionBudget; other is where the web pods end up.
	var drained, other string

	t.Run("drain waits for the disruption budget", func(t *testing.T) {
		createWeb(t, c)

		webPods := waitReadyPods(t, c, "app=web", 2)
		drained = webPods[0].Spec.NodeName
		other = map[string]string{worker1.Name: worker2.Name, worker2.Name: worker1.Name}[drained]

		waitBudget(t, c, 2, 0)

		if err := nodedrain.Cordon(ctx, c.client, drained); err != nil {
			t.Fatal(err)
		}

		if !getNode(t, c, drained).Spec.Unschedulable {
			t.Fatalf("node %s is not cordoned", drained)
		}

		var errOut syncBuffer

		helper := &drain.Helper{
			Ctx:                  ctx,
			Client:               c.client,
			Force:                true,
			IgnoreAllDaemonSets:  true,
			DeleteEmptyDirData:   true,
			GracePeriodSeconds:   -1,
			Timeout:              waitTimeout,
			EvictErrorRetryDelay: 200 * time.Millisecond,
			Out:                  &syncBuffer{},
			ErrOut:               &errOut,
		}

		drainDone := make(chan error, 1)

		go func() { drainDone <- drain.RunNodeDrain(helper, drained) }()

		eventually(t, waitTimeout, "the drain to hit the disruption budget", func() (bool, error) {
			return strings.Contains(errOut.String(), "disruption budget"), errors.New(errOut.String())
		})

		select {
		case err := <-drainDone:
			t.Fatalf("drain returned (%v) while the budget allows no disruption", err)
		default:
		}

		for _, pod := range listPodsOn(t, c, drained, "app=web") {
			if pod.DeletionTimestamp != nil {
				t.Fatalf("pod %s is terminating although the budget allows no disruption", pod.Name)
			}
		}

		// A third replica, Ready on the other worker, lets the budget allow one disruption.
		if _, err := c.client.AppsV1().Deployments(testNamespace).UpdateScale(ctx, "web", &autoscalingv1.Scale{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: testNamespace},
			Spec:       autoscalingv1.ScaleSpec{Replicas: 3},
		}, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}

		select {
		case err := <-drainDone:
			if err != nil {
				t.Fatalf("drain: %v (stderr: %s)", err, errOut.String())
			}
		case <-time.After(waitTimeout):
			t.Fatalf("drain did not finish after the budget allowed it (stderr: %s)", errOut.String())
		}

		if pods := listPodsOn(t, c, drained, "app=web"); len(pods) != 0 {
			t.Errorf("%d web pods left on the drained node", len(pods))
		}

		for _, pod := range waitReadyPods(t, c, "app=web", 3) {
			if pod.Spec.NodeName != other {
				t.Errorf("web pod %s runs on %s, want %s", pod.Name, pod.Spec.NodeName, other)
			}
		}

		assertLeftAlone(t, c, drained, testNamespace, "app=node-agent", 1)
	})

	t.Run("pods get their own termination grace period", func(t *testing.T) {
		graces := map[string]int64{"short": 1, "long": 3}

		for name, grace := range graces {
			createBarePod(t, c, name, other, grace)
		}

		waitReadyPods(t, c, "app=bare", 2)

		evicted := map[string]time.Time{}

		for name := range graces {
			evicted[name] = time.Now()

			if err := c.client.PolicyV1().Evictions(testNamespace).Evict(ctx, &policyv1.Eviction{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
			}); err != nil {
				t.Fatalf("evicting %s: %v", name, err)
			}
		}

		gone := map[string]time.Duration{}

		eventually(t, waitTimeout, "both evicted pods to be gone", func() (bool, error) {
			for name := range graces {
				if _, ok := gone[name]; ok {
					continue
				}

				_, err := c.client.CoreV1().Pods(testNamespace).Get(ctx, name, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					gone[name] = time.Since(evicted[name])
				}
			}

			return len(gone) == len(graces), fmt.Errorf("gone: %v", gone)
		})

		for name, grace := range graces {
			if min := time.Duration(grace) * time.Second; gone[name] < min {
				t.Errorf("pod %s was gone %s after its eviction, before its %s grace period", name, gone[name], min)
			}
		}

		if gone["short"] >= gone["long"] {
			t.Errorf("the 1 s pod lasted %s, not less than the 3 s pod (%s)", gone["short"], gone["long"])
		}
	})

	t.Run("coredns exits after its lameduck, not its grace period", func(t *testing.T) {
		grace := int64(30)

		if _, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "coredns-test", Labels: map[string]string{"k8s-app": "kube-dns"}},
			Spec: corev1.PodSpec{
				NodeName:                      other,
				Containers:                    []corev1.Container{{Name: "coredns", Image: "registry.k8s.io/coredns/coredns:v1.12.4"}},
				TerminationGracePeriodSeconds: &grace,
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}

		eventually(t, waitTimeout, "the coredns pod to run", func() (bool, error) {
			pod, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).Get(ctx, "coredns-test", metav1.GetOptions{})

			return err == nil && pod.Status.Phase == corev1.PodRunning, err
		})

		evicted := time.Now()

		if err := c.client.PolicyV1().Evictions(metav1.NamespaceSystem).Evict(ctx, &policyv1.Eviction{
			ObjectMeta: metav1.ObjectMeta{Name: "coredns-test", Namespace: metav1.NamespaceSystem},
		}); err != nil {
			t.Fatalf("evicting coredns: %v", err)
		}

		eventually(t, waitTimeout, "the evicted coredns pod to be gone", func() (bool, error) {
			_, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).Get(ctx, "coredns-test", metav1.GetOptions{})

			return apierrors.IsNotFound(err), err
		})

		if gone := time.Since(evicted); gone < 5*time.Second || gone >= time.Duration(grace)*time.Second {
			t.Errorf("the coredns pod was gone %s after its eviction; want its 5 s lameduck, under its %d s grace period", gone, grace)
		}
	})

	t.Run("nodedrain leaves mirror and daemonset pods alone", func(t *testing.T) {
		if err := nodedrain.Uncordon(ctx, c.client, drained); err != nil {
			t.Fatal(err)
		}

		if err := c.client.PolicyV1().PodDisruptionBudgets(testNamespace).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}

		for _, node := range []string{controlPlaneNode.Name, other} {
			if err := nodedrain.Cordon(ctx, c.client, node); err != nil {
				t.Fatal(err)
			}

			var progress syncBuffer // the drain reports from one goroutine per pod

			if err := nodedrain.Drain(ctx, c.client, node, nodedrain.DrainOptions{
				Timeout:  waitTimeout,
				Progress: func(msg string) { fmt.Fprintln(&progress, msg) },
			}); err != nil {
				t.Fatalf("draining %s: %v (progress: %s)", node, err, progress.String())
			}

			t.Logf("drained %s:\n%s", node, progress.String())
			assertLeftAlone(t, c, node, testNamespace, "app=node-agent", 1)
		}

		assertLeftAlone(t, c, controlPlaneNode.Name, metav1.NamespaceSystem, "tier=control-plane", 3)

		if pods := listPodsOn(t, c, other, "app=web"); len(pods) != 0 {
			t.Errorf("%d web pods left on drained node %s", len(pods), other)
		}

		for _, pod := range waitReadyPods(t, c, "app=web", 3) {
			if pod.Spec.NodeName != drained {
				t.Errorf("web pod %s runs on %s, want the only schedulable worker %s", pod.Name, pod.Spec.NodeName, drained)
			}
		}
	})
}

// TestStartControlPlaneWithoutBinaries checks that a machine without `make kube-bins` gets an error naming the fix.
func TestStartControlPlaneWithoutBinaries(t *testing.T) {
	_, err := kubeemu.StartControlPlane(t.Context(), kubeemu.ControlPlaneConfig{
		Dir:           t.TempDir(),
		EtcdEndpoints: []string{"http://127.0.0.1:2379"},
		BinDir:        t.TempDir(),
	})
	if !errors.Is(err, kubeemu.ErrBinaryMissing) {
		t.Fatalf("err = %v, want ErrBinaryMissing", err)
	}

	for _, want := range []string{kubeemu.BinDirEnv, "make kube-bins", kubeemu.APIServerBinary} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestStartControlPlaneRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]kubeemu.ControlPlaneConfig{
		"no dir":       {EtcdEndpoints: []string{"http://127.0.0.1:2379"}},
		"no etcd":      {Dir: t.TempDir()},
		"bad endpoint": {Dir: t.TempDir(), EtcdEndpoints: []string{"127.0.0.1:2379"}},
		"tls endpoint": {Dir: t.TempDir(), EtcdEndpoints: []string{"https://127.0.0.1:2379"}},
		"bad prefix":   {Dir: t.TempDir(), EtcdEndpoints: []string{"http://127.0.0.1:2379"}, EtcdPrefix: "c1"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := kubeemu.StartControlPlane(t.Context(), cfg); err == nil ||
				!strings.Contains(err.Error(), "invalid control plane config") {
				t.Fatalf("err = %v, want an invalid config error", err)
			}
		})
	}
}

// waitMirrorPods waits for the three control-plane mirror pods on the control plane node with the images of version
// and the given config version, Running and Ready, and checks what a kubelet puts on them.
func waitMirrorPods(t *testing.T, c *testCluster, version, configVersion string) {
	t.Helper()

	eventually(t, waitTimeout, "mirror pods at "+version, func() (bool, error) {
		pods := listPodsOn(t, c, controlPlaneNode.Name, "tier=control-plane")
		if len(pods) != 3 {
			return false, fmt.Errorf("%d mirror pods", len(pods))
		}

		for _, pod := range pods {
			if pod.Namespace != metav1.NamespaceSystem || pod.DeletionTimestamp != nil {
				return false, fmt.Errorf("pod %s/%s (terminating: %v)", pod.Namespace, pod.Name, pod.DeletionTimestamp != nil)
			}

			component := pod.Labels["k8s-app"]
			if pod.Name != component+"-"+controlPlaneNode.Name {
				return false, fmt.Errorf("mirror pod %s for component %q", pod.Name, component)
			}

			if image := pod.Spec.Containers[0].Image; !strings.HasSuffix(image, ":"+version) {
				return false, fmt.Errorf("pod %s image %s", pod.Name, image)
			}

			if _, ok := pod.Annotations[corev1.MirrorPodAnnotationKey]; !ok {
				return false, fmt.Errorf("pod %s is not annotated as a mirror pod", pod.Name)
			}

			if component == "kube-apiserver" && pod.Annotations["talos.dev/config-version"] != configVersion {
				return false, fmt.Errorf("pod %s config version %q", pod.Name, pod.Annotations["talos.dev/config-version"])
			}

			if !podReady(&pod) || pod.Status.Phase != corev1.PodRunning || pod.Status.HostIP != controlPlaneNode.InternalIP {
				return false, fmt.Errorf("pod %s phase %s ready %v hostIP %q", pod.Name, pod.Status.Phase, podReady(&pod), pod.Status.HostIP)
			}
		}

		return true, nil
	})
}

func waitNodeAndPodsReady(t *testing.T, c *testCluster, nodeName string, ready bool) {
	t.Helper()

	eventually(t, waitTimeout, fmt.Sprintf("node %s and its pods ready=%v", nodeName, ready), func() (bool, error) {
		if nodeReady(getNode(t, c, nodeName)) != ready {
			return false, errors.New("node readiness")
		}

		pods := listPodsOn(t, c, nodeName, "")
		for _, pod := range pods {
			if podReady(&pod) != ready {
				return false, fmt.Errorf("pod %s ready=%v", pod.Name, !ready)
			}
		}

		return len(pods) > 0, nil
	})
}

func createDaemonSet(t *testing.T, c *testCluster) {
	t.Helper()

	labels := map[string]string{"app": "node-agent"}

	_, err := c.client.AppsV1().DaemonSets(testNamespace).Create(t.Context(), &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "node-agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:  []corev1.Container{{Name: "agent", Image: "registry.example/agent:1"}},
					Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// createWeb creates a two-replica Deployment with a one-second grace period, and a budget that keeps both available.
func createWeb(t *testing.T, c *testCluster) {
	t.Helper()

	labels := map[string]string{"app": "web"}
	replicas, grace := int32(2), int64(1)

	if _, err := c.client.AppsV1().Deployments(testNamespace).Create(t.Context(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{{Name: "web", Image: "registry.example/web:1"}},
					TerminationGracePeriodSeconds: &grace,
				},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	minAvailable := intstr.FromInt32(2)

	if _, err := c.client.PolicyV1().PodDisruptionBudgets(testNamespace).Create(t.Context(), &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: &minAvailable,
			Selector:     &metav1.LabelSelector{MatchLabels: labels},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createBarePod(t *testing.T, c *testCluster, name, nodeName string, grace int64) {
	t.Helper()

	if _, err := c.client.CoreV1().Pods(testNamespace).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "bare"}},
		Spec: corev1.PodSpec{
			NodeName:                      nodeName,
			Containers:                    []corev1.Container{{Name: "main", Image: "registry.example/bare:1"}},
			TerminationGracePeriodSeconds: &grace,
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitBudget waits until the disruption controller has computed the web budget.
func waitBudget(t *testing.T, c *testCluster, healthy, allowed int32) {
	t.Helper()

	eventually(t, waitTimeout, "the web disruption budget status", func() (bool, error) {
		pdb, err := c.client.PolicyV1().PodDisruptionBudgets(testNamespace).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}

		s := pdb.Status

		return s.ObservedGeneration == pdb.Generation && s.CurrentHealthy == healthy && s.DisruptionsAllowed == allowed,
			fmt.Errorf("status %+v", s)
	})
}

// waitReadyPods waits for exactly n Ready, not terminating pods in the test namespace matching selector.
func waitReadyPods(t *testing.T, c *testCluster, selector string, n int) []corev1.Pod {
	t.Helper()

	var ready []corev1.Pod

	eventually(t, waitTimeout, fmt.Sprintf("%d ready %s pods", n, selector), func() (bool, error) {
		pods := listPods(t, c, testNamespace, selector)
		ready = ready[:0]

		for _, pod := range pods {
			if pod.DeletionTimestamp != nil {
				return false, fmt.Errorf("pod %s is terminating", pod.Name)
			}

			if podReady(&pod) {
				ready = append(ready, pod)
			}
		}

		return len(ready) == n && len(pods) == n, fmt.Errorf("%d of %d ready", len(ready), len(pods))
	})

	return ready
}

// assertLeftAlone checks that a drain left n pods matching selector on node, none of them terminating.
func assertLeftAlone(t *testing.T, c *testCluster, node, namespace, selector string, n int) {
	t.Helper()

	var count int

	for _, pod := range listPodsOn(t, c, node, selector) {
		if pod.Namespace != namespace {
			continue
		}

		if pod.DeletionTimestamp != nil {
			t.Errorf("drain evicted %s/%s", pod.Namespace, pod.Name)
		}

		count++
	}

	if count != n {
		t.Errorf("%d %s pods on %s after the drain, want %d", count, selector, node, n)
	}
}

func listPods(t *testing.T, c *testCluster, namespace, selector string) []corev1.Pod {
	t.Helper()

	pods, err := c.client.CoreV1().Pods(namespace).List(t.Context(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}

	return pods.Items
}

func listPodsOn(t *testing.T, c *testCluster, node, selector string) []corev1.Pod {
	t.Helper()

	pods, err := c.client.CoreV1().Pods("").List(t.Context(), metav1.ListOptions{
		LabelSelector: selector,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		t.Fatal(err)
	}

	return pods.Items
}

func getNode(t *testing.T, c *testCluster, name string) *corev1.Node {
	t.Helper()

	node, err := c.client.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	return node
}

func nodeReady(node *corev1.Node) bool {
	for _, condition := range node.Status.Conditions {
		if condition.Type == corev1.NodeReady {
			return condition.Status == corev1.ConditionTrue
		}
	}

	return false
}

func nodeInternalIP(node *corev1.Node) string {
	for _, address := range node.Status.Addresses {
		if address.Type == corev1.NodeInternalIP {
			return address.Address
		}
	}

	return ""
}

func podReady(pod *corev1.Pod) bool {
	for _, condition := range pod.Status.Conditions {
		if condition.Type == corev1.PodReady {
			return condition.Status == corev1.ConditionTrue
		}
	}

	return false
}

// syncBuffer is a bytes.Buffer safe for the drain goroutine to write while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.String()
}
