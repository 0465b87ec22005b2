package upgrade

import (
	"slices"
	"strconv"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// KubernetesUpgradeStatusType is the type of KubernetesUpgradeStatus resources.
const KubernetesUpgradeStatusType = resource.Type("KubernetesUpgradeStatuses.upshift.dev")

// KubernetesRetryAnnotation on a Cluster retries its failed Kubernetes upgrade at the failed step: its value is
// the failed upgrade's RetryValue, so a stale retry does nothing.
const KubernetesRetryAnnotation = "upshift.dev/kubernetes-retry-attempt"

// StepState is where one step of a Kubernetes upgrade stands.
type StepState string

// Step states. A step goes Pending → Running → Done or Failed; the engine records Running before the step's side
// effect, so after a restart a Running step is resumed and the observed state says whether its change was made.
const (
	StepPending StepState = "Pending"
	StepRunning StepState = "Running"
	StepDone    StepState = "Done"
	StepSkipped StepState = "Skipped" // the machine left the cluster, or was locked when its pre-pull was due
	StepFailed  StepState = "Failed"
)

// Finished reports whether a step in state s needs nothing more.
func (s StepState) Finished() bool { return s == StepDone || s == StepSkipped }

// StepKind says what a step of a Kubernetes upgrade does.
type StepKind string

// Step kinds, in the order of an upgrade (docs/architecture.md, "The Kubernetes step machine").
const (
	StepPreChecks         StepKind = "pre-checks"
	StepPrePull           StepKind = "pre-pull"
	StepAPIServer         StepKind = "kube-apiserver"
	StepControllerManager StepKind = "kube-controller-manager"
	StepScheduler         StepKind = "kube-scheduler"
	StepKubeProxy         StepKind = "kube-proxy"
	StepKubelet           StepKind = "kubelet"
)

// KubernetesUpgradeStatus is the Kubernetes upgrade of one Cluster (same ID).
type KubernetesUpgradeStatus = typed.Resource[KubernetesUpgradeStatusSpec, KubernetesUpgradeStatusExtension]

// KubernetesUpgradeStatusSpec is the plan and progress of a Kubernetes upgrade: every step of every hop, so the
// status alone says what has changed, what runs now and what is left.
type KubernetesUpgradeStatusSpec struct {
	// Phase is where the upgrade stands (the same phases as a Talos upgrade).
	Phase ClusterPhase `yaml:"phase" protobuf:"1"`
	// FromVersion is the version the cluster ran when the upgrade started.
	FromVersion string `yaml:"fromVersion" protobuf:"2"`
	// ToVersion is the version the cluster is going to.
	ToVersion string `yaml:"toVersion" protobuf:"3"`
	// Steps are the ordered steps of every hop of Plan.
	Steps []KubernetesUpgradeStep `yaml:"steps,omitempty" protobuf:"4"`
	// CurrentStep is the index in Steps of the first unfinished step; len(Steps) once all are.
	CurrentStep int `yaml:"currentStep" protobuf:"5"`
	// Done counts the finished (done or skipped) steps.
	Done int `yaml:"done" protobuf:"6"`
	// Total counts the steps.
	Total int `yaml:"total" protobuf:"7"`
	// PreChecks are the results of the checks run before anything changes, of every hop so far.
	PreChecks []PreCheck `yaml:"preChecks,omitempty" protobuf:"8"`
	// Error says why the upgrade is Failed or Blocked.
	Error string `yaml:"error,omitempty" protobuf:"9"`
	// AvailableVersions are the versions a user may pick as the next target.
	AvailableVersions []string `yaml:"availableVersions,omitempty" protobuf:"10"`
	// Plan lists the versions the cluster goes through, each a full upgrade, ToVersion last.
	Plan []string `yaml:"plan,omitempty" protobuf:"11"`
	// Direction is "upgrade" or "downgrade".
	Direction string `yaml:"direction,omitempty" protobuf:"12"`
	// Reverting is true while the cluster goes back to the version an unfinished upgrade started from.
	Reverting bool `yaml:"reverting,omitempty" protobuf:"13"`
	// Reason says what the upgrade waits for (the Talos upgrade, a lock, a step to finish).
	Reason string `yaml:"reason,omitempty" protobuf:"14"`
	// WaitingOnLock lists the machines whose kubelet waits because they are locked.
	WaitingOnLock []string `yaml:"waitingOnLock,omitempty" protobuf:"15"`
	// Attempt counts the tries of this target: a retry adds one.
	Attempt int `yaml:"attempt,omitempty" protobuf:"16"`
	// SkippedChecks are the pre-checks the Cluster's skipKubernetesChecks overrides.
	SkippedChecks []string `yaml:"skippedChecks,omitempty" protobuf:"17"`
	// Unlocked lists the machines whose kubelet waited on a lock in this upgrade and that were unlocked, but whose
	// kubelet step has not started yet, in the order they go (rollout.UnlockOrder).
	Unlocked []string `yaml:"unlocked,omitempty" protobuf:"18"`
	// Granted is the turn this status was decided with: TalosUpgradeStatus.YieldsTo as read (the target whose turn
	// it was), empty when it was not the upgrade's turn. While it is set the upgrade may still start steps, so no
	// other rollout of the cluster starts machines (rollout.Turn, docs/architecture.md "Turns").
	Granted string `yaml:"granted,omitempty" protobuf:"19"`
}

// KubernetesUpgradeStep is one step of a Kubernetes upgrade.
type KubernetesUpgradeStep struct {
	// Kind says what the step does.
	Kind StepKind `yaml:"kind" protobuf:"1"`
	// Machine is the machine the step acts on; empty for cluster-wide steps (pre-checks, kube-proxy).
	Machine string `yaml:"machine,omitempty" protobuf:"2"`
	// State is where the step stands.
	State StepState `yaml:"state" protobuf:"3"`
	// Error says why the step failed.
	Error string `yaml:"error,omitempty" protobuf:"4"`
	// Version is the hop of the plan the step belongs to.
	Version string `yaml:"version" protobuf:"5"`
	// Progress says how far a running step is (images pulled, DaemonSet pods updated).
	Progress string `yaml:"progress,omitempty" protobuf:"6"`
	// StartedAt is when the step was recorded Running; its timeout counts from it, across restarts.
	StartedAt time.Time `yaml:"startedAt,omitempty" protobuf:"7"`
	// FinishedAt is when the step finished or failed.
	FinishedAt time.Time `yaml:"finishedAt,omitempty" protobuf:"8"`
}

// Same reports whether o is the same step (kind, machine, hop), whatever its state.
func (s KubernetesUpgradeStep) Same(o KubernetesUpgradeStep) bool {
	return s.Kind == o.Kind && s.Machine == o.Machine && s.Version == o.Version
}

// String names the step for messages, e.g. "kubelet on c1-w-1 (v1.36.2)".
func (s KubernetesUpgradeStep) String() string {
	out := string(s.Kind)
	if s.Machine != "" {
		out += " on " + s.Machine
	}

	return out + " (" + s.Version + ")"
}

// PreCheck is the result of one pre-upgrade check.
type PreCheck struct {
	// Name names the check, e.g. "removed-apis"; --skip-checks takes it.
	Name string `yaml:"name" protobuf:"1"`
	// Passed is whether the upgrade may go on as far as this check is concerned.
	Passed bool `yaml:"passed" protobuf:"2"`
	// Message explains a failure: the objects, flags or feature gates found.
	Message string `yaml:"message,omitempty" protobuf:"3"`
	// Skipped is true when the check failed and the Cluster's skipKubernetesChecks overrode it.
	Skipped bool `yaml:"skipped,omitempty" protobuf:"4"`
	// Version is the hop the check ran for.
	Version string `yaml:"version,omitempty" protobuf:"5"`
}

// RetryValue is the value of KubernetesRetryAnnotation that retries this upgrade.
func (s KubernetesUpgradeStatusSpec) RetryValue() string {
	return s.ToVersion + "/" + strconv.Itoa(s.Attempt)
}

// NewKubernetesUpgradeStatus returns an empty KubernetesUpgradeStatus for the cluster named id.
func NewKubernetesUpgradeStatus(id resource.ID) *KubernetesUpgradeStatus {
	return resources.NewTyped[KubernetesUpgradeStatusSpec, KubernetesUpgradeStatusExtension](KubernetesUpgradeStatusType, id)
}

// WaitsOnlyOnLocks reports whether the upgrade is Blocked with nothing left but the kubelets of locked machines
// (see TalosUpgradeStatusSpec.WaitsOnlyOnLocks).
func (s KubernetesUpgradeStatusSpec) WaitsOnlyOnLocks() bool {
	if s.Phase != PhaseBlocked || len(s.WaitingOnLock) == 0 {
		return false
	}

	for _, step := range s.Steps {
		if !step.State.Finished() && !(step.Kind == StepKubelet && step.State == StepPending && slices.Contains(s.WaitingOnLock, step.Machine)) {
			return false
		}
	}

	return true
}

// DeepCopy implements typed.DeepCopyable.
func (s KubernetesUpgradeStatusSpec) DeepCopy() KubernetesUpgradeStatusSpec {
	s.Steps = slices.Clone(s.Steps)
	s.PreChecks = slices.Clone(s.PreChecks)
	s.AvailableVersions = slices.Clone(s.AvailableVersions)
	s.Plan = slices.Clone(s.Plan)
	s.WaitingOnLock = slices.Clone(s.WaitingOnLock)
	s.Unlocked = slices.Clone(s.Unlocked)
	s.SkippedChecks = slices.Clone(s.SkippedChecks)

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
