package talosemu

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// KubernetesRunner starts the Kubernetes half of an emulated cluster (a real kube-apiserver and controller manager
// on the cluster's etcd members, and one emulated kubelet per node). It is an interface so that this package does not
// depend on how the Kubernetes processes are built or started; internal/kubeemu provides the real one.
type KubernetesRunner interface {
	StartControlPlane(ctx context.Context, cfg KubernetesControlPlaneConfig) (KubernetesControlPlane, error)
}

// KubernetesControlPlaneConfig describes the control plane to start for one emulated cluster.
type KubernetesControlPlaneConfig struct {
	// Cluster is the emulated cluster's name (c1, c2, ...).
	Cluster string
	// Dir is a directory the control plane may keep its files in.
	Dir string
	// EtcdEndpoints are the client URLs of the cluster's etcd members.
	EtcdEndpoints []string
	Logger        *zap.Logger
}

// KubernetesControlPlane is a running Kubernetes control plane of one emulated cluster.
type KubernetesControlPlane interface {
	// Kubeconfig is an admin kubeconfig for the cluster, handed out by MachineService.Kubeconfig and written to
	// DIR/CLUSTER/kubeconfig.
	Kubeconfig() []byte
	// StartKubelet starts playing one node's kubelet; it stops when ctx ends.
	StartKubelet(ctx context.Context, node KubeletConfig) (Kubelet, error)
	// ApplyManifests server-side applies bootstrap manifest objects, as the bootstrap node of a Talos cluster
	// applies its rendered manifests.
	ApplyManifests(ctx context.Context, objects []map[string]any) error
	// InterruptAPIServer makes the cluster's API endpoint unreachable for d, as its clients see a kube-apiserver
	// restart: connections open now are cut and new ones refused until d has passed. It returns once the endpoint
	// serves again.
	InterruptAPIServer(ctx context.Context, d time.Duration) error
	// StopAPIServer stops the cluster's kube-apiserver process until StartAPIServer, for faults that need a real
	// outage of the API server (every client, the controller manager and kubelets too) held as long as a test needs.
	StopAPIServer() error
	// StartAPIServer starts the kube-apiserver stopped by StopAPIServer again, as it was (same port, certificates
	// and etcd), and returns once it is ready.
	StartAPIServer(ctx context.Context) error
	Stop() error
}

// Kubelet is the emulated kubelet of one node, driven by the node's life: NotReady while it reboots, a new version
// and new static pod images when its machine config or Talos version changes.
type Kubelet interface {
	SetReady(ready bool)
	Update(node KubeletConfig)
}

// KubeletConfig is what an emulated kubelet needs to know about its node, rendered from the machine config.
type KubeletConfig struct {
	// Name is the Kubernetes node name, equal to the Talos node name.
	Name string
	// KubeletVersion is the kubelet version with a "v" prefix, from the kubelet image tag.
	KubeletVersion string
	ControlPlane   bool
	// StaticPods are the control-plane static pods (kube-apiserver, kube-controller-manager, kube-scheduler).
	StaticPods []StaticPod
	// StaticPodRestart is how long a static pod the kubelet (re)starts stays not Ready.
	StaticPodRestart time.Duration
	// OSImage is what the Node reports as its OS image, e.g. "Talos (v1.14.1)".
	OSImage string
}

// StaticPod is one static pod of a control-plane node, mirrored into the API server by the kubelet.
type StaticPod struct {
	Name  string
	Image string
	// Annotations carry talos.dev/config-version, which clients wait for after a configuration change.
	Annotations map[string]string
}
