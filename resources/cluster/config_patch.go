package cluster

import (
	"context"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"

	"github.com/upshift-io/upshift/resources"
)

// ConfigPatchType is the type of ConfigPatch resources.
const ConfigPatchType = resource.Type("ConfigPatches.upshift.dev")

// ConfigPatch is a Talos machine-config patch for a whole cluster, for the machines of one role, or for one machine.
// It rolls out with the same parallelism and lock rules as upgrades.
type ConfigPatch = typed.Resource[ConfigPatchSpec, ConfigPatchExtension]

// ConfigPatchSpec is the patch and the machines it applies to.
type ConfigPatchSpec struct {
	// Cluster is the ID of the Cluster the patch belongs to.
	Cluster string `yaml:"cluster" protobuf:"1"`
	// Role limits the patch to the machines of one role; empty means every role.
	Role Role `yaml:"role,omitempty" protobuf:"2"`
	// Machine limits the patch to one machine of the cluster; it excludes Role.
	Machine string `yaml:"machine,omitempty" protobuf:"3"`
	// Patch is a strategic merge patch or a JSON (RFC 6902) patch, as talosctl accepts them.
	Patch string `yaml:"patch" protobuf:"4"`
}

// NewConfigPatch returns an empty ConfigPatch named id.
func NewConfigPatch(id resource.ID) *ConfigPatch {
	return resources.NewTyped[ConfigPatchSpec, ConfigPatchExtension](ConfigPatchType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ConfigPatchSpec) DeepCopy() ConfigPatchSpec { return s }

// Validate implements resources.Validator.
func (s *ConfigPatchSpec) Validate(ctx context.Context, _ *resource.Metadata, st resources.Getter) error {
	var v violations

	if err := v.checkCluster(ctx, st, "spec.cluster", s.Cluster); err != nil {
		return err
	}

	v.checkRole("spec.role", s.Role, false)

	if s.Machine != "" {
		if s.Role != "" {
			v.Add("spec.machine", "cannot be set together with spec.role: a patch targets a cluster, a role or one machine")
		}

		r, err := v.CheckExists(ctx, st, "spec.machine", NewMachine(s.Machine).Metadata())
		if err != nil {
			return err
		}

		if machine, ok := r.(*Machine); ok && machine.TypedSpec().Cluster != s.Cluster {
			v.Add("spec.machine", "machine %q belongs to cluster %q, not %q", s.Machine, machine.TypedSpec().Cluster, s.Cluster)
		}
	}

	if s.Patch == "" {
		v.Add("spec.patch", "is required (a Talos machine-config patch)")
	} else if _, err := configpatcher.LoadPatch([]byte(s.Patch)); err != nil {
		v.Add("spec.patch", "is not a Talos machine-config patch: %s", err)
	}

	return v.Err()
}

// ConfigPatchExtension gives ConfigPatch its resource definition.
type ConfigPatchExtension struct{}

// ResourceDefinition implements typed.Extension.
func (ConfigPatchExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             ConfigPatchType,
		Aliases:          []resource.Type{"patch", "patches"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Cluster", JSONPath: "{.cluster}"},
			{Name: "Role", JSONPath: "{.role}"},
			{Name: "Machine", JSONPath: "{.machine}"},
		},
	}
}

func init() {
	resources.MustRegisterType[ConfigPatchSpec, ConfigPatchExtension](ConfigPatchType)
}
