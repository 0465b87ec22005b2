// Package validate wraps a COSI state so that every write of an upshift resource is checked before it reaches the
// store: input types by the rules their spec declares (resources.Validator), output types by who writes them (only
// controllers, which always write with an owner). A refused write leaves the state untouched and returns an *Error
// that names each bad field; the gRPC layer carries it to clients unchanged (see ToStatus and FromStatus).
package validate

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"

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
}

// Error renders `Cluster "prod" is invalid: spec.talosVersion: "1.x" is not a version like v1.2.3`.
func (e *Error) Error() string {
	return fmt.Sprintf("%s %q is invalid: %s", resources.DisplayType(e.Type), e.ID, e.Violations.Error())
}

// IsError reports whether err (or an error it wraps) is a validation Error.
func IsError(err error) bool {
	var e *Error

	return errors.As(err, &e)
}

// State is a state.CoreState that validates upshift resources on Create and Update.
type State struct {
	state.CoreState
}

// NewState wraps st. Resources outside resources.Namespace pass through unchecked.
func NewState(st state.CoreState) *State {
	return &State{CoreState: st}
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

	err := validator.Validate(ctx, md, s.CoreState)

	var violations resources.Violations
	if errors.As(err, &violations) {
		return &Error{Type: md.Type(), ID: md.ID(), Violations: violations}
	}

	if err != nil {
		return fmt.Errorf("validating %s %q: %w", resources.DisplayType(md.Type()), md.ID(), err)
	}

	return nil
}
