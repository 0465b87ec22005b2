package upgrade

import (
	"strconv"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// MachineUpgradeStatusType is the type of MachineUpgradeStatus resources.
const MachineUpgradeStatusType = resource.Type("MachineUpgradeStatuses.upshift.dev")

// MachinePhase is one step of the per-machine Talos upgrade state machine.
type MachinePhase string

// Per-machine phases, in the order a machine goes through them (control-plane-only steps marked).
const (
	MachineQueued               MachinePhase = "Queued"
	MachinePullingImage         MachinePhase = "PullingImage"
	MachineInstalling           MachinePhase = "Installing"
	MachineCheckingEtcd         MachinePhase = "CheckingEtcd"         // control planes only
	MachineForfeitingLeadership MachinePhase = "ForfeitingLeadership" // control planes only
	MachineCordoning            MachinePhase = "Cordoning"
	MachineDraining             MachinePhase = "Draining"
	MachineRebooting            MachinePhase = "Rebooting"
	MachineWaitingReady         MachinePhase = "WaitingReady"
	MachineUncordoning          MachinePhase = "Uncordoning"
	MachineDone                 MachinePhase = "Done"
	MachineFailed               MachinePhase = "Failed"
)

// InFlight reports whether a machine in phase p holds a rollout slot: it has left Queued and has neither finished
// nor failed.
func (p MachinePhase) InFlight() bool {
	switch p {
	case "", MachineQueued, MachineDone, MachineFailed:
		return false
	default:
		return true
	}
}

// MachineUpgradeStatus is the Talos upgrade of one machine (same ID as the Machine).
type MachineUpgradeStatus = typed.Resource[MachineUpgradeStatusSpec, MachineUpgradeStatusExtension]

// MachineUpgradeStatusSpec is where one machine's upgrade stands.
type MachineUpgradeStatusSpec struct {
	// Cluster is the ID of the machine's Cluster.
	Cluster string `yaml:"cluster" protobuf:"1"`
	// Phase is the current step.
	Phase MachinePhase `yaml:"phase" protobuf:"2"`
	// FromVersion is the version the machine ran before this upgrade.
	FromVersion string `yaml:"fromVersion" protobuf:"3"`
	// ToVersion is the version the machine is going to.
	ToVersion string `yaml:"toVersion" protobuf:"4"`
	// Attempt counts the tries of this upgrade to ToVersion, starting at 1: a retry adds one, the next hop starts
	// again at 1.
	Attempt int `yaml:"attempt" protobuf:"5"`
	// PreRebootBootID is the boot ID recorded before the reboot; a different one afterwards proves the reboot.
	PreRebootBootID string `yaml:"preRebootBootID,omitempty" protobuf:"6"`
	// StartedAt is when the machine left Queued.
	StartedAt time.Time `yaml:"startedAt,omitempty" protobuf:"7"`
	// PhaseChangedAt is when Phase was entered.
	PhaseChangedAt time.Time `yaml:"phaseChangedAt,omitempty" protobuf:"8"`
	// FinishedAt is when the machine reached Done or Failed.
	FinishedAt time.Time `yaml:"finishedAt,omitempty" protobuf:"9"`
	// Error says why the machine Failed: it starts with the reason ("rolled back", "timeout", "drain", "pull",
	// "install", ...), then the details. While Phase is Uncordoning it is the failure that step leads to.
	Error string `yaml:"error,omitempty" protobuf:"10"`
	// NodeName is the machine's Kubernetes node name, observed when the upgrade started.
	NodeName string `yaml:"nodeName,omitempty" protobuf:"11"`
	// Image is the installer image the upgrade installs.
	Image string `yaml:"image,omitempty" protobuf:"12"`
	// Waiting says what the current step waits for (e.g. the etcd gate refusing), when it waits.
	Waiting string `yaml:"waiting,omitempty" protobuf:"13"`
	// InstallUnconfirmed says that the install of the lifecycle flow (LifecycleService.Upgrade) may or may not have
	// reached the machine: the engine restarted inside Installing and did not send it again, since a second install
	// before the reboot could overwrite the fallback boot entry. The machine's version after the reboot tells: on
	// the target it is cleared; back on FromVersion the machine installs again, once.
	InstallUnconfirmed bool `yaml:"installUnconfirmed,omitempty" protobuf:"14"`
	// Cordoned is set when the upgrade enters Cordoning and cleared once Uncordoning succeeded: a failure while it is
	// set uncordons the node first, whatever step the failure comes from (a retarget or a second install round can
	// put a cordoned machine back in a step before Cordoning).
	Cordoned bool `yaml:"cordoned,omitempty" protobuf:"15"`
	// Held says that the machine was locked while its upgrade ran, before the point of no return
	// (rollout.HoldsForLock): it stops (through Uncordoning when it was cordoned) and waits in Queued, on its old
	// version, until it is unlocked and admitted again; the attempt it was in is not counted as a new one.
	Held bool `yaml:"held,omitempty" protobuf:"16"`
}

// User actions on a failed or stuck machine upgrade. They are annotations on the Machine (an input users write),
// because MachineUpgradeStatus belongs to the engine; each names what it applies to, so a stale one does nothing.
const (
	// RetryAnnotation on a Machine retries its failed upgrade: its value is the failed upgrade's RetryValue (or the
	// failed config change's, MachineConfigStatusSpec.RetryValue). The
	// machine goes back to Queued and starts again, from the beginning, once the rollout rules allow it.
	RetryAnnotation = "upshift.dev/retry-attempt"
	// SkipAnnotation on a Machine leaves it out of the Talos rollout to the version its value names (the cluster's
	// target, whatever hop the machine was on): it counts as finished, neither blocks nor holds a slot, a failure
	// of it no longer halts the others, and TalosUpgradeStatus lists it as skipped. A value naming a config
	// (MachineConfigStatusSpec.SkipValue) does the same for the config rollout.
	SkipAnnotation = "upshift.dev/skip-version"
)

// RetryValue is the value of RetryAnnotation that retries this upgrade: its target and attempt, so a retry asked
// for one failure never retries a later one (a new hop starts again at attempt 1).
func (s MachineUpgradeStatusSpec) RetryValue() string {
	return s.ToVersion + "/" + strconv.Itoa(s.Attempt)
}

// FailureReason is the reason Error starts with ("rolled back", "timeout", "drain", "pull", ...), without its
// details: a short word from a fixed set, fit for a metric label or a log search.
func (s MachineUpgradeStatusSpec) FailureReason() string {
	reason, _, _ := strings.Cut(s.Error, ":")

	return reason
}

// NewMachineUpgradeStatus returns an empty MachineUpgradeStatus for the machine named id.
func NewMachineUpgradeStatus(id resource.ID) *MachineUpgradeStatus {
	return resources.NewTyped[MachineUpgradeStatusSpec, MachineUpgradeStatusExtension](MachineUpgradeStatusType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s MachineUpgradeStatusSpec) DeepCopy() MachineUpgradeStatusSpec { return s }

// MachineUpgradeStatusExtension gives MachineUpgradeStatus its resource definition.
type MachineUpgradeStatusExtension struct{}

// ResourceDefinition implements typed.Extension.
func (MachineUpgradeStatusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             MachineUpgradeStatusType,
		Aliases:          []resource.Type{"machineupgrade", "machineupgrades"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Cluster", JSONPath: "{.cluster}"},
			{Name: "Phase", JSONPath: "{.phase}"},
			{Name: "From", JSONPath: "{.fromVersion}"},
			{Name: "To", JSONPath: "{.toVersion}"},
			{Name: "Attempt", JSONPath: "{.attempt}"},
			{Name: "Waiting", JSONPath: "{.waiting}"},
			{Name: "Error", JSONPath: "{.error}"},
		},
	}
}

func init() {
	resources.MustRegisterType[MachineUpgradeStatusSpec, MachineUpgradeStatusExtension](MachineUpgradeStatusType)
}
