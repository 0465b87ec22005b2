// Package manifest holds ManifestSync, the output resource that shows how a cluster's bootstrap manifests differ
// from what runs, and whether and when they were applied.
package manifest

import (
	"context"
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

// ManifestSyncSpec is the diff between the cluster's bootstrap manifests and the live objects.
type ManifestSyncSpec struct {
	// Phase is where the sync stands.
	Phase Phase `yaml:"phase" protobuf:"1"`
	// OutOfSync counts the objects whose live state differs from the manifests.
	OutOfSync int `yaml:"outOfSync" protobuf:"2"`
	// Diffs are the per-object differences, as a server-side apply dry run computed them.
	Diffs []ObjectDiff `yaml:"diffs,omitempty" protobuf:"3"`
	// LastApplied is when the manifests were last applied.
	LastApplied time.Time `yaml:"lastApplied,omitempty" protobuf:"4"`
	// Error says why the last diff or apply failed.
	Error string `yaml:"error,omitempty" protobuf:"5"`
}

// ObjectDiff is how one Kubernetes object differs from its manifest.
type ObjectDiff struct {
	// Object names the object: "Kind namespace/name" (or "Kind name" for cluster-scoped objects).
	Object string `yaml:"object" protobuf:"1"`
	// Action is what applying would do: "create" or "update".
	Action string `yaml:"action" protobuf:"2"`
	// Diff is the unified diff of the object's YAML.
	Diff string `yaml:"diff,omitempty" protobuf:"3"`
}

// NewManifestSync returns an empty ManifestSync for the cluster named id.
func NewManifestSync(id resource.ID) *ManifestSync {
	return resources.NewTyped[ManifestSyncSpec, ManifestSyncExtension](ManifestSyncType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ManifestSyncSpec) DeepCopy() ManifestSyncSpec {
	s.Diffs = slices.Clone(s.Diffs)

	return s
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
