package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// stepInFlight says which step of a rollout machine id (of cluster clusterID) is in the middle of, or "" when it is
// in none: a Talos upgrade step (its MachineUpgradeStatus), a config change (its MachineConfigStatus) or a running
// step of the cluster's Kubernetes upgrade on it. Such a step has a side effect on the machine under way (a node
// cordoned, an install staged, a reboot sent): taking the machine away from it would leave the node as the step
// left it, and the engine could no longer finish or undo it.
func stepInFlight(ctx context.Context, st resources.Getter, id, clusterID string) (string, error) {
	mus, err := getOptional[*upgrade.MachineUpgradeStatus](ctx, st, upgrade.NewMachineUpgradeStatus(id).Metadata())
	if err != nil {
		return "", err
	}

	if mus != nil && mus.TypedSpec().Phase.InFlight() {
		return fmt.Sprintf("its Talos upgrade to %s is at step %s (MachineUpgradeStatus %s)", mus.TypedSpec().ToVersion, mus.TypedSpec().Phase, id), nil
	}

	mcs, err := getOptional[*upgrade.MachineConfigStatus](ctx, st, upgrade.NewMachineConfigStatus(id).Metadata())
	if err != nil {
		return "", err
	}

	if mcs != nil && mcs.TypedSpec().Phase.InFlight() {
		return fmt.Sprintf("its config change is at step %s (MachineConfigStatus %s)", mcs.TypedSpec().Phase, id), nil
	}

	if clusterID == "" {
		return "", nil
	}

	kus, err := getOptional[*upgrade.KubernetesUpgradeStatus](ctx, st, upgrade.NewKubernetesUpgradeStatus(clusterID).Metadata())
	if err != nil || kus == nil {
		return "", err
	}

	for _, step := range kus.TypedSpec().Steps {
		if step.Machine == id && step.State == upgrade.StepRunning {
			return fmt.Sprintf("the Kubernetes upgrade step %s is running (KubernetesUpgradeStatus %s)", step, clusterID), nil
		}
	}

	return "", nil
}

// getOptional reads the resource at ptr as T; nil when there is none.
func getOptional[T resource.Resource](ctx context.Context, st resources.Getter, ptr resource.Pointer) (T, error) {
	var zero T

	r, err := st.Get(ctx, ptr)
	if state.IsNotFoundError(err) {
		return zero, nil
	}

	if err != nil {
		return zero, fmt.Errorf("reading %s %q: %w", resources.DisplayType(ptr.Type()), ptr.ID(), err)
	}

	typed, ok := r.(T)
	if !ok {
		return zero, fmt.Errorf("reading %s %q: unexpected resource %T", resources.DisplayType(ptr.Type()), ptr.ID(), r)
	}

	return typed, nil
}

// CheckDestroy implements resources.DestroyChecker: a Machine in the middle of a rollout step is not deleted (see
// stepInFlight); it may be once the step has ended (a paused cluster starts no new one).
func (s *MachineSpec) CheckDestroy(ctx context.Context, md *resource.Metadata, st resources.Getter) error {
	var v resources.Violations

	step, err := stepInFlight(ctx, st, md.ID(), s.Cluster)
	if err != nil {
		return err
	}

	if step != "" {
		v.Add("metadata.id", "machine %q is in the middle of an upgrade step: %s; delete it once the step has ended "+
			"(`upshift upgrade pause %s` starts no new one)", md.ID(), step, s.Cluster)
	}

	return v.Err()
}

// CheckDestroy implements resources.DestroyChecker: a Cluster is deleted only once it has no Machines, so no machine
// is left pointing at a cluster that is gone (its upgrades, observations and credentials would be orphaned midway).
func (s *ClusterSpec) CheckDestroy(ctx context.Context, md *resource.Metadata, st resources.Getter) error {
	var v resources.Violations

	machines, err := st.List(ctx, NewMachine("").Metadata(), state.WithLabelQuery(resource.LabelEqual(LabelCluster, md.ID())))
	if err != nil {
		return fmt.Errorf("listing machines of cluster %q: %w", md.ID(), err)
	}

	if len(machines.Items) > 0 {
		ids := make([]string, 0, len(machines.Items))
		for _, m := range machines.Items {
			ids = append(ids, m.Metadata().ID())
		}

		slices.Sort(ids)

		v.Add("metadata.id", "cluster %q still has %d machines (%s): delete them first", md.ID(), len(ids), strings.Join(ids, ", "))
	}

	return v.Err()
}
