package cluster

import (
	"context"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// MachineLockType is the type of MachineLock resources.
const MachineLockType = resource.Type("MachineLocks.upshift.dev")

// UnlockedAtAnnotation on a Machine is when its last MachineLock was removed (RFC 3339, nanoseconds). The state
// stamps it, before it removes the lock, whoever removes it (CLI, gRPC, Go API): a lock is gone without a trace
// otherwise, and a machine unlocked while it waited gets its pending changes next, in the order machines were
// unlocked (docs/architecture.md, "Scheduling").
const UnlockedAtAnnotation = "upshift.dev/unlocked-at"

// MachineLock locks the machine with the same ID: while it exists, no upgrade or config rollout touches that
// machine, and it neither blocks the others nor holds a parallelism slot. Only workers can be locked.
type MachineLock = typed.Resource[MachineLockSpec, MachineLockExtension]

// MachineLockSpec records why a machine is locked.
type MachineLockSpec struct {
	// Reason is free text shown to whoever wonders why the machine did not upgrade.
	Reason string `yaml:"reason,omitempty" protobuf:"1"`
}

// NewMachineLock returns a lock for the machine named id.
func NewMachineLock(id resource.ID) *MachineLock {
	return resources.NewTyped[MachineLockSpec, MachineLockExtension](MachineLockType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s MachineLockSpec) DeepCopy() MachineLockSpec { return s }

// Validate implements resources.Validator: the machine must exist and must not be a control plane, because control
// planes upgrade strictly one at a time and etcd quorum checks need all of them: a locked control plane would hold
// every upgrade of its cluster.
func (s *MachineLockSpec) Validate(ctx context.Context, md *resource.Metadata, st resources.Getter) error {
	var v resources.Violations

	r, err := v.CheckExists(ctx, st, "metadata.id", NewMachine(md.ID()).Metadata())
	if err != nil {
		return err
	}

	if machine, ok := r.(*Machine); ok && machine.TypedSpec().Role == RoleControlPlane {
		v.Add("metadata.id", "machine %q is a control plane of cluster %q: control planes cannot be locked, "+
			"because they upgrade one at a time and a locked one would hold every upgrade of the cluster", md.ID(), machine.TypedSpec().Cluster)
	}

	return v.Err()
}

// MachineLockExtension gives MachineLock its resource definition.
type MachineLockExtension struct{}

// ResourceDefinition implements typed.Extension.
func (MachineLockExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             MachineLockType,
		Aliases:          []resource.Type{"lock", "locks"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Reason", JSONPath: "{.reason}"},
		},
	}
}

func init() {
	resources.MustRegisterType[MachineLockSpec, MachineLockExtension](MachineLockType)
}
