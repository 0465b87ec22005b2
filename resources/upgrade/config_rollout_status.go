package upgrade

import (
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// ConfigRolloutStatusType is the type of ConfigRolloutStatus resources.
const ConfigRolloutStatusType = resource.Type("ConfigRolloutStatuses.upshift.dev")

// ConfigRolloutStatus is the rollout of one Cluster's config patches (same ID): which machines change their
// config now, and what the rollout waits for. Its phases are the cluster phases of a Talos upgrade, with
// Upgrading meaning that machines change their config.
type ConfigRolloutStatus = typed.Resource[ConfigRolloutStatusSpec, ConfigRolloutStatusExtension]

// ConfigRolloutStatusSpec is the progress of a config rollout.
type ConfigRolloutStatusSpec struct {
	// Phase is where the rollout stands (Done when every machine runs its effective config).
	Phase ClusterPhase `yaml:"phase" protobuf:"1"`
	// Admitted lists the machines the rollout started that have not finished yet: the durable scheduling decision.
	Admitted []string `yaml:"admitted,omitempty" protobuf:"2"`
	// Current lists the machines changing their config now (in flight or admitted).
	Current []string `yaml:"current,omitempty" protobuf:"3"`
	// Done counts the machines on their effective config; Total counts all.
	Done  int `yaml:"done" protobuf:"4"`
	Total int `yaml:"total" protobuf:"5"`
	// WaitingOnLock lists the locked machines with a pending change.
	WaitingOnLock []string `yaml:"waitingOnLock,omitempty" protobuf:"6"`
	// FailedMachine is the machine that failed, when Phase is Failed.
	FailedMachine string `yaml:"failedMachine,omitempty" protobuf:"7"`
	// Error says why the rollout is Failed or Blocked.
	Error string `yaml:"error,omitempty" protobuf:"8"`
	// Reason says what the rollout waits for when no machine can start.
	Reason string `yaml:"reason,omitempty" protobuf:"9"`
	// Unlocked lists the machines that waited on a lock in this rollout and were unlocked but have not started yet,
	// in the order they go (rollout.UnlockOrder).
	Unlocked []string `yaml:"unlocked,omitempty" protobuf:"10"`
	// Skipped lists the machines a user left out of the rollout to their current effective config (`upshift
	// upgrade skip`, MachineConfigStatusSpec.SkipValue): they keep the config they run.
	Skipped []string `yaml:"skipped,omitempty" protobuf:"11"`
}

// NewConfigRolloutStatus returns an empty ConfigRolloutStatus for the cluster named id.
func NewConfigRolloutStatus(id resource.ID) *ConfigRolloutStatus {
	return resources.NewTyped[ConfigRolloutStatusSpec, ConfigRolloutStatusExtension](ConfigRolloutStatusType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ConfigRolloutStatusSpec) DeepCopy() ConfigRolloutStatusSpec {
	s.Admitted = append([]string(nil), s.Admitted...)
	s.Current = append([]string(nil), s.Current...)
	s.WaitingOnLock = append([]string(nil), s.WaitingOnLock...)
	s.Unlocked = append([]string(nil), s.Unlocked...)
	s.Skipped = append([]string(nil), s.Skipped...)

	return s
}

// ConfigRolloutStatusExtension gives ConfigRolloutStatus its resource definition.
type ConfigRolloutStatusExtension struct{}

// ResourceDefinition implements typed.Extension.
func (ConfigRolloutStatusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             ConfigRolloutStatusType,
		Aliases:          []resource.Type{"configrollout"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Phase", JSONPath: "{.phase}"},
			{Name: "Done", JSONPath: "{.done}"},
			{Name: "Total", JSONPath: "{.total}"},
		},
	}
}

func init() {
	resources.MustRegisterType[ConfigRolloutStatusSpec, ConfigRolloutStatusExtension](ConfigRolloutStatusType)
}
