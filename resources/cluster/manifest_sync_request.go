package cluster

import (
	"context"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// ManifestSyncRequestType is the type of ManifestSyncRequest resources.
const ManifestSyncRequestType = resource.Type("ManifestSyncRequests.upshift.dev")

// ManifestSyncRequest asks the engine to apply the bootstrap manifests of the cluster with the same ID, once: each
// new RequestID is one apply. It is an input, so the event log records who asked and when; the engine copies the
// request and its writer into the cluster's ManifestSync as it handles it.
type ManifestSyncRequest = typed.Resource[ManifestSyncRequestSpec, ManifestSyncRequestExtension]

// ManifestSyncRequestSpec is one request to apply a cluster's bootstrap manifests.
type ManifestSyncRequestSpec struct {
	// RequestID names the request; writing a new one asks for a new apply.
	RequestID string `yaml:"requestID" protobuf:"1"`
	// DryRun only computes and records the diff.
	DryRun bool `yaml:"dryRun,omitempty" protobuf:"2"`
	// Prune deletes objects an earlier apply created that Talos no longer renders (listed first).
	Prune bool `yaml:"prune,omitempty" protobuf:"3"`
	// ForceConflicts overwrites fields another field manager set; without it those objects are held back.
	ForceConflicts bool `yaml:"forceConflicts,omitempty" protobuf:"4"`
}

// NewManifestSyncRequest returns an empty request for the cluster named id.
func NewManifestSyncRequest(id resource.ID) *ManifestSyncRequest {
	return resources.NewTyped[ManifestSyncRequestSpec, ManifestSyncRequestExtension](ManifestSyncRequestType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ManifestSyncRequestSpec) DeepCopy() ManifestSyncRequestSpec { return s }

// Validate implements resources.Validator: the cluster must exist and the request must be named.
func (s *ManifestSyncRequestSpec) Validate(ctx context.Context, md *resource.Metadata, st resources.Getter) error {
	var v resources.Violations

	v.CheckDNSLabel("metadata.id", md.ID())

	if _, err := v.CheckExists(ctx, st, "metadata.id", NewCluster(md.ID()).Metadata()); err != nil {
		return err
	}

	if s.RequestID == "" {
		v.Add("spec.requestID", "is required (any new value asks for one apply)")
	}

	return v.Err()
}

// RecordsWriter implements resources.WriterRecorder: the engine shows who asked for an apply.
func (s *ManifestSyncRequestSpec) RecordsWriter() {}

// ManifestSyncRequestExtension gives ManifestSyncRequest its resource definition.
type ManifestSyncRequestExtension struct{}

// ResourceDefinition implements typed.Extension.
func (ManifestSyncRequestExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:                 ManifestSyncRequestType,
		SkipAutomaticAliases: true,
		Aliases:              []resource.Type{"manifestsyncrequest", "manifestsyncrequests"},
		DefaultNamespace:     resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Request", JSONPath: "{.requestID}"},
			{Name: "Dry Run", JSONPath: "{.dryRun}"},
			{Name: "Prune", JSONPath: "{.prune}"},
			{Name: "Force Conflicts", JSONPath: "{.forceConflicts}"},
		},
	}
}

func init() {
	resources.MustRegisterType[ManifestSyncRequestSpec, ManifestSyncRequestExtension](ManifestSyncRequestType)
}
