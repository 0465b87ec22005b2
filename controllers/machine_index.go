package controllers

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
)

// machineIndex knows which machines belong to which cluster, for a per-cluster controller that must see every
// machine of its cluster (a worker seen before the control planes would be upgraded first) without listing the
// whole fleet on every reconcile. It is filled by one full list, then kept up to date by the controller's Machine
// events (MapInput); a controller builds a new one for every run of the runtime.
type machineIndex struct {
	mu        sync.Mutex
	ready     bool
	byCluster map[string][]string
	clusterOf map[string]string
}

func newMachineIndex() *machineIndex {
	return &machineIndex{byCluster: map[string][]string{}, clusterOf: map[string]string{}}
}

// ensure fills the index from a full list of Machines the first time it is needed; the caller holds mu.
func (x *machineIndex) ensure(ctx context.Context, r controller.Reader) error {
	if x.ready {
		return nil
	}

	machines, err := safe.ReaderListAll[*cluster.Machine](ctx, r)
	if err != nil {
		return fmt.Errorf("listing machines: %w", err)
	}

	for m := range machines.All() {
		x.set(m.Metadata().ID(), m.TypedSpec().Cluster)
	}

	x.ready = true

	return nil
}

// set records machine id in clusterID ("" to forget it); the caller holds mu.
func (x *machineIndex) set(id, clusterID string) {
	old, ok := x.clusterOf[id]
	if ok && old == clusterID {
		return // the usual case: every poll of a machine reports it where it was
	}

	if ok {
		x.byCluster[old] = slices.DeleteFunc(x.byCluster[old], func(m string) bool { return m == id })
		delete(x.clusterOf, id)
	}

	if clusterID == "" {
		return
	}

	x.clusterOf[id] = clusterID
	ids := x.byCluster[clusterID]
	i, _ := slices.BinarySearch(ids, id)
	x.byCluster[clusterID] = slices.Insert(ids, i, id)
}

// observe records that machine id is in clusterID ("" when it is gone). It is for controllers whose primary input
// is Machine: their reconciles see every Machine event, which MapInput never does, so they keep the index current.
func (x *machineIndex) observe(id, clusterID string) {
	x.mu.Lock()
	defer x.mu.Unlock()

	if x.ready { // otherwise the first full list will have it
		x.set(id, clusterID)
	}
}

// machineCluster is the cluster of m, "" for a machine that is gone (nil).
func machineCluster(m *cluster.Machine) string {
	if m == nil {
		return ""
	}

	return m.TypedSpec().Cluster
}

// pointers returns the Machines of clusterID.
func (x *machineIndex) pointers(ctx context.Context, r controller.Reader, clusterID string) ([]resource.Pointer, error) {
	ids, err := x.machines(ctx, r, clusterID)
	if err != nil {
		return nil, err
	}

	out := make([]resource.Pointer, 0, len(ids))
	for _, id := range ids {
		out = append(out, cluster.NewMachine(id).Metadata())
	}

	return out, nil
}

// machines returns the IDs of the machines of clusterID, sorted.
func (x *machineIndex) machines(ctx context.Context, r controller.Reader, clusterID string) ([]string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()

	if err := x.ensure(ctx, r); err != nil {
		return nil, err
	}

	return slices.Clone(x.byCluster[clusterID]), nil
}

// clusters maps an input event to the clusters it concerns: the cluster itself for per-cluster resources
// (Credentials, EtcdStatus); for a Machine, the cluster it is in now and the one it was in (the index follows);
// for the other per-machine resources, the machine's cluster.
func (x *machineIndex) clusters(ctx context.Context, r controller.Reader, ptr resource.Pointer) ([]resource.Pointer, error) {
	switch ptr.Type() {
	case cluster.CredentialsType, observe.EtcdStatusType:
		return []resource.Pointer{cluster.NewCluster(ptr.ID()).Metadata()}, nil
	}

	x.mu.Lock()
	defer x.mu.Unlock()

	if err := x.ensure(ctx, r); err != nil {
		return nil, err
	}

	id := ptr.ID()
	old, known := x.clusterOf[id]

	if _, indexed := x.clusterOf[id]; ptr.Type() == cluster.MachineType || !indexed {
		// A Machine changed, or a resource of a machine not indexed yet (its Machine event is still queued).
		m, err := safe.ReaderGetByID[*cluster.Machine](ctx, r, id)

		switch {
		case state.IsNotFoundError(err):
			x.set(id, "")
		case err != nil:
			return nil, fmt.Errorf("reading machine %q: %w", id, err)
		default:
			x.set(id, m.TypedSpec().Cluster)
		}
	}

	var out []resource.Pointer

	if now, ok := x.clusterOf[id]; ok {
		out = append(out, cluster.NewCluster(now).Metadata())
	}

	if known && old != x.clusterOf[id] {
		out = append(out, cluster.NewCluster(old).Metadata())
	}

	return out, nil
}
