// Package resources holds what every upshift resource type shares: the namespace they live in, the contract
// input types use to declare their validation rules, and helpers to register and instantiate types.
//
// The types themselves live in one package per domain (cluster, observe, upgrade, manifest), one file per type.
package resources

import (
	"context"
	"fmt"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/protobuf"
	"github.com/cosi-project/runtime/pkg/resource/typed"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/registry"
	"github.com/gertd/go-pluralize"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Namespace is the one namespace every upshift resource lives in, so users never have to name it.
const Namespace resource.Namespace = "upshift"

// Getter reads resources: one, or a list (a ConfigPatch is checked against the machines it targets). Validation
// rules get only this, so they can check references but never write; state.CoreState satisfies it.
type Getter interface {
	Get(ctx context.Context, ptr resource.Pointer, opts ...state.GetOption) (resource.Resource, error)
	List(ctx context.Context, kind resource.Kind, opts ...state.ListOption) (resource.List, error)
}

// Validator is implemented by the spec of every input type (the types users write). A type whose spec does not
// implement it is an output: only controllers may write it.
//
// Validate reports problems with the fields as Violations; any other error means the check itself could not run.
type Validator interface {
	Validate(ctx context.Context, md *resource.Metadata, st Getter) error
}

// DestroyChecker is implemented by the spec of an input type that may not always be deleted (a Cluster that still
// has Machines, a Machine in the middle of an upgrade step): the validating state asks it before every Destroy, so
// the Go API, gRPC and the CLI refuse alike. CheckDestroy reports the reasons as Violations; any other error means
// the check itself could not run.
type DestroyChecker interface {
	CheckDestroy(ctx context.Context, md *resource.Metadata, st Getter) error
}

// KnownVersions is implemented by a Getter that knows which versions the engine can roll out (the validating
// state's, from the engine's own configuration): version fields must then name one of them, since a version the
// engine cannot plan to would only surface later as a blocked upgrade. A Getter without it (the CLI's check of a
// file before it writes) checks the form of versions only; the engine checks the rest on write.
type KnownVersions interface {
	// TalosVersions lists the Talos releases of the engine's catalogue, oldest first.
	TalosVersions() []string
	// KubernetesVersions lists the Kubernetes releases the engine knows, oldest first.
	KubernetesVersions() []string
}

// Labeller is implemented by the spec of an input type some of whose fields are also kept as labels, so that
// controllers and users select by them with a label query (a cluster's Machines by upshift.dev/cluster). The
// validating state sets them on every write, so no writer can forget them or let them drift from the spec.
type Labeller interface {
	Labels() map[string]string
}

// WriterAnnotation holds who wrote an input whose spec implements WriterRecorder, as the event log names them.
const WriterAnnotation = "upshift.dev/written-by"

// WriterRecorder is implemented by the spec of an input type whose writer controllers must know (a request that
// the engine acts on and records as asked by someone). The validating state stamps WriterAnnotation on every write,
// so no writer can claim to be someone else.
type WriterRecorder interface {
	RecordsWriter()
}

// Redacted replaces, in what the API shows, the value of every secret that is set: a reader sees which secrets
// a resource holds, never their content.
const Redacted = "<set, redacted>"

// Redactor is implemented by the spec of a sensitive type (its resource definition's Sensitivity is meta.Sensitive,
// which is also what makes the store encrypt it) to say how it is shown without its secrets: Redact replaces the
// value of every secret field that is set with Redacted and leaves the rest. A sensitive type without it is shown
// with an empty spec.
type Redactor interface {
	Redact()
}

// Violation is one problem with one field of a resource, worded for the user who wrote it.
type Violation struct {
	// Field is the path of the field, e.g. "spec.talosVersion".
	Field string
	// Problem says what is wrong and, where it helps, what would be right.
	Problem string
}

// String renders the violation as "field: problem".
func (v Violation) String() string {
	return v.Field + ": " + v.Problem
}

// Violations collects every problem of one resource, so a user fixes them all in one go rather than one per try.
type Violations []Violation

// Add records a problem with field.
func (v *Violations) Add(field, format string, args ...any) {
	*v = append(*v, Violation{Field: field, Problem: fmt.Sprintf(format, args...)})
}

// Error joins the violations with "; ".
func (v Violations) Error() string {
	parts := make([]string, 0, len(v))
	for _, violation := range v {
		parts = append(parts, violation.String())
	}

	return strings.Join(parts, "; ")
}

// Err returns v as an error, or nil when there is no violation.
func (v Violations) Err() error {
	if len(v) == 0 {
		return nil
	}

	return v
}

// IsInput reports whether users may write r: its spec declares validation rules.
func IsInput(r resource.Resource) bool {
	_, ok := r.Spec().(Validator)

	return ok
}

// Register adds the resource definitions of rs to the engine's registry, so clients can resolve their types and
// aliases and print their columns.
func Register(ctx context.Context, reg *registry.ResourceRegistry, rs ...meta.ResourceWithRD) error {
	for _, r := range rs {
		if err := reg.Register(ctx, r); err != nil {
			return fmt.Errorf("registering resource definition %q: %w", r.ResourceDefinition().Type, err)
		}
	}

	return nil
}

// New returns an empty resource of the same type as prototype, with the given id in Namespace. It is how code that
// only knows a type (a YAML document, a CLI argument) gets a typed resource to decode into.
func New(prototype meta.ResourceWithRD, id resource.ID) resource.Resource {
	r := prototype.DeepCopy()
	*r.Metadata() = resource.NewMetadata(Namespace, prototype.ResourceDefinition().Type, id, resource.VersionUndefined)

	return r
}

// ParseVersion parses a Talos or Kubernetes version ("v1.14.1" or "1.14.1") as a full semantic version, so that
// version rules compare versions rather than strings.
func ParseVersion(s string) (semver.Version, error) {
	v, err := semver.Parse(strings.TrimPrefix(s, "v"))
	if err != nil {
		return semver.Version{}, fmt.Errorf("%q is not a version like v1.2.3: %w", s, err)
	}

	return v, nil
}

// CheckVersion adds a violation for field unless s is a version (required or not, as told).
func (v *Violations) CheckVersion(field, s string, required bool) {
	if s == "" {
		if required {
			v.Add(field, "is required (a version like v1.2.3)")
		}

		return
	}

	if _, err := ParseVersion(s); err != nil {
		v.Add(field, "%q is not a version like v1.2.3", s)
	}
}

// CheckKnownVersion adds a violation for field unless s (already checked to be a version) equals one of known:
// the problem names them and how to add one (howToAdd), so the user either fixes a typo or extends the engine.
func (v *Violations) CheckKnownVersion(field, s string, known []string, howToAdd string) {
	want, err := ParseVersion(s)
	if err != nil {
		return // CheckVersion reported it
	}

	for _, k := range known {
		if have, err := ParseVersion(k); err == nil && have.Equals(want) {
			return
		}
	}

	v.Add(field, "%q is not a version the engine knows (known: %s); %s", s, strings.Join(known, ", "), howToAdd)
}

// CheckDNSLabel adds a violation for field unless id is a DNS-1123 label (lower case letters, digits and '-', at
// most 63 characters): the ID of a resource that is also a host or node name (a cluster's, a machine's), so it
// works wherever Talos and Kubernetes use it.
func (v *Violations) CheckDNSLabel(field, id string) {
	if problems := validation.IsDNS1123Label(id); len(problems) > 0 {
		v.Add(field, "%q is not a valid name: %s", id, strings.Join(problems, "; "))
	}
}

// CheckDNSSubdomain adds a violation for field unless id is a DNS-1123 subdomain (DNS labels joined by '.', at most
// 253 characters), the names Kubernetes gives its own objects.
func (v *Violations) CheckDNSSubdomain(field, id string) {
	if problems := validation.IsDNS1123Subdomain(id); len(problems) > 0 {
		v.Add(field, "%q is not a valid name: %s", id, strings.Join(problems, "; "))
	}
}

// CheckExists adds a violation for field unless the resource ptr points to exists; it fails only when the state
// cannot be read.
func (v *Violations) CheckExists(ctx context.Context, st Getter, field string, ptr resource.Pointer) (resource.Resource, error) {
	r, err := st.Get(ctx, ptr)
	if err == nil {
		return r, nil
	}

	if state.IsNotFoundError(err) {
		v.Add(field, "%s %q does not exist", displayType(ptr.Type()), ptr.ID())

		return nil, nil
	}

	return nil, fmt.Errorf("reading %s %q: %w", displayType(ptr.Type()), ptr.ID(), err)
}

// displayType turns "Clusters.upshift.dev" into "cluster" for messages.
func displayType(t resource.Type) string {
	return strings.ToLower(DisplayType(t))
}

var pluralizer = pluralize.NewClient()

// DisplayType turns a type like "MachineStatuses.upshift.dev" into its singular display name, "MachineStatus".
func DisplayType(t resource.Type) string {
	name, _, _ := strings.Cut(t, ".")

	return pluralizer.Singular(name)
}

// NewTyped returns an empty resource of a typed resource type, with the given id in Namespace. Every
// New<Type> constructor of the domain packages is this with its type filled in.
func NewTyped[S typed.DeepCopyable[S], E typed.Extension](typ resource.Type, id resource.ID) *typed.Resource[S, E] {
	var spec S

	return typed.NewResource[S, E](resource.NewMetadata(Namespace, typ, id, resource.VersionUndefined), spec)
}

// MustRegisterType registers how a typed resource type is encoded for the store and gRPC (its spec's protobuf
// tags). Domain packages call it from init; it panics on a spec that cannot be encoded, a programming error that
// must stop the binary at start-up rather than lose writes later.
func MustRegisterType[S typed.DeepCopyable[S], E typed.Extension](typ resource.Type) {
	if err := protobuf.RegisterDynamic[S, typed.Resource[S, E]](typ, &typed.Resource[S, E]{}); err != nil {
		panic(err)
	}
}
