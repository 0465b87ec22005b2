// Package observe holds the output resources that report what the engine observes of the fleet: MachineStatus,
// EtcdStatus and the per-cluster ClusterSummary. Only controllers write them.
package observe

import (
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// MachineStatusType is the type of MachineStatus resources.
const MachineStatusType = resource.Type("MachineStatuses.upshift.dev")

// MachineStatus is what the engine last observed of one machine; its ID is the Machine's ID. Upgrade decisions
// (resume after a crash, rolled back or not) are made from it, never from what the engine believes it did.
type MachineStatus = typed.Resource[MachineStatusSpec, MachineStatusExtension]

// MachineStatusSpec is one observation of a machine.
type MachineStatusSpec struct {
	// Cluster is the ID of the machine's Cluster.
	Cluster string `yaml:"cluster" protobuf:"1"`
	// TalosVersion is the Talos version the machine runs.
	TalosVersion string `yaml:"talosVersion" protobuf:"2"`
	// Stage is the Talos machine stage (Booting, Running, Rebooting, ...).
	Stage string `yaml:"stage" protobuf:"3"`
	// Ready is Talos' own readiness of the machine.
	Ready bool `yaml:"ready" protobuf:"4"`
	// BootID changes on every boot; a new one proves a reboot happened.
	BootID string `yaml:"bootID" protobuf:"5"`
	// NodeName is the machine's Kubernetes node name.
	NodeName string `yaml:"nodeName" protobuf:"6"`
	// KubeletVersion is the version the node's kubelet reports.
	KubeletVersion string `yaml:"kubeletVersion" protobuf:"7"`
	// EtcdMember is the machine's etcd member ID; empty on workers.
	EtcdMember string `yaml:"etcdMember,omitempty" protobuf:"8"`
	// Reachable is whether the last call to the machine's Talos API succeeded.
	Reachable bool `yaml:"reachable" protobuf:"9"`
	// Error is why the machine is unreachable, if it is.
	Error string `yaml:"error,omitempty" protobuf:"10"`
	// Cordoned is whether the machine's Kubernetes node is marked unschedulable.
	Cordoned bool `yaml:"cordoned,omitempty" protobuf:"11"`
	// KubernetesError says why the node could not be read from Kubernetes, if it could not.
	KubernetesError string `yaml:"kubernetesError,omitempty" protobuf:"12"`
	// ObservedAt is when an observation last changed this status, or last came after the machine's upgrade entered
	// a new phase: an upgrade phase entered later has not been observed yet, and views pair the two accordingly
	// (internal/machineview). A poll that finds nothing new keeps it, so that it writes nothing.
	ObservedAt time.Time `yaml:"observedAt,omitempty" protobuf:"13"`
}

// NewMachineStatus returns an empty MachineStatus for the machine named id.
func NewMachineStatus(id resource.ID) *MachineStatus {
	return resources.NewTyped[MachineStatusSpec, MachineStatusExtension](MachineStatusType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s MachineStatusSpec) DeepCopy() MachineStatusSpec { return s }

// MachineStatusExtension gives MachineStatus its resource definition.
type MachineStatusExtension struct{}

// ResourceDefinition implements typed.Extension.
func (MachineStatusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             MachineStatusType,
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Cluster", JSONPath: "{.cluster}"},
			{Name: "Talos", JSONPath: "{.talosVersion}"},
			{Name: "Kubelet", JSONPath: "{.kubeletVersion}"},
			{Name: "Stage", JSONPath: "{.stage}"},
			{Name: "Ready", JSONPath: "{.ready}"},
			{Name: "Reachable", JSONPath: "{.reachable}"},
		},
	}
}

func init() {
	resources.MustRegisterType[MachineStatusSpec, MachineStatusExtension](MachineStatusType)
}
