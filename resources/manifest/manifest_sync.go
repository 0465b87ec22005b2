// Package manifest holds ManifestSync, the output resource that shows how a cluster's bootstrap manifests differ
// from what runs, and whether and when they were applied.
package manifest

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"
	"github.com/cosi-project/runtime/pkg/state/registry"

	"github.com/upshift-io/upshift/resources"
)

// ManifestSyncType is the type of ManifestSync resources.
const ManifestSyncType = resource.Type("ManifestSyncs.upshift.dev")

// Phase is where a cluster's manifest sync stands.
type Phase string

// Manifest sync phases.
const (
	PhaseUpToDate  Phase = "UpToDate"
	PhaseOutOfSync Phase = "OutOfSync"
	PhaseApplying  Phase = "Applying"
	PhaseFailed    Phase = "Failed"
)

// ManifestSync is the bootstrap-manifest state of one Cluster (same ID). The engine never applies a change it has
// not shown here first.
type ManifestSync = typed.Resource[ManifestSyncSpec, ManifestSyncExtension]

// ManifestSyncSpec is the diff between the cluster's bootstrap manifests and the live objects, and the apply that
// was asked for. Every apply writes its objects' diffs here (phase Applying) before it changes anything.
type ManifestSyncSpec struct {
	// Phase is where the sync stands.
	Phase Phase `yaml:"phase" protobuf:"1"`
	// OutOfSync counts the objects whose live state differs from the manifests (or that another manager changed).
	OutOfSync int `yaml:"outOfSync" protobuf:"2"`
	// Diffs are the objects that differ, conflict or were refused, each with its diff and, during and after an
	// apply, its outcome.
	Diffs []ObjectDiff `yaml:"diffs,omitempty" protobuf:"3"`
	// LastApplied is when the manifests were last applied.
	LastApplied time.Time `yaml:"lastApplied,omitempty" protobuf:"4"`
	// Error says why the last check or apply failed.
	Error string `yaml:"error,omitempty" protobuf:"5"`
	// CheckedAt is when the diff last changed: a check that finds what the last one found is not written, so the
	// event log holds changes only.
	CheckedAt time.Time `yaml:"checkedAt,omitempty" protobuf:"6"`
	// Legacy is set when the cluster runs Talos < 1.13: a dry-run update and a full update, without inventory, as
	// Talos does for those releases; otherwise server-side apply with Talos' inventory.
	Legacy bool `yaml:"legacy,omitempty" protobuf:"7"`
	// CheckedFor is what the diff was computed for (control planes' Talos versions, the upgrades' phases): a
	// change of it means the rendered manifests may have changed, so the diff is computed again at once.
	CheckedFor string `yaml:"checkedFor,omitempty" protobuf:"8"`
	// Request is the apply being made, or the last one made.
	Request Request `yaml:"request,omitempty" protobuf:"9"`
	// Prunable lists the objects an earlier apply created that Talos no longer renders.
	Prunable []string `yaml:"prunable,omitempty" protobuf:"10"`
	// Pruned lists the objects the last apply deleted.
	Pruned []string `yaml:"pruned,omitempty" protobuf:"11"`
	// Node is the control plane whose rendered manifests were read.
	Node string `yaml:"node,omitempty" protobuf:"12"`
}

// Request is an apply of the bootstrap manifests: asked by a user (ManifestSyncRequest) or by auto mode.
type Request struct {
	// ID is the ManifestSyncRequest's requestID, or "auto-N" for an apply auto mode started.
	ID string `yaml:"id,omitempty" protobuf:"1"`
	// By is who asked, as the event log names them ("user:alice"), or "auto".
	By string `yaml:"by,omitempty" protobuf:"2"`
	// DryRun, Prune and ForceConflicts are the request's options.
	DryRun         bool `yaml:"dryRun,omitempty" protobuf:"3"`
	Prune          bool `yaml:"prune,omitempty" protobuf:"4"`
	ForceConflicts bool `yaml:"forceConflicts,omitempty" protobuf:"5"`
	// Started and Finished date the apply; Finished is zero while it runs.
	Started  time.Time `yaml:"started,omitempty" protobuf:"6"`
	Finished time.Time `yaml:"finished,omitempty" protobuf:"7"`
	// Outcome sums up the finished apply: "applied 3 objects; held back 1 (conflicts)".
	Outcome string `yaml:"outcome,omitempty" protobuf:"8"`
}

// Outcome of one object in an apply.
const (
	ObjectPending  = "Pending"
	ObjectApplied  = "Applied"
	ObjectHeldBack = "HeldBack"
	ObjectFailed   = "Failed"
)

// ObjectDiff is how one Kubernetes object differs from its manifest.
type ObjectDiff struct {
	// Object names the object: "Kind namespace/name" (or "Kind name" for cluster-scoped objects).
	Object string `yaml:"object" protobuf:"1"`
	// Action is what applying would do: "create" or "update"; empty when only conflicts or a refusal were found.
	Action string `yaml:"action,omitempty" protobuf:"2"`
	// Diff is the unified diff of the object's YAML.
	Diff string `yaml:"diff,omitempty" protobuf:"3"`
	// Conflicts name the fields another field manager set that applying would overwrite:
	// "spec.template.spec.containers[0].args set by kubectl-edit".
	Conflicts []string `yaml:"conflicts,omitempty" protobuf:"4"`
	// Refused is the API server's refusal of the dry run.
	Refused string `yaml:"refused,omitempty" protobuf:"5"`
	// Status is the object's outcome in the current or last apply (ObjectPending, ObjectApplied, ...).
	Status string `yaml:"status,omitempty" protobuf:"6"`
	// Reason says why the object was held back or failed.
	Reason string `yaml:"reason,omitempty" protobuf:"7"`
}

// NewManifestSync returns an empty ManifestSync for the cluster named id.
func NewManifestSync(id resource.ID) *ManifestSync {
	return resources.NewTyped[ManifestSyncSpec, ManifestSyncExtension](ManifestSyncType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ManifestSyncSpec) DeepCopy() ManifestSyncSpec {
	s.Diffs = slices.Clone(s.Diffs)
	for i := range s.Diffs {
		s.Diffs[i].Conflicts = slices.Clone(s.Diffs[i].Conflicts)
	}

	s.Prunable, s.Pruned = slices.Clone(s.Prunable), slices.Clone(s.Pruned)

	return s
}

// Summary says in one line how the bootstrap manifests of cluster clusterID stand: up to date, being applied, or how
// many objects changed with the exact commands to see and apply them. `upshift status` and the demo both show it,
// so a user meets the same words in each.
func (s ManifestSyncSpec) Summary(clusterID string) string {
	switch {
	case s.Phase == PhaseApplying:
		return fmt.Sprintf("bootstrap manifests: applying (sync %s by %s)", s.Request.ID, s.Request.By)
	case s.OutOfSync == 0 && s.Phase != PhaseFailed:
		return "bootstrap manifests: up to date"
	}

	line := fmt.Sprintf("bootstrap manifests: %s, %d objects changed; see `upshift manifests diff %s`, apply with `upshift manifests sync %s`",
		s.Phase, s.OutOfSync, clusterID, clusterID)
	if s.Error != "" {
		line += " (" + s.Error + ")"
	}

	return line
}

// ManifestSyncExtension gives ManifestSync its resource definition.
type ManifestSyncExtension struct{}

// ResourceDefinition implements typed.Extension. Automatic aliases are off because "ms" would also name
// MachineStatuses.
func (ManifestSyncExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:                 ManifestSyncType,
		SkipAutomaticAliases: true,
		Aliases:              []resource.Type{"manifestsync", "manifestsyncs", "manifests"},
		DefaultNamespace:     resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Phase", JSONPath: "{.phase}"},
			{Name: "Out Of Sync", JSONPath: "{.outOfSync}"},
			{Name: "Last Applied", JSONPath: "{.lastApplied}"},
			{Name: "Error", JSONPath: "{.error}"},
		},
	}
}

// Resources returns an empty value of every type of this package.
func Resources() []meta.ResourceWithRD {
	return []meta.ResourceWithRD{NewManifestSync("")}
}

// Register adds the definitions of this package's types to the engine's registry.
func Register(ctx context.Context, reg *registry.ResourceRegistry) error {
	return resources.Register(ctx, reg, Resources()...)
}

func init() {
	resources.MustRegisterType[ManifestSyncSpec, ManifestSyncExtension](ManifestSyncType)
}
