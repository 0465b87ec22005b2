package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fluxcd/cli-utils/pkg/object"
	fluxssa "github.com/fluxcd/pkg/ssa"
	"github.com/siderolabs/go-kubernetes/kubernetes/manifests"
	"github.com/siderolabs/go-kubernetes/kubernetes/ssa"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Talos' names for its bootstrap manifests: applying under the same field manager and inventory keeps the ownership
// Talos itself established at bootstrap (and that talosctl upgrade-k8s keeps), so an apply by upshift is not a
// conflict with Talos. The kube-proxy DaemonSet a Kubernetes upgrade applies (Components) uses the same field manager.
const (
	FieldManager       = "talos"
	InventoryNamespace = "kube-system"
	InventoryName      = "talos-bootstrap-manifests-inventory"
)

// Object is one bootstrap object, as Talos renders it.
type Object = *unstructured.Unstructured

// Conflict is a field of a bootstrap object that another field manager set: applying would overwrite it.
type Conflict struct {
	// Field is the field's path, e.g. "spec.template.spec.containers[0].args".
	Field string
	// Manager is the field manager that set it, e.g. "kubectl-edit".
	Manager string
}

// ConflictError is an apply that was not made because another field manager set fields of the object and the
// apply was not asked to force them: the caller holds the object back and says why.
type ConflictError struct {
	// Object names the object (Describe).
	Object string
	// Conflicts are the fields the apply would have taken.
	Conflicts []Conflict
}

// Error implements error.
func (e *ConflictError) Error() string {
	fields := make([]string, 0, len(e.Conflicts))
	for _, c := range e.Conflicts {
		fields = append(fields, c.Field+" set by "+c.Manager)
	}

	return fmt.Sprintf("not applying %s: %s (fields of another field manager)", e.Object, strings.Join(fields, "; "))
}

// ObjectCheck is how one live object compares with its manifest.
type ObjectCheck struct {
	// Action is what applying would do: "create", "update", or "" when the object matches.
	Action string
	// Diff is the unified diff of the object's YAML, live against applied.
	Diff string
	// Conflicts are the fields applying would take from another field manager.
	Conflicts []Conflict
	// Error is the API server's refusal of the dry run (the apply would fail the same way).
	Error string
}

// BootstrapObjects is what the engine does with a cluster's bootstrap objects. legacy selects the path of clusters
// running Talos < 1.13: a dry-run update and a full update, without inventory (go-kubernetes kubernetes/manifests);
// otherwise server-side apply with Talos' inventory (go-kubernetes kubernetes/ssa).
type BootstrapObjects interface {
	// Check compares obj with its live object by a dry run, and names the fields another manager would lose.
	Check(ctx context.Context, obj Object, legacy bool) (ObjectCheck, error)
	// Prunable lists the inventory's objects that objs no longer name (server-side apply path only).
	Prunable(ctx context.Context, objs []Object) ([]string, error)
	// Apply applies obj. Unless forceConflicts, it first looks for fields of obj another manager set, and applies
	// nothing if it finds any (a *ConflictError): neither path refuses to take them over by itself (server-side
	// apply forces, an update replaces the object).
	Apply(ctx context.Context, obj Object, legacy, forceConflicts bool) error
	// Prune deletes the inventory's objects that objs no longer name, after applying objs; it returns them.
	Prune(ctx context.Context, objs []Object) ([]string, error)
	// WaitRollout waits until the Deployments and DaemonSets among objs have rolled out, within timeout.
	WaitRollout(ctx context.Context, objs []Object, timeout time.Duration) error
}

// Manifests implements BootstrapObjects over client-go and go-kubernetes.
type Manifests struct {
	config *rest.Config
	// legacyConfig updates as Talos' field manager: an update names its manager after the user agent.
	legacyConfig *rest.Config
	dynamic      dynamic.Interface
	mapper       meta.RESTMapper
	clientset    *kubernetes.Clientset
	ssa          *ssa.Manager
}

var _ BootstrapObjects = (*Manifests)(nil)

// NewManifests returns a Manifests for the cluster a kubeconfig describes.
func NewManifests(ctx context.Context, kubeconfig []byte) (*Manifests, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}

	m := &Manifests{config: cfg, legacyConfig: rest.CopyConfig(cfg)}
	m.legacyConfig.UserAgent = FieldManager

	if m.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("creating dynamic client: %w", err)
	}

	if m.clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}

	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating discovery client: %w", err)
	}

	m.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	if m.ssa, err = ssa.NewManager(ctx, cfg, FieldManager, InventoryNamespace, InventoryName); err != nil {
		return nil, fmt.Errorf("creating server-side apply manager: %w", err)
	}

	return m, nil
}

// Describe names an object for people: "Kind namespace/name", or "Kind name" for a cluster-scoped one.
func Describe(obj Object) string {
	if obj.GetNamespace() == "" {
		return obj.GetKind() + " " + obj.GetName()
	}

	return obj.GetKind() + " " + obj.GetNamespace() + "/" + obj.GetName()
}

// Check implements BootstrapObjects. An object the API server refuses is a result (Error), not an error: the others
// are still checked.
func (m *Manifests) Check(ctx context.Context, obj Object, legacy bool) (ObjectCheck, error) {
	live, err := m.get(ctx, obj)
	if err != nil && !apierrors.IsNotFound(err) {
		return ObjectCheck{}, fmt.Errorf("reading %s: %w", Describe(obj), err)
	}

	var check ObjectCheck

	if legacy {
		check, err = m.legacyDiff(ctx, obj)
	} else {
		check, err = m.ssaDiff(ctx, obj)
	}

	if err != nil {
		return ObjectCheck{Error: err.Error()}, nil //nolint:nilerr // a refused dry run is the object's result
	}

	switch {
	case live == nil:
		check.Action = "create"
	case check.Diff != "":
		check.Action = "update"
	}

	if live != nil {
		if check.Conflicts, err = m.conflicts(ctx, obj, live); err != nil {
			return ObjectCheck{Error: err.Error()}, nil //nolint:nilerr // as above
		}
	}

	return check, nil
}

func (m *Manifests) ssaDiff(ctx context.Context, obj Object) (ObjectCheck, error) {
	results, err := m.ssa.Diff(ctx, []Object{obj.DeepCopy()}, ssa.DiffOptions{InventoryPolicy: ssa.InventoryPolicyAdoptIfNoInventory, NoPrune: true})
	if err != nil {
		return ObjectCheck{}, err
	}

	var check ObjectCheck

	for _, r := range results {
		if r.Action != ssa.DiffUnchangedAction {
			check.Diff += r.Diff
		}
	}

	return check, nil
}

func (m *Manifests) legacyDiff(ctx context.Context, obj Object) (ObjectCheck, error) {
	results := make(chan manifests.SyncResult, 1)

	if err := manifests.Sync(ctx, []Object{obj.DeepCopy()}, m.legacyConfig, true, results); err != nil {
		return ObjectCheck{}, err
	}

	r := <-results

	return ObjectCheck{Diff: r.Diff}, nil
}

// conflicts server-side applies obj as a dry run without forcing, and turns the API server's conflicts into fields
// and managers. Fields Talos' own manager holds (set by an update before the first apply) are not conflicts.
func (m *Manifests) conflicts(ctx context.Context, obj, live Object) ([]Conflict, error) {
	resource, err := m.resource(obj)
	if err != nil {
		return nil, err
	}

	data, err := obj.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", Describe(obj), err)
	}

	force := false

	_, err = resource.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		FieldManager: FieldManager, Force: &force, DryRun: []string{metav1.DryRunAll},
	})

	var status apierrors.APIStatus
	if err == nil || !apierrors.IsConflict(err) || !errors.As(err, &status) || status.Status().Details == nil {
		return nil, err
	}

	var out []Conflict

	for _, cause := range status.Status().Details.Causes {
		if cause.Type != metav1.CauseTypeFieldManagerConflict {
			continue
		}

		manager := quoted(cause.Message)
		if manager == FieldManager {
			continue
		}

		out = append(out, Conflict{Field: indexedPath(live.Object, cause.Field), Manager: manager})
	}

	return out, nil
}

// quoted is the first double-quoted string of s: the manager of a conflict message
// (`conflict with "kubectl-edit" using apps/v1`).
func quoted(s string) string {
	_, rest, ok := strings.Cut(s, `"`)
	if !ok {
		return s
	}

	name, _, _ := strings.Cut(rest, `"`)

	return name
}

// Apply implements BootstrapObjects. The conflict check is a dry run right before the apply; a field another manager
// sets between the two is taken over, as a sync with --force-conflicts would.
func (m *Manifests) Apply(ctx context.Context, obj Object, legacy, forceConflicts bool) error {
	if !forceConflicts {
		if err := m.refuseConflicts(ctx, obj); err != nil {
			return err
		}
	}

	if legacy {
		results := make(chan manifests.SyncResult, 1)

		if err := manifests.Sync(ctx, []Object{obj.DeepCopy()}, m.legacyConfig, false, results); err != nil {
			return fmt.Errorf("applying %s: %w", Describe(obj), err)
		}

		return nil
	}

	if _, err := m.ssa.Apply(ctx, []Object{obj.DeepCopy()}, ssa.ApplyOptions{InventoryPolicy: ssa.InventoryPolicyAdoptIfNoInventory, NoPrune: true}); err != nil {
		return fmt.Errorf("applying %s: %w", Describe(obj), err)
	}

	return nil
}

// refuseConflicts returns a *ConflictError when another field manager set fields of obj's live object.
func (m *Manifests) refuseConflicts(ctx context.Context, obj Object) error {
	live, err := m.get(ctx, obj)
	if apierrors.IsNotFound(err) {
		return nil
	}

	if err != nil {
		return fmt.Errorf("reading %s: %w", Describe(obj), err)
	}

	conflicts, err := m.conflicts(ctx, obj, live)
	if err != nil {
		return fmt.Errorf("applying %s (dry run): %w", Describe(obj), err) // the apply would be refused the same way
	}

	if len(conflicts) > 0 {
		return &ConflictError{Object: Describe(obj), Conflicts: conflicts}
	}

	return nil
}

// Prunable implements BootstrapObjects.
func (m *Manifests) Prunable(ctx context.Context, objs []Object) ([]string, error) {
	inv, err := ssa.GetInventory(ctx, m.clientset, InventoryNamespace, InventoryName)
	if err != nil {
		return nil, fmt.Errorf("reading the bootstrap manifests inventory: %w", err)
	}

	rendered := make(map[object.ObjMetadata]bool, len(objs))
	for _, obj := range objs {
		rendered[object.UnstructuredToObjMetadata(obj)] = true
	}

	var out []string

	for _, ref := range inv.Get() {
		if !rendered[ref] {
			out = append(out, ref.GroupKind.Kind+" "+strings.TrimPrefix(ref.Namespace+"/"+ref.Name, "/"))
		}
	}

	return out, nil
}

// Prune implements BootstrapObjects: it applies objs with pruning, which deletes what the inventory holds beyond them.
func (m *Manifests) Prune(ctx context.Context, objs []Object) ([]string, error) {
	copies := make([]Object, 0, len(objs))
	for _, obj := range objs {
		copies = append(copies, obj.DeepCopy())
	}

	changes, err := m.ssa.Apply(ctx, copies, ssa.ApplyOptions{InventoryPolicy: ssa.InventoryPolicyAdoptIfNoInventory})
	if err != nil {
		return nil, fmt.Errorf("pruning: %w", err)
	}

	var pruned []string

	for _, c := range changes {
		if c.Action == ssa.DeletedAction {
			pruned = append(pruned, c.ObjMetadata.GroupKind.Kind+" "+strings.TrimPrefix(c.ObjMetadata.Namespace+"/"+c.ObjMetadata.Name, "/"))
		}
	}

	return pruned, nil
}

// WaitRollout implements BootstrapObjects, by kstatus: a Deployment or DaemonSet is current once its pods are
// updated and ready.
func (m *Manifests) WaitRollout(ctx context.Context, objs []Object, timeout time.Duration) error {
	var set object.ObjMetadataSet

	for _, obj := range objs {
		if gvk := obj.GroupVersionKind(); gvk.Group == "apps" && (gvk.Kind == "Deployment" || gvk.Kind == "DaemonSet") {
			set = append(set, object.UnstructuredToObjMetadata(obj))
		}
	}

	if len(set) == 0 {
		return nil
	}

	if err := m.ssa.Wait(ctx, set, fluxssa.WaitOptions{Interval: time.Second, Timeout: timeout, FailFast: true}); err != nil {
		return fmt.Errorf("waiting for the rollout: %w", err)
	}

	return nil
}

func (m *Manifests) resource(obj Object) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()

	mapping, err := m.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", gvk, err)
	}

	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return m.dynamic.Resource(mapping.Resource).Namespace(obj.GetNamespace()), nil
	}

	return m.dynamic.Resource(mapping.Resource), nil
}

func (m *Manifests) get(ctx context.Context, obj Object) (Object, error) {
	resource, err := m.resource(obj)
	if err != nil {
		return nil, err
	}

	return resource.Get(ctx, obj.GetName(), metav1.GetOptions{})
}
