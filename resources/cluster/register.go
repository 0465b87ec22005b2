package cluster

import (
	"context"

	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state/registry"

	"github.com/upshift-io/upshift/resources"
)

// Resources returns an empty value of every type of this package, in the order a file of them is best applied:
// a type comes after the types it references.
func Resources() []meta.ResourceWithRD {
	return []meta.ResourceWithRD{
		NewCluster(""), NewCredentials(""), NewMachine(""), NewMachineLock(""), NewConfigPatch(""), NewManifestSyncRequest(""),
	}
}

// Register adds the definitions of this package's types to the engine's registry.
func Register(ctx context.Context, reg *registry.ResourceRegistry) error {
	return resources.Register(ctx, reg, Resources()...)
}
