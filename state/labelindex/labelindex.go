// Package labelindex answers a COSI List whose label query is one equality on a chosen key (a cluster's Machines
// by upshift.dev/cluster) from an index, instead of the scan of the whole collection that COSI's in-memory state
// makes: a fleet of 10,000 machines would otherwise pay for 10,000 label checks on every per-cluster read.
//
// The index is kept by the state itself on every write, so no controller keeps one of its own. It may hold more
// IDs than carry a value (an entry is added before the write and removed only after a destroy), never fewer; every
// candidate is read and checked against the whole query, so a List answers exactly what a scan would have at some
// moment during the call.
package labelindex

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
)

// State is a state.CoreState that indexes the values of some label keys.
type State struct {
	state.CoreState

	keys []string

	mu          sync.Mutex // guards collections only; each collection has its own lock
	collections map[collectionKey]*collection
}

type collectionKey struct {
	ns  resource.Namespace
	typ resource.Type
}

// collection is the index of one (namespace, type).
type collection struct {
	mu sync.Mutex

	// built is set once a full list of the collection has been merged in; until then Lists scan.
	built bool
	// ids is, per label key and value, the IDs that may carry it.
	ids map[string]map[string]map[resource.ID]struct{}
	// gen counts the writes of each ID, so a destroy removes its entries only if no write came after it.
	gen map[resource.ID]uint64
}

// New wraps st, indexing the label keys given.
func New(st state.CoreState, keys ...string) *State {
	return &State{CoreState: st, keys: keys, collections: map[collectionKey]*collection{}}
}

func (s *State) collection(kind resource.Kind) *collection {
	key := collectionKey{ns: kind.Namespace(), typ: kind.Type()}

	s.mu.Lock()
	defer s.mu.Unlock()

	c, ok := s.collections[key]
	if !ok {
		c = &collection{ids: map[string]map[string]map[resource.ID]struct{}{}, gen: map[resource.ID]uint64{}}
		s.collections[key] = c
	}

	return c
}

// add records r's values of the indexed keys; the caller holds c.mu.
func (s *State) add(c *collection, r resource.Resource) {
	id := r.Metadata().ID()
	c.gen[id]++

	for _, key := range s.keys {
		value, ok := r.Metadata().Labels().Get(key)
		if !ok {
			continue
		}

		if c.ids[key] == nil {
			c.ids[key] = map[string]map[resource.ID]struct{}{}
		}

		if c.ids[key][value] == nil {
			c.ids[key][value] = map[resource.ID]struct{}{}
		}

		c.ids[key][value][id] = struct{}{}
	}
}

// remember adds r to the index before it is written. A resource with none of the keys costs nothing: it has no
// entry a destroy could race with.
func (s *State) remember(r resource.Resource) {
	if !slices.ContainsFunc(s.keys, func(key string) bool { _, ok := r.Metadata().Labels().Get(key); return ok }) {
		return
	}

	c := s.collection(r.Metadata())

	c.mu.Lock()
	defer c.mu.Unlock()

	s.add(c, r)
}

// Create implements state.CoreState.
func (s *State) Create(ctx context.Context, r resource.Resource, opts ...state.CreateOption) error {
	s.remember(r)

	return s.CoreState.Create(ctx, r, opts...)
}

// Update implements state.CoreState.
func (s *State) Update(ctx context.Context, r resource.Resource, opts ...state.UpdateOption) error {
	s.remember(r)

	return s.CoreState.Update(ctx, r, opts...)
}

// Destroy implements state.CoreState: once the resource is gone, its entries go too, unless it was written again
// meanwhile.
func (s *State) Destroy(ctx context.Context, ptr resource.Pointer, opts ...state.DestroyOption) error {
	c := s.collection(ptr)

	c.mu.Lock()
	gen, indexed := c.gen[ptr.ID()]
	c.mu.Unlock()

	if err := s.CoreState.Destroy(ctx, ptr, opts...); err != nil || !indexed {
		return err
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	if c.gen[ptr.ID()] != gen {
		return nil
	}

	delete(c.gen, ptr.ID())

	for _, values := range c.ids {
		for value, ids := range values {
			delete(ids, ptr.ID())

			if len(ids) == 0 {
				delete(values, value)
			}
		}
	}

	return nil
}

// List implements state.CoreState: a query that is one equality on an indexed key reads only the candidates.
func (s *State) List(ctx context.Context, kind resource.Kind, opts ...state.ListOption) (resource.List, error) {
	var options state.ListOptions

	for _, opt := range opts {
		opt(&options)
	}

	key, value, ok := s.indexed(options)
	if !ok || options.UnmarshalOptions.SkipProtobufUnmarshal {
		return s.CoreState.List(ctx, kind, opts...)
	}

	candidates, err := s.candidates(ctx, kind, key, value)
	if err != nil {
		return resource.List{}, err
	}

	out := resource.List{Items: make([]resource.Resource, 0, len(candidates))}

	for _, id := range candidates {
		r, err := s.CoreState.Get(ctx, resource.NewMetadata(kind.Namespace(), kind.Type(), id, resource.VersionUndefined))
		if state.IsNotFoundError(err) {
			continue
		} else if err != nil {
			return resource.List{}, fmt.Errorf("reading %s %q for a label query: %w", kind.Type(), id, err)
		}

		if options.IDQuery.Matches(*r.Metadata()) && options.LabelQueries.Matches(*r.Metadata().Labels()) {
			out.Items = append(out.Items, r)
		}
	}

	return out, nil
}

// indexed reports whether options are a label query the index answers: exactly one query with one equality term
// on an indexed key.
func (s *State) indexed(options state.ListOptions) (key, value string, ok bool) {
	if len(options.LabelQueries) != 1 || len(options.LabelQueries[0].Terms) != 1 {
		return "", "", false
	}

	term := options.LabelQueries[0].Terms[0]
	if term.Op != resource.LabelOpEqual || term.Invert || len(term.Value) != 1 || !slices.Contains(s.keys, term.Key) {
		return "", "", false
	}

	return term.Key, term.Value[0], true
}

// candidates returns, sorted, the IDs that may carry key=value, building the collection's index on first use from
// a full list merged with what writes recorded meanwhile.
func (s *State) candidates(ctx context.Context, kind resource.Kind, key, value string) ([]resource.ID, error) {
	c := s.collection(kind)

	c.mu.Lock()
	built := c.built
	c.mu.Unlock()

	if !built {
		all, err := s.CoreState.List(ctx, kind)
		if err != nil {
			return nil, err
		}

		c.mu.Lock()
		for _, r := range all.Items {
			s.add(c, r)
		}

		c.built = true
		c.mu.Unlock()
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	ids := make([]resource.ID, 0, len(c.ids[key][value]))
	for id := range c.ids[key][value] {
		ids = append(ids, id)
	}

	slices.SortFunc(ids, strings.Compare)

	return ids, nil
}
