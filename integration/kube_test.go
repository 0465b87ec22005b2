package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/upshift-io/upshift/internal/testbed"
)

// kubeClient is a client of the cluster's real kube-apiserver.
func kubeClient(t testing.TB, bed *testbed.Bed, clusterID string) kubernetes.Interface {
	t.Helper()

	kubeconfig, err := bed.Fleet.Kubeconfig(clusterID)
	require.NoError(t, err)

	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	require.NoError(t, err)

	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)

	return client
}

// workload is the Deployment the drain must respect: one replica per worker, spread over them, and a PDB that
// lets at most one be down.
const (
	workloadName     = "web"
	workloadReplicas = 4
	workloadMinAvail = workloadReplicas - 1
)

// deployWorkload creates the Deployment and its PodDisruptionBudget and waits until every replica is available.
func deployWorkload(t *testing.T, client kubernetes.Interface) {
	t.Helper()

	ctx := t.Context()
	labels := map[string]string{"app": workloadName}
	replicas := int32(workloadReplicas)
	grace := int64(1)
	minAvailable := intstr.FromInt32(workloadMinAvail)

	_, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: workloadName},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers:                    []corev1.Container{{Name: "web", Image: "registry.k8s.io/pause:3.10"}},
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
				},
			},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	_, err = client.PolicyV1().PodDisruptionBudgets(metav1.NamespaceDefault).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: workloadName},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &minAvailable, Selector: &metav1.LabelSelector{MatchLabels: labels}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	w, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Watch(waitCtx, metav1.ListOptions{FieldSelector: "metadata.name=" + workloadName})
	require.NoError(t, err)

	defer w.Stop()

	for ev := range w.ResultChan() {
		if d, ok := ev.Object.(*appsv1.Deployment); ok && d.Status.AvailableReplicas == workloadReplicas {
			return
		}
	}

	pods, err := client.CoreV1().Pods(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)

	for _, p := range pods.Items {
		t.Logf("pod %s on %q: %s %v", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.Conditions)
	}

	require.FailNow(t, "the workload did not become available", "%v", waitCtx.Err())
}

// change is one observed change of a node or pod, stamped when the test saw it.
type change struct {
	at time.Time
	on bool // node: unschedulable; pod: alive (bound to the node and not terminating)
}

// kubeRecorder watches nodes, the workload's pods and the Deployment during a rollout.
type kubeRecorder struct {
	mu           sync.Mutex
	cordons      map[string][]change            // node -> unschedulable changes
	pods         map[string]map[string][]change // node -> pod -> alive changes
	minAvailable int32
}

// recordKube starts watching; the watches end with the test.
func recordKube(t *testing.T, client kubernetes.Interface) *kubeRecorder {
	t.Helper()

	r := &kubeRecorder{cordons: map[string][]change{}, pods: map[string]map[string][]change{}, minAvailable: workloadReplicas}

	nodes, err := client.CoreV1().Nodes().Watch(t.Context(), metav1.ListOptions{})
	require.NoError(t, err)

	pods, err := client.CoreV1().Pods(metav1.NamespaceDefault).Watch(t.Context(), metav1.ListOptions{LabelSelector: "app=" + workloadName})
	require.NoError(t, err)

	deployments, err := client.AppsV1().Deployments(metav1.NamespaceDefault).Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + workloadName})
	require.NoError(t, err)

	t.Cleanup(func() { nodes.Stop(); pods.Stop(); deployments.Stop() })

	go r.consume(nodes, func(ev watch.Event, at time.Time) {
		if n, ok := ev.Object.(*corev1.Node); ok {
			r.cordons[n.Name] = appendChange(r.cordons[n.Name], change{at, n.Spec.Unschedulable})
		}
	})

	go r.consume(pods, func(ev watch.Event, at time.Time) {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" {
			return
		}

		if r.pods[p.Spec.NodeName] == nil {
			r.pods[p.Spec.NodeName] = map[string][]change{}
		}

		alive := ev.Type != watch.Deleted && p.DeletionTimestamp == nil
		r.pods[p.Spec.NodeName][p.Name] = appendChange(r.pods[p.Spec.NodeName][p.Name], change{at, alive})
	})

	go r.consume(deployments, func(ev watch.Event, _ time.Time) {
		if d, ok := ev.Object.(*appsv1.Deployment); ok && d.Status.AvailableReplicas < r.minAvailable {
			r.minAvailable = d.Status.AvailableReplicas
		}
	})

	return r
}

// appendChange records c unless it repeats the last state.
func appendChange(changes []change, c change) []change {
	if len(changes) > 0 && changes[len(changes)-1].on == c.on {
		return changes
	}

	return append(changes, c)
}

func (r *kubeRecorder) consume(w watch.Interface, record func(watch.Event, time.Time)) {
	for ev := range w.ResultChan() {
		r.mu.Lock()
		record(ev, time.Now())
		r.mu.Unlock()
	}
}

// stateAt returns the last recorded state at t (false before any change).
func stateAt(changes []change, t time.Time) bool {
	on := false

	for _, c := range changes {
		if c.at.After(t) {
			break
		}

		on = c.on
	}

	return on
}

// checkDrainedReboots checks every reboot of every node: cordoned and drained of the workload before it went down,
// and uncordoned after it came back; and no node left cordoned.
func (r *kubeRecorder) checkDrainedReboots(reboots map[string][]time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()

	var problems []string

	for node, downs := range reboots {
		for _, down := range downs {
			if !stateAt(r.cordons[node], down) {
				problems = append(problems, fmt.Sprintf("%s went down at %s uncordoned", node, down.Format(time.StampMicro)))
			}

			for pod, changes := range r.pods[node] {
				if stateAt(changes, down) {
					problems = append(problems, fmt.Sprintf("%s went down at %s with pod %s still on it", node, down.Format(time.StampMicro), pod))
				}
			}
		}
	}

	for node, changes := range r.cordons {
		if len(changes) > 0 && changes[len(changes)-1].on {
			problems = append(problems, node+" left cordoned")
		}
	}

	return problems
}

// cordonCycles counts, per node, how many times it was cordoned then uncordoned.
func (r *kubeRecorder) cordonCycles() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()

	out := map[string]int{}

	for node, changes := range r.cordons {
		for i := 1; i < len(changes); i++ {
			if changes[i-1].on && !changes[i].on {
				out[node]++
			}
		}
	}

	return out
}

// lowestAvailable is the fewest available workload replicas seen.
func (r *kubeRecorder) lowestAvailable() int32 {
	r.mu.Lock()
	defer r.mu.Unlock()

	return r.minAvailable
}
