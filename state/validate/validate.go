// Package validate wraps a COSI state so that every write of an upshift resource is checked before it reaches the
// store: input types by the rules their spec declares (resources.Validator), output types by who writes them (only
// controllers, which always write with an owner); deletes of input types by the rules their spec declares
// (resources.DestroyChecker). A refused write leaves the state untouched and returns an *Error that names each bad
// field; the gRPC layer carries it to clients unchanged (see ToStatus and FromStatus).
package validate

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/state/store"
)

// Error is a write refused because the resource is invalid. It is an error behaviour of its own (IsError), distinct
// from COSI's not-found and conflict errors, and its message is the same wherever it is read.
type Error struct {
	// Type is the resource type of the refused write.
	Type resource.Type
	// ID is the resource ID of the refused write.
	ID resource.ID
	// Violations lists every problem found, one per field.
	Violations resources.Violations
	// Delete says the refused write was a delete (the resource is valid; deleting it now is not).
	Delete bool
}

// Error renders `Cluster "prod" is invalid: spec.talosVersion: "1.x" is not a version like v1.2.3`, or for a
// delete `Cluster "prod" cannot be deleted: metadata.id: cluster "prod" still has 2 machines (...)`.
func (e *Error) Error() string {
	what := "is invalid"
	if e.Delete {
		what = "cannot be deleted"
	}

	return fmt.Sprintf("%s %q %s: %s", resources.DisplayType(e.Type), e.ID, what, e.Violations.Error())
}

// IsError reports whether err (or an error it wraps) is a validation Error.
func IsError(err error) bool {
	var e *Error

	return errors.As(err, &e)
}

// State is a state.CoreState that validates upshift resources on Create, Update (a teardown among them) and Destroy.
type State struct {
	state.CoreState

	known resources.KnownVersions
}

// Option configures a State.
type Option func(*State)

// WithKnownVersions sets the versions a Cluster may ask for: the engine's own (its Talos catalogue and Kubernetes
// releases), so validation never admits a version the engine it guards cannot roll out. Default: the versions the
// engine ships with (versions.Shipped, kuberollout.DefaultReleases).
func WithKnownVersions(known resources.KnownVersions) Option {
	return func(s *State) { s.known = known }
}

// NewState wraps st. Resources outside resources.Namespace pass through unchecked.
func NewState(st state.CoreState, opts ...Option) *State {
	s := &State{CoreState: st, known: versions.Known{Talos: versions.Shipped(), Kubernetes: kuberollout.DefaultReleases}}

	for _, opt := range opts {
		opt(s)
	}

	return s
}

// getter is what validation rules read through: the inner state, and the versions the engine knows.
type getter struct {
	state.CoreState
	resources.KnownVersions
}

// checkDestroy runs the delete rules of the resource at ptr; one that does not exist is left to the inner state.
func (s *State) checkDestroy(ctx context.Context, ptr resource.Pointer) error {
	if ptr.Namespace() != resources.Namespace {
		return nil
	}

	current, err := s.CoreState.Get(ctx, ptr)
	if err != nil {
		return nil //nolint:nilerr // the inner state reports not-found the usual way
	}

	checker, ok := current.Spec().(resources.DestroyChecker)
	if !ok {
		return nil
	}

	return s.refusal(current.Metadata(), checker.CheckDestroy(ctx, current.Metadata(), s.getter()), true)
}

func (s *State) getter() getter {
	return getter{CoreState: s.CoreState, KnownVersions: s.known}
}

// Create validates r, then creates it.
func (s *State) Create(ctx context.Context, r resource.Resource, opts ...state.CreateOption) error {
	var options state.CreateOptions

	for _, opt := range opts {
		opt(&options)
	}

	if err := s.check(ctx, r, options.Owner); err != nil {
		return err
	}

	setLabels(r)
	setWriter(ctx, r)

	return s.CoreState.Create(ctx, r, opts...)
}

// Update validates an input r when its spec changed, then updates it. Writes that leave the spec alone
// (finalizers, labels, phase) are not re-validated, so a resource stays manageable even after a resource it
// references is gone. Outputs pass straight through, without a read: the state already refuses an update whose
// owner differs from the creator's, and a read would wait for the type's queued commits and so serialize the
// controllers' concurrent writes.
func (s *State) Update(ctx context.Context, r resource.Resource, opts ...state.UpdateOption) error {
	if r.Metadata().Namespace() != resources.Namespace || !resources.IsInput(r) {
		return s.CoreState.Update(ctx, r, opts...)
	}

	options := state.DefaultUpdateOptions()

	for _, opt := range opts {
		opt(&options)
	}

	current, err := s.CoreState.Get(ctx, r.Metadata())
	if err != nil {
		return s.CoreState.Update(ctx, r, opts...) // the inner state reports not-found the usual way
	}

	// A teardown is the first half of a delete: refused by the same rules, so a refused delete leaves no trace.
	if r.Metadata().Phase() == resource.PhaseTearingDown && current.Metadata().Phase() != resource.PhaseTearingDown {
		if err := s.checkDestroy(ctx, r.Metadata()); err != nil {
			return err
		}
	}

	if !reflect.DeepEqual(current.Spec(), r.Spec()) {
		if err := s.check(ctx, r, options.Owner); err != nil {
			return err
		}
	}

	setLabels(r)
	setWriter(ctx, r)

	return s.CoreState.Update(ctx, r, opts...)
}

// setWriter stamps the writer on an input that records it (resources.WriterRecorder).
func setWriter(ctx context.Context, r resource.Resource) {
	if _, ok := r.Spec().(resources.WriterRecorder); ok && r.Metadata().Namespace() == resources.Namespace {
		r.Metadata().Annotations().Set(resources.WriterAnnotation, store.Writer(ctx))
	}
}

// setLabels keeps the labels of an upshift input in step with its spec (resources.Labeller).
func setLabels(r resource.Resource) {
	labeller, ok := r.Spec().(resources.Labeller)
	if !ok || r.Metadata().Namespace() != resources.Namespace {
		return
	}

	for k, v := range labeller.Labels() {
		r.Metadata().Labels().Set(k, v)
	}
}

// check runs the rules for r written by owner.
func (s *State) check(ctx context.Context, r resource.Resource, owner resource.Owner) error {
	md := r.Metadata()
	if md.Namespace() != resources.Namespace {
		return nil
	}

	validator, isInput := r.Spec().(resources.Validator)
	if !isInput {
		if owner == "" {
			return &Error{Type: md.Type(), ID: md.ID(), Violations: resources.Violations{{
				Field:   "metadata.owner",
				Problem: fmt.Sprintf("%s is an output of the engine: only its controllers write it", resources.DisplayType(md.Type())),
			}}}
		}

		return nil
	}

	return s.refusal(md, validator.Validate(ctx, md, s.getter()), false)
}

// refusal turns what a rule returned for md into an *Error (violations) or a wrapped error (the check could not run).
func (s *State) refusal(md *resource.Metadata, err error, isDelete bool) error {
	var violations resources.Violations
	if errors.As(err, &violations) {
		return &Error{Type: md.Type(), ID: md.ID(), Violations: violations, Delete: isDelete}
	}

	if err != nil {
		return fmt.Errorf("validating %s %q: %w", resources.DisplayType(md.Type()), md.ID(), err)
	}

	return nil
}
