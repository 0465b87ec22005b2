package observe

import (
	"slices"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// ClusterSummaryType is the type of ClusterSummary resources.
const ClusterSummaryType = resource.Type("ClusterSummaries.upshift.dev")

// ClusterSummary counts the machines of one Cluster (same ID) by role and lock, next to the versions the cluster
// asks for, so one `get` answers "what does this cluster consist of".
type ClusterSummary = typed.Resource[ClusterSummarySpec, ClusterSummaryExtension]

// ClusterSummarySpec is the per-cluster tally.
type ClusterSummarySpec struct {
	// TalosVersion is the Cluster's desired Talos version.
	TalosVersion string `yaml:"talosVersion" protobuf:"1"`
	// KubernetesVersion is the Cluster's desired Kubernetes version.
	KubernetesVersion string `yaml:"kubernetesVersion" protobuf:"2"`
	// Machines counts every Machine of the cluster.
	Machines int `yaml:"machines" protobuf:"3"`
	// ControlPlanes counts the control-plane machines.
	ControlPlanes int `yaml:"controlPlanes" protobuf:"4"`
	// Workers counts the worker machines.
	Workers int `yaml:"workers" protobuf:"5"`
	// Locked lists the locked machines, sorted.
	Locked []string `yaml:"locked,omitempty" protobuf:"6"`
}

// NewClusterSummary returns an empty ClusterSummary for the cluster named id.
func NewClusterSummary(id resource.ID) *ClusterSummary {
	return resources.NewTyped[ClusterSummarySpec, ClusterSummaryExtension](ClusterSummaryType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ClusterSummarySpec) DeepCopy() ClusterSummarySpec {
	s.Locked = slices.Clone(s.Locked)

	return s
}

// ClusterSummaryExtension gives ClusterSummary its resource definition.
type ClusterSummaryExtension struct{}

// ResourceDefinition implements typed.Extension.
func (ClusterSummaryExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             ClusterSummaryType,
		Aliases:          []resource.Type{"summary"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Talos", JSONPath: "{.talosVersion}"},
			{Name: "Kubernetes", JSONPath: "{.kubernetesVersion}"},
			{Name: "Machines", JSONPath: "{.machines}"},
			{Name: "Control Planes", JSONPath: "{.controlPlanes}"},
			{Name: "Workers", JSONPath: "{.workers}"},
			{Name: "Locked", JSONPath: "{.locked[*]}"},
		},
	}
}

func init() {
	resources.MustRegisterType[ClusterSummarySpec, ClusterSummaryExtension](ClusterSummaryType)
}
