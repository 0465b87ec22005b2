package upgrade

import (
	"strconv"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// MachineConfigStatusType is the type of MachineConfigStatus resources.
const MachineConfigStatusType = resource.Type("MachineConfigStatuses.upshift.dev")

// MachineApplyingConfig is the step of a config rollout that applies a machine's effective config, or finds that it
// needs a reboot (ApplyConfiguration dry runs, then NO_REBOOT, or the reboot steps).
const MachineApplyingConfig MachinePhase = "ApplyingConfig"

// MachineConfigStatus is the config rollout of one machine (same ID as the Machine): the config it runs, the one
// its cluster's patches make of its base, and the step of the change between them.
type MachineConfigStatus = typed.Resource[MachineConfigStatusSpec, MachineConfigStatusExtension]

// MachineConfigStatusSpec is where one machine's config stands. Configs are named by their version
// (machineconfig.Version), diffs have their secrets redacted.
type MachineConfigStatusSpec struct {
	// Cluster is the ID of the machine's Cluster.
	Cluster string `yaml:"cluster" protobuf:"1"`
	// Phase is the step of the current or last change: empty before the first, then ApplyingConfig; for a change
	// that needs a reboot then (control planes) CheckingEtcd, ForfeitingLeadership, and Cordoning, Draining,
	// Rebooting, WaitingReady, Uncordoning; Done or Failed.
	Phase MachinePhase `yaml:"phase,omitempty" protobuf:"2"`
	// AppliedVersion is the version of the config the machine runs, as the engine applied or first saw it.
	AppliedVersion string `yaml:"appliedVersion,omitempty" protobuf:"3"`
	// TargetVersion is the version of the machine's effective config: its base with its patches, in order.
	TargetVersion string `yaml:"targetVersion,omitempty" protobuf:"4"`
	// Pending says the machine does not run its effective config yet.
	Pending bool `yaml:"pending,omitempty" protobuf:"5"`
	// Diff is the pending change, from the applied config to the effective one, with secrets redacted.
	Diff string `yaml:"diff,omitempty" protobuf:"6"`
	// Patches are the IDs of the patches of the effective config, in the order they apply.
	Patches []string `yaml:"patches,omitempty" protobuf:"7"`
	// Error says why the last change failed, or why the effective config cannot be computed.
	Error string `yaml:"error,omitempty" protobuf:"8"`
	// Waiting says what the current step waits for.
	Waiting string `yaml:"waiting,omitempty" protobuf:"9"`
	// PhaseChangedAt is when Phase was entered.
	PhaseChangedAt time.Time `yaml:"phaseChangedAt,omitempty" protobuf:"10"`
	// ChangeVersion is the version the change in flight (or the last one) applies; it is recorded before the
	// change is sent, so a restart applies the same config, or sees it applied.
	ChangeVersion string `yaml:"changeVersion,omitempty" protobuf:"11"`
	// Base is the machine's config as the engine first saw it, the config its patches apply to. It holds the
	// machine's secrets, so it has no YAML, is sealed at rest (the type is sensitive) and redacted in the API
	// (Redact), like Credentials.
	Base string `yaml:"-" protobuf:"12"`
	// Applied is the config the machine runs (AppliedVersion); secret like Base.
	Applied string `yaml:"-" protobuf:"13"`
	// Change is the config the change in flight applies (ChangeVersion); secret like Base.
	Change string `yaml:"-" protobuf:"14"`
	// Effective is the machine's effective config (TargetVersion); secret like Base.
	Effective string `yaml:"-" protobuf:"15"`
	// PatchSet names the state of the cluster's patches TargetVersion was computed from (cluster.PatchSet).
	PatchSet string `yaml:"patchSet,omitempty" protobuf:"16"`
	// NodeName is the machine's Kubernetes node, recorded when a change that needs a reboot cordons it.
	NodeName string `yaml:"nodeName,omitempty" protobuf:"17"`
	// PreRebootBootID is the machine's boot ID recorded before the change's reboot: a different one afterwards
	// proves the reboot happened, so a restart never sends the change again.
	PreRebootBootID string `yaml:"preRebootBootID,omitempty" protobuf:"18"`
	// Attempt counts the tries of the change to ChangeVersion: a retry of the same config adds one.
	Attempt int `yaml:"attempt,omitempty" protobuf:"19"`
}

// RetryValue is the value of RetryAnnotation that retries this machine's failed config change: the Talos upgrade's
// retry mechanism, with a value naming the config and the attempt, so it never retries a Talos upgrade nor a later
// failure of the same config.
func (s MachineConfigStatusSpec) RetryValue() string {
	return "config:" + s.ChangeVersion + "/" + strconv.Itoa(s.Attempt)
}

// SkipValue is the value of SkipAnnotation that leaves this machine out of the config rollout to its current
// effective config (TargetVersion): it keeps the config it runs, counts as finished and no longer halts the others,
// until its effective config changes again.
func (s MachineConfigStatusSpec) SkipValue() string {
	return "config:" + s.TargetVersion
}

// NewMachineConfigStatus returns an empty MachineConfigStatus for the machine named id.
func NewMachineConfigStatus(id resource.ID) *MachineConfigStatus {
	return resources.NewTyped[MachineConfigStatusSpec, MachineConfigStatusExtension](MachineConfigStatusType, id)
}

// Redact implements resources.Redactor: the configs hold the machine's secrets (its token, its CAs' keys), so the
// API shows them only to a caller allowed to read secrets back, like Credentials.
func (s *MachineConfigStatusSpec) Redact() {
	for _, secret := range []*string{&s.Base, &s.Applied, &s.Change, &s.Effective} {
		if *secret != "" {
			*secret = resources.Redacted
		}
	}
}

// DeepCopy implements typed.DeepCopyable.
func (s MachineConfigStatusSpec) DeepCopy() MachineConfigStatusSpec {
	s.Patches = append([]string(nil), s.Patches...)

	return s
}

// MachineConfigStatusExtension gives MachineConfigStatus its resource definition.
type MachineConfigStatusExtension struct{}

// ResourceDefinition implements typed.Extension.
func (MachineConfigStatusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             MachineConfigStatusType,
		Aliases:          []resource.Type{"machineconfig"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Phase", JSONPath: "{.phase}"},
			{Name: "Applied", JSONPath: "{.appliedVersion}"},
			{Name: "Target", JSONPath: "{.targetVersion}"},
			{Name: "Pending", JSONPath: "{.pending}"},
		},
		Sensitivity: meta.Sensitive, // sealed at rest and redacted in the API (Redact)
	}
}

func init() {
	resources.MustRegisterType[MachineConfigStatusSpec, MachineConfigStatusExtension](MachineConfigStatusType)
}
