// Package kube is the engine's adapter to a cluster's Kubernetes API for what a Talos upgrade needs from it:
// observe a node (ready, kubelet version, cordoned), cordon it, drain it, and uncordon it. Draining goes
// through the eviction API, so PodDisruptionBudgets hold; each pod keeps its own termination grace period, so
// preStop hooks get their time; DaemonSet and mirror pods stay; and an eviction refused by a budget is retried
// after a pause rather than in a hot loop.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/siderolabs/go-kubernetes/kubernetes/nodedrain"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kubectl/pkg/drain"
)

const (
	// DefaultEvictionRetryDelay is how long a drain waits before asking again to evict a pod that a
	// PodDisruptionBudget protects (kubectl drain waits as long).
	DefaultEvictionRetryDelay = 5 * time.Second
	// DefaultDrainTimeout bounds a drain when the caller gives no timeout.
	DefaultDrainTimeout = nodedrain.DefaultDrainTimeout
)

// ErrDrainTimeout is wrapped when a drain could not evict every pod within its timeout (typically a
// PodDisruptionBudget that never allows it); the node stays cordoned and the caller decides what follows.
var ErrDrainTimeout = errors.New("drain timed out")

// Node is what the engine observes of a Kubernetes node.
type Node struct {
	// Name is the Kubernetes node name.
	Name string
	// Ready is the node's Ready condition.
	Ready bool
	// KubeletVersion is what the kubelet reports, e.g. "v1.35.0".
	KubeletVersion string
	// Cordoned is true when the node is unschedulable.
	Cordoned bool
	// ControlPlane is true for a node labelled node-role.kubernetes.io/control-plane.
	ControlPlane bool
}

// LabelControlPlane marks a control plane Node (Talos labels its control planes so).
const LabelControlPlane = "node-role.kubernetes.io/control-plane"

// Nodes is what the controllers do with a cluster's nodes. A node that does not exist gives an error for which
// apierrors.IsNotFound is true, except for Uncordon, where it is a no-op.
type Nodes interface {
	Node(ctx context.Context, name string) (Node, error)
	Cordon(ctx context.Context, name string) error
	// Drain evicts the node's pods within timeout (DefaultDrainTimeout when zero); the node must be cordoned.
	Drain(ctx context.Context, name string, timeout time.Duration) error
	Uncordon(ctx context.Context, name string) error
}

// Client implements Nodes over client-go.
type Client struct {
	cs         kubernetes.Interface
	retryDelay time.Duration
	progress   func(node, message string)
}

var _ Nodes = (*Client)(nil)

// Option configures a Client.
type Option func(*Client)

// WithEvictionRetryDelay sets the pause before retrying an eviction a PodDisruptionBudget refused; values
// below a millisecond are raised to one, so a drain never hammers the API server.
func WithEvictionRetryDelay(d time.Duration) Option {
	return func(c *Client) { c.retryDelay = max(d, time.Millisecond) }
}

// WithProgress receives a line for each pod a drain evicts or fails to evict.
func WithProgress(f func(node, message string)) Option {
	return func(c *Client) { c.progress = f }
}

// ClientQPS and ClientBurst bound the requests a client of this package sends to a cluster's API server, in place
// of client-go's defaults (5 a second, bursts of 10). The engine has one client per cluster for every call it makes
// there: the Node read of each machine's observation, cordons, drains, the Kubernetes upgrade's waits. Under the
// defaults, ten machines observed every second already ask more than the limiter lets through, and every other call
// queued behind them: a cordon took 3.4 s and a Kubernetes upgrade of ten machines 9 s instead of 3 s
// (docs/benchmarks.md, BenchmarkKubernetesUpgrade).
const (
	// ClientQPS is how many requests a second a client sends to one cluster, sustained.
	ClientQPS = 50
	// ClientBurst is how many requests a client sends to one cluster at once before ClientQPS applies.
	ClientBurst = 100
)

// restConfig reads the client configuration of a kubeconfig's current context, with this package's rate limits.
func restConfig(kubeconfig []byte) (*rest.Config, error) {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: reading kubeconfig: %w", err)
	}

	cfg.QPS, cfg.Burst = ClientQPS, ClientBurst

	return cfg, nil
}

// New returns a Client for the cluster a kubeconfig describes (its current context).
func New(kubeconfig []byte, opts ...Option) (*Client, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}

	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}

	return NewForClientset(cs, opts...), nil
}

// NewForClientset returns a Client over a ready clientset (an embedding program's own, or a fake in tests).
func NewForClientset(cs kubernetes.Interface, opts ...Option) *Client {
	c := &Client{cs: cs, retryDelay: DefaultEvictionRetryDelay}
	for _, opt := range opts {
		opt(c)
	}

	return c
}

// Node implements Nodes.
func (c *Client) Node(ctx context.Context, name string) (Node, error) {
	n, err := c.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Node{}, fmt.Errorf("reading node %q: %w", name, err)
	}

	return nodeOf(n), nil
}

// List lists every Node of the cluster.
func (c *Client) List(ctx context.Context) ([]Node, error) {
	list, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}

	nodes := make([]Node, 0, len(list.Items))
	for i := range list.Items {
		nodes = append(nodes, nodeOf(&list.Items[i]))
	}

	return nodes, nil
}

func nodeOf(n *corev1.Node) Node {
	_, controlPlane := n.Labels[LabelControlPlane]
	out := Node{Name: n.Name, KubeletVersion: n.Status.NodeInfo.KubeletVersion, Cordoned: n.Spec.Unschedulable, ControlPlane: controlPlane}

	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			out.Ready = cond.Status == corev1.ConditionTrue
		}
	}

	return out
}

// Cordon implements Nodes; cordoning a cordoned node is a no-op.
func (c *Client) Cordon(ctx context.Context, name string) error {
	if err := nodedrain.Cordon(ctx, c.cs, name); err != nil {
		return fmt.Errorf("cordoning node %q: %w", name, err)
	}

	return nil
}

// Uncordon implements Nodes; uncordoning a schedulable or missing node is a no-op.
func (c *Client) Uncordon(ctx context.Context, name string) error {
	if err := nodedrain.Uncordon(ctx, c.cs, name); err != nil {
		return fmt.Errorf("uncordoning node %q: %w", name, err)
	}

	return nil
}

// Drain implements Nodes with the kubectl drain library, configured here rather than through go-kubernetes'
// nodedrain.Drain because that leaves the eviction retry delay at zero (a hot loop against the API server
// while a budget blocks).
func (c *Client) Drain(ctx context.Context, name string, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultDrainTimeout
	}

	drainCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	helper := &drain.Helper{
		Ctx:                  drainCtx,
		Client:               c.cs,
		Force:                true, // pods without a controller are deleted too, as talosctl does
		GracePeriodSeconds:   -1,   // each pod's own terminationGracePeriodSeconds
		IgnoreAllDaemonSets:  true,
		DeleteEmptyDirData:   true,
		Timeout:              timeout,
		EvictErrorRetryDelay: c.retryDelay,
		Out:                  io.Discard,
		ErrOut:               io.Discard,
	}

	if c.progress != nil {
		helper.OnPodDeletionOrEvictionFinished = func(pod *corev1.Pod, _ bool, err error) {
			if err != nil {
				c.progress(name, fmt.Sprintf("pod %s/%s not evicted: %v", pod.Namespace, pod.Name, err))

				return
			}

			c.progress(name, fmt.Sprintf("pod %s/%s evicted", pod.Namespace, pod.Name))
		}
	}

	err := drain.RunNodeDrain(helper, name)

	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("draining node %q: %w", name, ctx.Err())
	case drainCtx.Err() != nil:
		return fmt.Errorf("draining node %q: %w after %s: %w", name, ErrDrainTimeout, timeout, err)
	default:
		return fmt.Errorf("draining node %q: %w", name, err)
	}
}
