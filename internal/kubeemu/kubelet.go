package kubeemu

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// StaticPod is a control-plane pod the node runs from a local manifest, published as a mirror pod in kube-system.
type StaticPod struct {
	// Name is the component, e.g. "kube-apiserver"; the mirror pod is named "<Name>-<node name>".
	Name string
	// Image is the container image; a change replaces the mirror pod, as a kubelet does when the manifest changes.
	Image string
	// Labels and Annotations are added to the mirror pod's defaults (k8s-app, component and tier labels), e.g. the
	// talos.dev/config-version annotation that `talosctl upgrade-k8s` waits for.
	Labels, Annotations map[string]string
}

// NodeConfig is what the emulated kubelet reports about its node.
type NodeConfig struct {
	// Name is the Node name. It is fixed when the Kubelet is created; Update ignores a different one.
	Name string
	// KubeletVersion is reported in status.nodeInfo.kubeletVersion, e.g. "v1.37.2".
	KubeletVersion string
	// ControlPlane adds the control-plane role label and, unless AllowSchedulingOnControlPlane, registers the Node
	// with the control-plane NoSchedule taint, as Talos does.
	ControlPlane bool
	// AllowSchedulingOnControlPlane mirrors Talos' cluster.allowSchedulingOnControlPlanes.
	AllowSchedulingOnControlPlane bool
	// StaticPods are published as mirror pods.
	StaticPods []StaticPod
	// InternalIP is the node address and the hostIP of its pods; empty leaves them out.
	InternalIP string
	// OSImage is reported in status.nodeInfo.osImage, e.g. "Talos (v1.14.1)"; empty means "Talos".
	OSImage string
	// StaticPodRestart is how long a mirror pod the kubelet (re)creates for a new or changed static pod is reported
	// not Ready, as the pod's containers start and pass their probes.
	StaticPodRestart time.Duration
}

// Node labels and taints a kubelet registers.
const (
	LabelHostname     = "kubernetes.io/hostname"
	LabelOS           = "kubernetes.io/os"
	LabelArch         = "kubernetes.io/arch"
	LabelControlPlane = "node-role.kubernetes.io/control-plane"
)

const (
	// DefaultHeartbeatInterval is how often the kubelet renews its Lease, like a real kubelet (10 s).
	DefaultHeartbeatInterval = 10 * time.Second
	// statusReportIntervalBeats is how many heartbeats pass between unchanged Node status reports.
	statusReportIntervalBeats = 6
	// leaseDurationSeconds is what the kubelet declares in its Lease (the real default, 40 s).
	leaseDurationSeconds = 40
	// nodeLeaseNamespace holds the kubelets' Leases.
	nodeLeaseNamespace = "kube-node-lease"
	// retryBaseDelay and retryMaxDelay bound the backoff of a failed sync, short enough for tests to not notice
	// an apiserver hiccup.
	retryBaseDelay = 10 * time.Millisecond
	retryMaxDelay  = 5 * time.Second
)

// KubeletOption changes how an emulated kubelet behaves.
type KubeletOption func(*kubeletOptions)

type kubeletOptions struct {
	heartbeat time.Duration
}

// WithHeartbeatInterval sets how often the Lease is renewed; the Node status is re-reported every few heartbeats
// even when nothing changed.
func WithHeartbeatInterval(d time.Duration) KubeletOption {
	return func(o *kubeletOptions) {
		if d > 0 {
			o.heartbeat = d
		}
	}
}

// Work queue keys that are not pods. Pod keys are "namespace/name", which never collide with these.
const (
	keyNode   = "node"
	keyLease  = "lease"
	keyMirror = "mirror-pods"
)

// Kubelet plays one node's kubelet against the apiserver: it registers the Node and keeps its Ready condition and
// Lease fresh, publishes mirror pods for the static pods, reports the pods bound to the node Running and Ready, and
// finishes the deletion of a terminating pod once its grace period has passed. While not ready (the node is
// rebooting) it only reports the Node and its pods not ready; everything else resumes when it is ready again.
type Kubelet struct {
	restConfig *rest.Config
	logger     *zap.Logger
	opts       kubeletOptions
	name       string

	mu    sync.Mutex
	node  NodeConfig
	ready bool

	running atomic.Bool
	queue   workqueue.TypedRateLimitingInterface[string]

	pods corelisters.PodLister // set by Run under mu, once the cache is synced

	// Owned by the single worker goroutine of Run.
	client       kubernetes.Interface
	terminations map[string]termination
	starts       map[types.UID]time.Time // mirror pods this kubelet created, by UID: when their containers started
	lastReport   time.Time
}

// termination is when the kubelet first saw a pod terminating: it finishes the deletion one grace period later.
type termination struct {
	uid  string
	seen time.Time
}

// NewKubelet returns a ready kubelet for node; it acts once Run is called. The config is copied.
func NewKubelet(cfg *rest.Config, node NodeConfig, logger *zap.Logger, opts ...KubeletOption) *Kubelet {
	if logger == nil {
		logger = zap.NewNop()
	}

	options := kubeletOptions{heartbeat: DefaultHeartbeatInterval}
	for _, opt := range opts {
		opt(&options)
	}

	return &Kubelet{
		restConfig: rest.CopyConfig(cfg),
		logger:     logger.With(zap.String("node", node.Name)),
		opts:       options,
		name:       node.Name,
		node:       node,
		ready:      true,
		queue: workqueue.NewTypedRateLimitingQueue(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryBaseDelay, retryMaxDelay)),
		terminations: map[string]termination{},
		starts:       map[types.UID]time.Time{},
	}
}

// SetReady switches the node between up (true) and down, e.g. rebooting (false). Going down reports the Node and its
// pods not ready at once, as a kubelet shutting down gracefully does; coming up re-syncs everything.
func (k *Kubelet) SetReady(ready bool) {
	k.mu.Lock()
	changed := k.ready != ready
	k.ready = ready
	k.mu.Unlock()

	if changed {
		k.resyncAll()
	}
}

// Update replaces what the kubelet reports (versions, static pod images, ...). Like a restarted kubelet, it applies
// the change when the node is ready.
func (k *Kubelet) Update(node NodeConfig) {
	if node.Name != k.name {
		k.logger.Warn("ignoring a node rename in a kubelet update", zap.String("new_name", node.Name))
		node.Name = k.name
	}

	k.mu.Lock()
	k.node = node
	k.mu.Unlock()

	k.queue.Add(keyNode)
	k.queue.Add(keyMirror)
}

// snapshot returns the current config and readiness together.
func (k *Kubelet) snapshot() (NodeConfig, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()

	return k.node, k.ready
}

// resyncAll queues the Node, the Lease, the mirror pods and every pod of the node (once Run has listed them).
func (k *Kubelet) resyncAll() {
	k.queue.Add(keyNode)
	k.queue.Add(keyLease)
	k.queue.Add(keyMirror)

	k.mu.Lock()
	lister := k.pods
	k.mu.Unlock()

	if lister == nil {
		return
	}

	pods, err := lister.List(labels.Everything())
	if err != nil {
		k.logger.Warn("listing pods for a resync", zap.Error(err))

		return
	}

	for _, pod := range pods {
		k.queue.Add(podKey(pod))
	}
}

// Run acts as the kubelet until ctx ends, then returns nil. API errors are retried with backoff, as a kubelet
// keeps trying while the apiserver is unavailable. It can be called once.
func (k *Kubelet) Run(ctx context.Context) error {
	if !k.running.CompareAndSwap(false, true) {
		return errors.New("kubelet is already running")
	}

	defer k.queue.ShutDown()

	client, err := kubernetes.NewForConfig(k.restConfig)
	if err != nil {
		return fmt.Errorf("creating the kubelet client for node %q: %w", k.name, err)
	}

	k.client = client

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.name).String()
		}))
	defer factory.Shutdown()

	podInformer := factory.Core().V1().Pods()

	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    k.onPod,
		UpdateFunc: func(_, obj any) { k.onPod(obj) },
		DeleteFunc: k.onPod,
	}); err != nil {
		return fmt.Errorf("watching the pods of node %q: %w", k.name, err)
	}

	factory.Start(ctx.Done())

	for typ, synced := range factory.WaitForCacheSync(ctx.Done()) {
		if !synced {
			if ctx.Err() != nil {
				return nil
			}

			return fmt.Errorf("syncing the %v cache of node %q", typ, k.name)
		}
	}

	k.mu.Lock()
	k.pods = podInformer.Lister()
	k.mu.Unlock()

	k.resyncAll()

	var wg sync.WaitGroup

	wg.Go(func() {
		for k.processNext(ctx) {
		}
	})

	ticker := time.NewTicker(k.opts.heartbeat)
	defer ticker.Stop()

	for {
		select {
		case <-ctx.Done():
			k.queue.ShutDown()
			wg.Wait()

			return nil
		case <-ticker.C:
			k.queue.Add(keyLease)
			k.queue.Add(keyNode)
		}
	}
}

// onPod queues a changed pod, and the mirror pods when a mirror pod changed (a deleted mirror pod is recreated).
func (k *Kubelet) onPod(obj any) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}

	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}

	k.queue.Add(podKey(pod))

	if isMirrorPod(pod) {
		k.queue.Add(keyMirror)
	}
}

// processNext handles one queued key; it returns false once the queue is shut down.
func (k *Kubelet) processNext(ctx context.Context) bool {
	key, shutdown := k.queue.Get()
	if shutdown {
		return false
	}

	defer k.queue.Done(key)

	if err := k.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			k.logger.Debug("sync failed, retrying", zap.String("key", key), zap.Error(err))
		}

		k.queue.AddRateLimited(key)

		return true
	}

	k.queue.Forget(key)

	return true
}

func (k *Kubelet) sync(ctx context.Context, key string) error {
	node, ready := k.snapshot()

	switch key {
	case keyNode:
		return k.syncNode(ctx, node, ready)
	case keyLease:
		return k.syncLease(ctx, ready)
	case keyMirror:
		return k.syncMirrorPods(ctx, node, ready)
	default:
		return k.syncPod(ctx, key, node, ready)
	}
}

// syncNode registers the Node if needed and reports its status. While not ready it only marks an existing Node
// NotReady: the kubelet that would report anything else is down.
func (k *Kubelet) syncNode(ctx context.Context, cfg NodeConfig, ready bool) error {
	nodes := k.client.CoreV1().Nodes()

	current, err := nodes.Get(ctx, k.name, metav1.GetOptions{})
	if err != nil {
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading node %q: %w", k.name, err)
		}

		if !ready {
			return nil
		}

		if current, err = nodes.Create(ctx, newNode(cfg, time.Now()), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("registering node %q: %w", k.name, err)
		}

		k.logger.Info("node registered", zap.String("kubelet_version", cfg.KubeletVersion))
	}

	// A kubelet going down reports NotReady once; after that the node lifecycle controller owns the conditions
	// (it turns them Unknown when the Lease runs out), and a down kubelet must not answer it.
	if !ready && readyCondition(current.Status) != corev1.ConditionTrue {
		return nil
	}

	if ready && addLabels(current, nodeLabels(cfg)) {
		if current, err = nodes.Update(ctx, current, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("labelling node %q: %w", k.name, err)
		}
	}

	now := time.Now()
	status := nodeStatus(current.Status, cfg, ready, now)
	heartbeatDue := ready && now.Sub(k.lastReport) >= statusReportIntervalBeats*k.opts.heartbeat

	if !heartbeatDue && !nodeStatusChanged(current.Status, status) {
		return nil
	}

	current.Status = status
	if _, err := nodes.UpdateStatus(ctx, current, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("reporting the status of node %q: %w", k.name, err)
	}

	k.lastReport = now

	return nil
}

// syncLease renews the node's Lease, creating it on first use. A down kubelet renews nothing.
func (k *Kubelet) syncLease(ctx context.Context, ready bool) error {
	if !ready {
		return nil
	}

	leases := k.client.CoordinationV1().Leases(nodeLeaseNamespace)
	now := metav1.NewMicroTime(time.Now())

	lease, err := leases.Get(ctx, k.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err := k.client.CoreV1().Nodes().Get(ctx, k.name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading node %q for its lease: %w", k.name, err)
		}

		if _, err := leases.Create(ctx, newLease(node, now), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating the lease of node %q: %w", k.name, err)
		}

		return nil
	}

	if err != nil {
		return fmt.Errorf("reading the lease of node %q: %w", k.name, err)
	}

	lease.Spec.RenewTime = &now
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renewing the lease of node %q: %w", k.name, err)
	}

	return nil
}
