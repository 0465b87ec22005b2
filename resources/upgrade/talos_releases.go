package upgrade

import (
	"slices"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// TalosReleasesType is the type of the TalosReleases resource.
const TalosReleasesType = resource.Type("TalosReleases.upshift.dev")

// TalosReleasesID is the ID of the one TalosReleases resource.
const TalosReleasesID = "talos"

// TalosReleases publishes the engine's catalogue of Talos releases, the ones an upgrade may go to or through,
// so a client plans with what the engine plans with (the CLI's dry run) instead of a catalogue of its own.
type TalosReleases = typed.Resource[TalosReleasesSpec, TalosReleasesExtension]

// TalosReleasesSpec lists the releases, oldest first.
type TalosReleasesSpec struct {
	Releases []TalosRelease `yaml:"releases" protobuf:"1"`
}

// TalosRelease is one release of the catalogue.
type TalosRelease struct {
	// Version is the Talos version, e.g. v1.14.1.
	Version string `yaml:"version" protobuf:"1"`
	// InstallerTag is the tag of its installer image.
	InstallerTag string `yaml:"installerTag" protobuf:"2"`
}

// NewTalosReleases returns an empty TalosReleases.
func NewTalosReleases() *TalosReleases {
	return resources.NewTyped[TalosReleasesSpec, TalosReleasesExtension](TalosReleasesType, TalosReleasesID)
}

// DeepCopy implements typed.DeepCopyable.
func (s TalosReleasesSpec) DeepCopy() TalosReleasesSpec {
	s.Releases = slices.Clone(s.Releases)

	return s
}

// TalosReleasesExtension gives TalosReleases its resource definition.
type TalosReleasesExtension struct{}

// ResourceDefinition implements typed.Extension.
func (TalosReleasesExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             TalosReleasesType,
		Aliases:          []resource.Type{"releases"},
		DefaultNamespace: resources.Namespace,
	}
}

func init() {
	resources.MustRegisterType[TalosReleasesSpec, TalosReleasesExtension](TalosReleasesType)
}
