package server

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/state/validate"
)

// apiState is the state as API clients may write it: without an owner. Owners name the controllers, which run
// inside the engine; a client presenting one could otherwise write the engine's outputs in a controller's name.
type apiState struct {
	state.CoreState
}

// Create refuses a resource created with an owner.
func (s apiState) Create(ctx context.Context, r resource.Resource, opts ...state.CreateOption) error {
	var options state.CreateOptions

	for _, opt := range opts {
		opt(&options)
	}

	if err := refuseOwner(r.Metadata(), options.Owner); err != nil {
		return err
	}

	return s.CoreState.Create(ctx, r, opts...)
}

// Update refuses an update made with an owner.
func (s apiState) Update(ctx context.Context, r resource.Resource, opts ...state.UpdateOption) error {
	options := state.DefaultUpdateOptions()

	for _, opt := range opts {
		opt(&options)
	}

	if err := refuseOwner(r.Metadata(), options.Owner); err != nil {
		return err
	}

	return s.CoreState.Update(ctx, r, opts...)
}

// Destroy refuses a destroy made with an owner.
func (s apiState) Destroy(ctx context.Context, ptr resource.Pointer, opts ...state.DestroyOption) error {
	var options state.DestroyOptions

	for _, opt := range opts {
		opt(&options)
	}

	if err := refuseOwner(ptr, options.Owner); err != nil {
		return err
	}

	return s.CoreState.Destroy(ctx, ptr, opts...)
}

func refuseOwner(ptr resource.Pointer, owner resource.Owner) error {
	if owner == "" {
		return nil
	}

	return &validate.Error{Type: ptr.Type(), ID: ptr.ID(), Violations: resources.Violations{{
		Field:   "metadata.owner",
		Problem: fmt.Sprintf("%q is a controller of the engine; writes over the API carry no owner", owner),
	}}}
}
