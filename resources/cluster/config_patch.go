package cluster

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"

	"github.com/upshift-io/upshift/internal/machineconfig"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/upgrade"
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
	// Order places the patch among the patches of a machine: lower first, then by ID, so a later patch can build
	// on or override an earlier one.
	Order int `yaml:"order,omitempty" protobuf:"5"`
}

// NewConfigPatch returns an empty ConfigPatch named id.
func NewConfigPatch(id resource.ID) *ConfigPatch {
	return resources.NewTyped[ConfigPatchSpec, ConfigPatchExtension](ConfigPatchType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ConfigPatchSpec) DeepCopy() ConfigPatchSpec { return s }

// Labels implements resources.Labeller: a ConfigPatch carries its cluster as LabelCluster, so a cluster's patches
// are found with a label query.
func (s *ConfigPatchSpec) Labels() map[string]string {
	return map[string]string{LabelCluster: s.Cluster}
}

// Targets reports whether the patch applies to the machine id of role (of the patch's cluster).
func (s *ConfigPatchSpec) Targets(id string, role Role) bool {
	switch {
	case s.Machine != "":
		return s.Machine == id
	case s.Role != "":
		return s.Role == role
	default:
		return true
	}
}

// PatchesFor returns the patches of a cluster that apply to machine id of role, in the order they apply: by
// Order, then by ID.
func PatchesFor(id string, role Role, patches []*ConfigPatch) []machineconfig.Patch {
	mine := slices.DeleteFunc(slices.Clone(patches), func(p *ConfigPatch) bool { return !p.TypedSpec().Targets(id, role) })
	slices.SortFunc(mine, func(a, b *ConfigPatch) int {
		return cmp.Or(cmp.Compare(a.TypedSpec().Order, b.TypedSpec().Order), cmp.Compare(a.Metadata().ID(), b.Metadata().ID()))
	})

	out := make([]machineconfig.Patch, 0, len(mine))
	for _, p := range mine {
		out = append(out, machineconfig.Patch{ID: p.Metadata().ID(), Content: p.TypedSpec().Patch})
	}

	return out
}

// PatchSet names the state of a cluster's patches (every ID with its resource version), so a decision made from
// machines' config statuses can tell whether each was computed from the patches as they are now: a status of an
// older set is not decided from (the rollout would call a machine up to date whose patch it has not seen yet).
func PatchSet(patches []*ConfigPatch) string {
	keys := make([]string, 0, len(patches))
	for _, p := range patches {
		keys = append(keys, p.Metadata().ID()+"@"+p.Metadata().Version().String())
	}

	slices.Sort(keys)

	return strings.Join(keys, ",")
}

// Validate implements resources.Validator. Besides its fields, the patch is applied, with the cluster's other
// patches in order, to the base config of every machine it targets whose config the engine has seen
// (upgrade.MachineConfigStatus), and the result must be a valid config: a patch that does not apply, or yields an
// invalid config, is refused naming the machine and the reason, before anything is written.
func (s *ConfigPatchSpec) Validate(ctx context.Context, md *resource.Metadata, st resources.Getter) error {
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

	if len(v.Violations) > 0 {
		return v.Err()
	}

	changes, err := s.Effect(ctx, md, st)
	if err != nil {
		return err
	}

	for _, c := range changes {
		if c.Err != nil {
			v.Add("spec.patch", "machine %q: %s", c.Machine, c.Err)
		}
	}

	return v.Err()
}

// PatchEffect is what a patch does to one machine's effective config.
type PatchEffect struct {
	// Machine is the machine's ID.
	Machine string
	// Diff is the change of its effective config (secrets redacted); empty when there is none.
	Diff string
	// Err says why the machine's effective config cannot be made with the patch.
	Err error
}

// Effect computes, for every machine of the cluster the patch (named md.ID()) targets and whose base config the
// engine has seen, the effective config with the patch written against the one without it: what `apply --dry-run`
// shows and Validate checks. Machines whose config the engine has not seen yet are left out: their patches are
// checked when the engine first reads them, and a failure shows in their MachineConfigStatus.
func (s *ConfigPatchSpec) Effect(ctx context.Context, md *resource.Metadata, st resources.Getter) ([]PatchEffect, error) {
	byCluster := state.WithLabelQuery(resource.LabelEqual(LabelCluster, s.Cluster))

	machines, err := st.List(ctx, NewMachine("").Metadata(), byCluster)
	if err != nil {
		return nil, fmt.Errorf("listing machines of cluster %q: %w", s.Cluster, err)
	}

	listed, err := st.List(ctx, NewConfigPatch("").Metadata(), byCluster)
	if err != nil {
		return nil, fmt.Errorf("listing config patches of cluster %q: %w", s.Cluster, err)
	}

	var others []*ConfigPatch

	for _, r := range listed.Items {
		if p, ok := r.(*ConfigPatch); ok && p.Metadata().ID() != md.ID() {
			others = append(others, p)
		}
	}

	self := NewConfigPatch(md.ID())
	*self.TypedSpec() = *s
	with := append(slices.Clone(others), self)

	var out []PatchEffect

	for _, r := range machines.Items {
		m, ok := r.(*Machine)
		if !ok || !s.Targets(m.Metadata().ID(), m.TypedSpec().Role) {
			continue
		}

		id := m.Metadata().ID()

		status, err := st.Get(ctx, upgrade.NewMachineConfigStatus(id).Metadata())
		if state.IsNotFoundError(err) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("reading the config status of machine %q: %w", id, err)
		}

		// A reader not allowed to read secrets back (a client without the admin role) sees the base redacted and
		// cannot judge that machine; the engine's validation of the write, which reads it whole, does.
		base := status.Spec().(*upgrade.MachineConfigStatusSpec).Base //nolint:forcetypeassert // registered type
		if base == "" || base == resources.Redacted {
			continue
		}

		out = append(out, effect(id, []byte(base), PatchesFor(id, m.TypedSpec().Role, others), PatchesFor(id, m.TypedSpec().Role, with)))
	}

	return out, nil
}

func effect(id string, base []byte, without, with []machineconfig.Patch) PatchEffect {
	before, err := machineconfig.Effective(base, without)
	if err != nil {
		return PatchEffect{Machine: id, Err: fmt.Errorf("its config without this patch: %w", err)}
	}

	after, err := machineconfig.Effective(base, with)
	if err != nil {
		return PatchEffect{Machine: id, Err: err}
	}

	diff, err := machineconfig.Diff(before, after, id+" now", id+" with the patch")

	return PatchEffect{Machine: id, Diff: diff, Err: err}
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
			{Name: "Order", JSONPath: "{.order}"},
		},
	}
}

func init() {
	resources.MustRegisterType[ConfigPatchSpec, ConfigPatchExtension](ConfigPatchType)
}
