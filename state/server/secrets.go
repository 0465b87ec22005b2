package server

import (
	"context"
	"reflect"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"google.golang.org/grpc/metadata"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/store"
)

// ShowSecretsMetadataKey is the gRPC metadata key with which a call asks to read secrets back (WithSecretsShown).
// Without it, every resource of a sensitive type leaves the server redacted.
const ShowSecretsMetadataKey = "x-upshift-show-secrets"

// WithSecretsShown asks the server to return the resources of sensitive types (Credentials) with their secrets
// for the calls made with the returned context: `upshift get --show-secrets`, and `apply`, which compares what it
// writes with what is stored.
func WithSecretsShown(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, ShowSecretsMetadataKey, "true")
}

// secretsAsked reports whether the call asked to read secrets back.
func secretsAsked(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}

	values := md.Get(ShowSecretsMetadataKey)

	return len(values) > 0 && values[0] == "true"
}

// authorizeSecrets is the one place that decides whether a caller who asked may read secrets back: the role the
// permission table gives showing the secrets of Credentials (admin), the one sensitive type a client may ask for.
func authorizeSecrets(ctx context.Context) error {
	return AuthorizeCaller(ctx, VerbShowSecrets, cluster.CredentialsType)
}

// secretsShown decides, once per call, whether that call's resources keep their secrets: only when it asked and
// is allowed to. Asking without being allowed is an error, not a silent redaction.
func secretsShown(ctx context.Context) (bool, error) {
	if !secretsAsked(ctx) {
		return false, nil
	}

	if err := authorizeSecrets(ctx); err != nil {
		return false, err
	}

	return true, nil
}

// redact returns r as a caller that may not see secrets gets it: a resource of a sensitive type (store.Sensitive,
// the same declaration that makes the store encrypt it) as a copy whose spec says which secrets are set and holds
// none of them (resources.Redactor), or with an empty spec if its type does not say how; any other resource as is.
func redact(r resource.Resource) resource.Resource { //nolint:ireturn
	if r == nil || !store.Sensitive(r) {
		return r
	}

	c := r.DeepCopy()

	if redactor, ok := c.Spec().(resources.Redactor); ok {
		redactor.Redact()

		return c
	}

	if v := reflect.ValueOf(c.Spec()); v.Kind() == reflect.Pointer && !v.IsNil() {
		v.Elem().SetZero()
	}

	return c
}

func redactEvent(ev state.Event) state.Event {
	ev.Resource, ev.Old = redact(ev.Resource), redact(ev.Old)

	return ev
}

// Get redacts a sensitive resource unless the call may see secrets.
func (s apiState) Get(ctx context.Context, ptr resource.Pointer, opts ...state.GetOption) (resource.Resource, error) { //nolint:ireturn
	show, err := secretsShown(ctx)
	if err != nil {
		return nil, err
	}

	r, err := s.CoreState.Get(ctx, ptr, opts...)
	if err != nil || show {
		return r, err
	}

	return redact(r), nil
}

// List redacts sensitive resources unless the call may see secrets.
func (s apiState) List(ctx context.Context, kind resource.Kind, opts ...state.ListOption) (resource.List, error) {
	show, err := secretsShown(ctx)
	if err != nil {
		return resource.List{}, err
	}

	list, err := s.CoreState.List(ctx, kind, opts...)
	if err != nil || show {
		return list, err
	}

	items := make([]resource.Resource, len(list.Items))
	for i, r := range list.Items {
		items[i] = redact(r)
	}

	return resource.List{Items: items}, nil
}

// Watch redacts the resources of every event unless the call may see secrets.
func (s apiState) Watch(ctx context.Context, ptr resource.Pointer, ch chan<- state.Event, opts ...state.WatchOption) error {
	return watchRedacted(ctx, ch, redactEvent, func(in chan<- state.Event) error { return s.CoreState.Watch(ctx, ptr, in, opts...) })
}

// WatchKind redacts the resources of every event unless the call may see secrets.
func (s apiState) WatchKind(ctx context.Context, kind resource.Kind, ch chan<- state.Event, opts ...state.WatchKindOption) error {
	return watchRedacted(ctx, ch, redactEvent, func(in chan<- state.Event) error { return s.CoreState.WatchKind(ctx, kind, in, opts...) })
}

// WatchKindAggregated redacts the resources of every event unless the call may see secrets.
func (s apiState) WatchKindAggregated(ctx context.Context, kind resource.Kind, ch chan<- []state.Event, opts ...state.WatchKindOption) error {
	redactAll := func(evs []state.Event) []state.Event {
		out := make([]state.Event, len(evs))
		for i, ev := range evs {
			out[i] = redactEvent(ev)
		}

		return out
	}

	return watchRedacted(ctx, ch, redactAll, func(in chan<- []state.Event) error {
		return s.CoreState.WatchKindAggregated(ctx, kind, in, opts...)
	})
}

// watchRedacted starts a watch with start; unless the call may see secrets, it watches into a channel of its own
// and forwards every event through redactEv, until ctx ends.
func watchRedacted[T any](ctx context.Context, ch chan<- T, redactEv func(T) T, start func(chan<- T) error) error {
	show, err := secretsShown(ctx)
	if err != nil {
		return err
	}

	if show {
		return start(ch)
	}

	in := make(chan T)
	if err = start(in); err != nil {
		return err
	}

	go func() {
		for {
			var ev T

			select {
			case <-ctx.Done():
				return
			case ev = <-in:
			}

			select {
			case <-ctx.Done():
				return
			case ch <- redactEv(ev):
			}
		}
	}()

	return nil
}
