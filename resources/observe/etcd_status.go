package observe

import (
	"slices"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// EtcdStatusType is the type of EtcdStatus resources.
const EtcdStatusType = resource.Type("EtcdStatuses.upshift.dev")

// EtcdStatus is the observed etcd cluster of one Cluster (same ID). A control plane is upgraded only when it says
// one member may leave without losing quorum.
type EtcdStatus = typed.Resource[EtcdStatusSpec, EtcdStatusExtension]

// EtcdStatusSpec is one observation of a cluster's etcd.
type EtcdStatusSpec struct {
	// Members lists every member, in member-ID order.
	Members []EtcdMember `yaml:"members" protobuf:"1"`
	// Leader is the member ID of the leader; empty when there is none.
	Leader string `yaml:"leader" protobuf:"2"`
	// Healthy is true when every member is started and healthy.
	Healthy bool `yaml:"healthy" protobuf:"3"`
	// CanLoseMember is true when any one member may go down without losing quorum.
	CanLoseMember bool `yaml:"canLoseMember" protobuf:"4"`
	// Error is why etcd could not be observed, if it could not.
	Error string `yaml:"error,omitempty" protobuf:"5"`
	// Reason says why no member may leave, when CanLoseMember is false.
	Reason string `yaml:"reason,omitempty" protobuf:"6"`
}

// EtcdMember is one member of an etcd cluster.
type EtcdMember struct {
	// ID is the etcd member ID, in hex.
	ID string `yaml:"id" protobuf:"1"`
	// Machine is the ID of the Machine that runs the member.
	Machine string `yaml:"machine" protobuf:"2"`
	// Started is false for a member that has been added but never joined.
	Started bool `yaml:"started" protobuf:"3"`
	// Healthy is the member's own health check.
	Healthy bool `yaml:"healthy" protobuf:"4"`
	// Learner members do not count towards quorum.
	Learner bool `yaml:"learner,omitempty" protobuf:"5"`
}

// NewEtcdStatus returns an empty EtcdStatus for the cluster named id.
func NewEtcdStatus(id resource.ID) *EtcdStatus {
	return resources.NewTyped[EtcdStatusSpec, EtcdStatusExtension](EtcdStatusType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s EtcdStatusSpec) DeepCopy() EtcdStatusSpec {
	s.Members = slices.Clone(s.Members)

	return s
}

// EtcdStatusExtension gives EtcdStatus its resource definition.
type EtcdStatusExtension struct{}

// ResourceDefinition implements typed.Extension.
func (EtcdStatusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             EtcdStatusType,
		Aliases:          []resource.Type{"etcd"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Members", JSONPath: "{.members[*].machine}"},
			{Name: "Leader", JSONPath: "{.leader}"},
			{Name: "Healthy", JSONPath: "{.healthy}"},
			{Name: "Can Lose Member", JSONPath: "{.canLoseMember}"},
		},
	}
}

func init() {
	resources.MustRegisterType[EtcdStatusSpec, EtcdStatusExtension](EtcdStatusType)
}
