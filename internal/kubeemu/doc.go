// Package kubeemu gives the emulated Talos fleet a real Kubernetes control plane and emulated kubelets, so the
// engine's Kubernetes side (node versions, cordon, drain through the eviction API, PodDisruptionBudgets, static pod
// images) meets the real API semantics instead of a fake clientset.
//
// StartControlPlane runs kube-apiserver, kube-controller-manager and kube-scheduler, built from k8s.io/kubernetes by
// `make kube-bins` (module integration/kubebins) and found through $UPSHIFT_KUBE_BIN_DIR, as child processes on the
// etcd members the caller provides. The PKI is generated in Go; clients get an admin kubeconfig.
//
// No container runs: a Kubelet per node plays the kubelet's part against the API. It registers the Node and keeps
// it Ready (or reports it NotReady while the node is down), publishes mirror pods for the static control-plane
// pods, reports pods bound to its node Running and Ready, and finishes a terminating pod's deletion once the pod's
// grace period has passed, as a real kubelet does after stopping the containers.
package kubeemu
