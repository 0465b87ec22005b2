// Package upgrade holds the output resources that carry upgrade progress: TalosUpgradeStatus and
// KubernetesUpgradeStatus per cluster, MachineUpgradeStatus per machine. Only controllers write them; every phase
// change is one persisted write, made before the side effect it announces.
package upgrade

import (
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// TalosUpgradeStatusType is the type of TalosUpgradeStatus resources.
const TalosUpgradeStatusType = resource.Type("TalosUpgradeStatuses.upshift.dev")

// ClusterPhase is where a cluster-wide upgrade stands.
type ClusterPhase string

// Cluster-wide upgrade phases.
const (
	// PhasePending: an upgrade is wanted and has not started.
	PhasePending ClusterPhase = "Pending"
	// PhaseUpgrading: machines are being upgraded.
	PhaseUpgrading ClusterPhase = "Upgrading"
	// PhaseReverting: the desired version was set back mid-upgrade; upgraded machines go back.
	PhaseReverting ClusterPhase = "Reverting"
	// PhasePaused: the Cluster is paused; no new machine starts.
	PhasePaused ClusterPhase = "Paused"
	// PhaseBlocked: the rollout cannot go on until something changes: no plan leads to the target, only locked
	// machines are left, or etcd has refused a control plane for longer than the grace period. Error says which.
	PhaseBlocked ClusterPhase = "Blocked"
	// PhaseFailed: a machine failed; nothing new starts until a user retries, skips or reverts.
	PhaseFailed ClusterPhase = "Failed"
	// PhaseDone: every machine runs the target version.
	PhaseDone ClusterPhase = "Done"
)

// TalosUpgradeStatus is the Talos OS upgrade of one Cluster (same ID).
type TalosUpgradeStatus = typed.Resource[TalosUpgradeStatusSpec, TalosUpgradeStatusExtension]

// TalosUpgradeStatusSpec is the plan and progress of a Talos upgrade.
type TalosUpgradeStatusSpec struct {
	// Phase is where the upgrade stands.
	Phase ClusterPhase `yaml:"phase" protobuf:"1"`
	// FromVersion is the version the cluster ran when the upgrade started.
	FromVersion string `yaml:"fromVersion" protobuf:"2"`
	// ToVersion is the version the cluster is going to.
	ToVersion string `yaml:"toVersion" protobuf:"3"`
	// Plan lists the versions the cluster goes through, intermediate hops first, ToVersion last.
	Plan []string `yaml:"plan,omitempty" protobuf:"4"`
	// Current lists the machines being upgraded right now.
	Current []string `yaml:"current,omitempty" protobuf:"5"`
	// Done counts the machines on ToVersion.
	Done int `yaml:"done" protobuf:"6"`
	// Total counts the machines the upgrade covers.
	Total int `yaml:"total" protobuf:"7"`
	// WaitingOnLock lists the machines skipped because they are locked.
	WaitingOnLock []string `yaml:"waitingOnLock,omitempty" protobuf:"8"`
	// FailedMachine is the machine that failed, when Phase is Failed.
	FailedMachine string `yaml:"failedMachine,omitempty" protobuf:"9"`
	// Error says why the upgrade is Failed or Blocked.
	Error string `yaml:"error,omitempty" protobuf:"10"`
	// AvailableVersions are the versions a user may pick as the next target.
	AvailableVersions []string `yaml:"availableVersions,omitempty" protobuf:"11"`
	// Target is the version machines are being moved to now: the current hop of Plan.
	Target string `yaml:"target,omitempty" protobuf:"12"`
	// Direction says whether the change is an "upgrade", a "downgrade" or both ("upgrade and downgrade").
	Direction string `yaml:"direction,omitempty" protobuf:"13"`
	// Admitted lists the machines the rollout started toward Target that have not finished yet: the durable
	// scheduling decision, so a restart never starts more machines than the parallelism allows.
	Admitted []string `yaml:"admitted,omitempty" protobuf:"14"`
	// Reverting is true while the cluster goes back to the version an unfinished upgrade started from.
	Reverting bool `yaml:"reverting,omitempty" protobuf:"15"`
	// Reason says what the rollout waits for when no machine can start (a lock, a slot, a pause).
	Reason string `yaml:"reason,omitempty" protobuf:"16"`
	// Skipped lists the machines a user left out of this upgrade (`upshift upgrade skip`): they stay on their
	// version while the others go on, and the upgrade can finish without them.
	Skipped []string `yaml:"skipped,omitempty" protobuf:"17"`
	// EtcdWaitSince is when the rollout started waiting on the etcd gate (a control plane waiting to leave); the
	// wait is routine (Upgrading) for a grace period, then the cluster is Blocked. Zero when nothing waits on etcd.
	EtcdWaitSince time.Time `yaml:"etcdWaitSince,omitempty" protobuf:"18"`
	// YieldsTo names the Kubernetes upgrade whose turn it is (its target, when Turn is "kubernetes"): the
	// Kubernetes upgrade changes nothing before it reads this. Empty when the turn is another rollout's.
	YieldsTo string `yaml:"yieldsTo,omitempty" protobuf:"19"`
	// LastControlPlane is the control plane that goes last in every hop of the plan: the etcd leader when the plan
	// was made, so leadership moves once. It is fixed with the plan, not followed, because leadership moves during a
	// rollout to a member no one can predict, and the dry run must show the order the engine keeps.
	LastControlPlane string `yaml:"lastControlPlane,omitempty" protobuf:"20"`
	// Turn names the rollout of the cluster that may change machines now ("talos", "kubernetes", "config"; empty
	// when none has work): the cluster's rollouts never change machines at once, and this controller, which
	// decides the Talos and config rollouts, gives the turn (rollout.Turn, docs/architecture.md "Turns").
	Turn string `yaml:"turn,omitempty" protobuf:"21"`
	// Unlocked lists the machines that waited on a lock in this rollout and were unlocked, but have not started
	// yet, in the order they go (the order they were unlocked): the durable memory that gives them their turn next
	// (rollout.UnlockOrder), so it survives a restart.
	Unlocked []string `yaml:"unlocked,omitempty" protobuf:"22"`
}

// WaitsOnlyOnLocks reports whether the upgrade is Blocked with every machine finished but the locked ones: it
// changes nothing until a user unlocks them, so it must not make the cluster look busy to other work (the manifest
// sync, the other rollouts' turn), the failure users of lock-based staging otherwise meet.
func (s TalosUpgradeStatusSpec) WaitsOnlyOnLocks() bool {
	return s.Phase == PhaseBlocked && len(s.WaitingOnLock) > 0 && len(s.Current) == 0 && s.Done+len(s.WaitingOnLock) == s.Total
}

// NewTalosUpgradeStatus returns an empty TalosUpgradeStatus for the cluster named id.
func NewTalosUpgradeStatus(id resource.ID) *TalosUpgradeStatus {
	return resources.NewTyped[TalosUpgradeStatusSpec, TalosUpgradeStatusExtension](TalosUpgradeStatusType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s TalosUpgradeStatusSpec) DeepCopy() TalosUpgradeStatusSpec {
	s.Plan = slices.Clone(s.Plan)
	s.Current = slices.Clone(s.Current)
	s.WaitingOnLock = slices.Clone(s.WaitingOnLock)
	s.AvailableVersions = slices.Clone(s.AvailableVersions)
	s.Admitted = slices.Clone(s.Admitted)
	s.Skipped = slices.Clone(s.Skipped)
	s.Unlocked = slices.Clone(s.Unlocked)

	return s
}

// TalosUpgradeStatusExtension gives TalosUpgradeStatus its resource definition.
type TalosUpgradeStatusExtension struct{}

// ResourceDefinition implements typed.Extension.
func (TalosUpgradeStatusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             TalosUpgradeStatusType,
		Aliases:          []resource.Type{"talosupgrade", "talosupgrades"},
		DefaultNamespace: resources.Namespace,
		PrintColumns:     clusterUpgradeColumns,
	}
}

// clusterUpgradeColumns are the table columns shared by the two cluster-wide upgrade statuses.
var clusterUpgradeColumns = []meta.PrintColumn{
	{Name: "Phase", JSONPath: "{.phase}"},
	{Name: "From", JSONPath: "{.fromVersion}"},
	{Name: "To", JSONPath: "{.toVersion}"},
	{Name: "Done", JSONPath: "{.done}"},
	{Name: "Total", JSONPath: "{.total}"},
	{Name: "Error", JSONPath: "{.error}"},
}

func init() {
	resources.MustRegisterType[TalosUpgradeStatusSpec, TalosUpgradeStatusExtension](TalosUpgradeStatusType)
}
