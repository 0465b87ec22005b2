package upgrade

import (
	"slices"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// KubernetesUpgradeStatusType is the type of KubernetesUpgradeStatus resources.
const KubernetesUpgradeStatusType = resource.Type("KubernetesUpgradeStatuses.upshift.dev")

// StepState is where one step of a Kubernetes upgrade stands.
type StepState string

// Step states.
const (
	StepPending StepState = "Pending"
	StepRunning StepState = "Running"
	StepDone    StepState = "Done"
	StepSkipped StepState = "Skipped" // e.g. the machine is locked
	StepFailed  StepState = "Failed"
)

// KubernetesUpgradeStatus is the Kubernetes upgrade of one Cluster (same ID).
type KubernetesUpgradeStatus = typed.Resource[KubernetesUpgradeStatusSpec, KubernetesUpgradeStatusExtension]

// KubernetesUpgradeStatusSpec is the plan and progress of a Kubernetes upgrade.
type KubernetesUpgradeStatusSpec struct {
	// Phase is where the upgrade stands (the same phases as a Talos upgrade).
	Phase ClusterPhase `yaml:"phase" protobuf:"1"`
	// FromVersion is the version the cluster ran when the upgrade started.
	FromVersion string `yaml:"fromVersion" protobuf:"2"`
	// ToVersion is the version the cluster is going to.
	ToVersion string `yaml:"toVersion" protobuf:"3"`
	// Steps are the ordered steps: pre-pull per node, apiserver/controller-manager/scheduler per control plane,
	// kube-proxy, kubelet per node.
	Steps []KubernetesUpgradeStep `yaml:"steps,omitempty" protobuf:"4"`
	// CurrentStep is the index in Steps of the step running now.
	CurrentStep int `yaml:"currentStep" protobuf:"5"`
	// Done counts the finished (done or skipped) steps.
	Done int `yaml:"done" protobuf:"6"`
	// Total counts the steps.
	Total int `yaml:"total" protobuf:"7"`
	// PreChecks are the results of the checks run before anything changes.
	PreChecks []PreCheck `yaml:"preChecks,omitempty" protobuf:"8"`
	// Error says why the upgrade is Failed or Blocked.
	Error string `yaml:"error,omitempty" protobuf:"9"`
	// AvailableVersions are the versions a user may pick as the next target.
	AvailableVersions []string `yaml:"availableVersions,omitempty" protobuf:"10"`
}

// KubernetesUpgradeStep is one step of a Kubernetes upgrade.
type KubernetesUpgradeStep struct {
	// Name says what the step does, e.g. "kube-apiserver", "pre-pull", "kubelet".
	Name string `yaml:"name" protobuf:"1"`
	// Machine is the machine the step acts on; empty for cluster-wide steps (kube-proxy).
	Machine string `yaml:"machine,omitempty" protobuf:"2"`
	// State is where the step stands.
	State StepState `yaml:"state" protobuf:"3"`
	// Error says why the step failed.
	Error string `yaml:"error,omitempty" protobuf:"4"`
}

// PreCheck is the result of one pre-upgrade check.
type PreCheck struct {
	// Name names the check, e.g. "removed APIs".
	Name string `yaml:"name" protobuf:"1"`
	// Passed is whether the upgrade may go on as far as this check is concerned.
	Passed bool `yaml:"passed" protobuf:"2"`
	// Message explains a failure.
	Message string `yaml:"message,omitempty" protobuf:"3"`
}

// NewKubernetesUpgradeStatus returns an empty KubernetesUpgradeStatus for the cluster named id.
func NewKubernetesUpgradeStatus(id resource.ID) *KubernetesUpgradeStatus {
	return resources.NewTyped[KubernetesUpgradeStatusSpec, KubernetesUpgradeStatusExtension](KubernetesUpgradeStatusType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s KubernetesUpgradeStatusSpec) DeepCopy() KubernetesUpgradeStatusSpec {
	s.Steps = slices.Clone(s.Steps)
	s.PreChecks = slices.Clone(s.PreChecks)
	s.AvailableVersions = slices.Clone(s.AvailableVersions)

	return s
}

// KubernetesUpgradeStatusExtension gives KubernetesUpgradeStatus its resource definition.
type KubernetesUpgradeStatusExtension struct{}

// ResourceDefinition implements typed.Extension.
func (KubernetesUpgradeStatusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             KubernetesUpgradeStatusType,
		Aliases:          []resource.Type{"kubernetesupgrade", "kubernetesupgrades", "k8supgrade"},
		DefaultNamespace: resources.Namespace,
		PrintColumns:     clusterUpgradeColumns,
	}
}

func init() {
	resources.MustRegisterType[KubernetesUpgradeStatusSpec, KubernetesUpgradeStatusExtension](KubernetesUpgradeStatusType)
}
