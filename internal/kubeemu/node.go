package kubeemu

import (
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeCapacity is what every emulated node offers the scheduler: enough for any test workload.
var nodeCapacity = corev1.ResourceList{
	corev1.ResourceCPU:              resource.MustParse("4"),
	corev1.ResourceMemory:           resource.MustParse("8Gi"),
	corev1.ResourcePods:             resource.MustParse("110"),
	corev1.ResourceEphemeralStorage: resource.MustParse("20Gi"),
}

// kubeletPort is the port a kubelet advertises in status.daemonEndpoints.
const kubeletPort = 10250

// newNode is the Node a kubelet registers: labels, its status, and the control-plane taint unless scheduling is
// allowed there.
func newNode(cfg NodeConfig, now time.Time) *corev1.Node {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.Name, Labels: nodeLabels(cfg)},
		// A kubelet registers its Node with its status already set (kubelet's initialNode calls setNodeStatus), so
		// no reader ever sees a Node without its kubelet version.
		Status: nodeStatus(corev1.NodeStatus{}, cfg, true, now),
	}

	if cfg.ControlPlane && !cfg.AllowSchedulingOnControlPlane {
		node.Spec.Taints = []corev1.Taint{{Key: LabelControlPlane, Effect: corev1.TaintEffectNoSchedule}}
	}

	return node
}

// nodeLabels are the labels the kubelet (and Talos, for the role) puts on its Node.
func nodeLabels(cfg NodeConfig) map[string]string {
	labels := map[string]string{
		LabelHostname: cfg.Name,
		LabelOS:       "linux",
		LabelArch:     "amd64",
	}

	if cfg.ControlPlane {
		labels[LabelControlPlane] = ""
	}

	return labels
}

// addLabels sets want on node, keeping labels others added; it reports whether anything changed.
func addLabels(node *corev1.Node, want map[string]string) bool {
	changed := false

	for key, value := range want {
		if current, ok := node.Labels[key]; ok && current == value {
			continue
		}

		if node.Labels == nil {
			node.Labels = map[string]string{}
		}

		node.Labels[key] = value
		changed = true
	}

	return changed
}

// nodeStatus is the status to report from the current one. A down kubelet only flips the Ready condition; an up one
// reports everything. Transition times change only when a condition's status does.
func nodeStatus(current corev1.NodeStatus, cfg NodeConfig, ready bool, now time.Time) corev1.NodeStatus {
	status := *current.DeepCopy()
	stamp := metav1.NewTime(now)

	readyCondition := corev1.NodeCondition{
		Type:    corev1.NodeReady,
		Status:  corev1.ConditionTrue,
		Reason:  "KubeletReady",
		Message: "kubelet is posting ready status",
	}
	if !ready {
		readyCondition.Status = corev1.ConditionFalse
		readyCondition.Reason = "KubeletNotReady"
		readyCondition.Message = "node is shutting down"
	}

	conditions := []corev1.NodeCondition{readyCondition}

	if ready {
		conditions = append(conditions,
			corev1.NodeCondition{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory"},
			corev1.NodeCondition{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure"},
			corev1.NodeCondition{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID"},
		)
	}

	for _, condition := range conditions {
		condition.LastHeartbeatTime = stamp
		condition.LastTransitionTime = stamp
		status.Conditions = setCondition(status.Conditions, condition, nodeConditionFields)
	}

	if !ready {
		return status
	}

	osImage := cfg.OSImage
	if osImage == "" {
		osImage = "Talos"
	}

	status.NodeInfo.KubeletVersion = cfg.KubeletVersion
	status.NodeInfo.OSImage = osImage
	status.NodeInfo.OperatingSystem = "linux"
	status.NodeInfo.Architecture = "amd64"
	status.NodeInfo.ContainerRuntimeVersion = "containerd://2.1.0"
	status.Capacity = nodeCapacity.DeepCopy()
	status.Allocatable = nodeCapacity.DeepCopy()
	status.DaemonEndpoints.KubeletEndpoint.Port = kubeletPort
	status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: cfg.Name}}

	if cfg.InternalIP != "" {
		status.Addresses = append([]corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: cfg.InternalIP}},
			status.Addresses...)
	}

	return status
}

// readyCondition returns the status of the Node's Ready condition, "" when it has none.
func readyCondition(status corev1.NodeStatus) corev1.ConditionStatus {
	for _, condition := range status.Conditions {
		if condition.Type == corev1.NodeReady {
			return condition.Status
		}
	}

	return ""
}

// nodeStatusChanged reports whether want differs from current in anything but heartbeat times.
func nodeStatusChanged(current, want corev1.NodeStatus) bool {
	strip := func(status corev1.NodeStatus) corev1.NodeStatus {
		status = *status.DeepCopy()
		for i := range status.Conditions {
			status.Conditions[i].LastHeartbeatTime = metav1.Time{}
		}

		return status
	}

	return !apiequality.Semantic.DeepEqual(strip(current), strip(want))
}

// newLease is the node's first Lease, owned by its Node so it goes away with it.
func newLease(node *corev1.Node, now metav1.MicroTime) *coordinationv1.Lease {
	holder := node.Name
	duration := int32(leaseDurationSeconds)

	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:      node.Name,
			Namespace: nodeLeaseNamespace,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
			}},
		},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       &holder,
			LeaseDurationSeconds: &duration,
			RenewTime:            &now,
		},
	}
}
