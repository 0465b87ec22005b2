package metrics

import (
	"context"
	"sync"

	"github.com/cosi-project/runtime/pkg/resource"
)

// RunWatching is Run, returning once the watches of every type have read their initial contents, so that a test's
// writes after it are transitions.
func (m *Metrics) RunWatching(ctx context.Context) {
	var (
		mu   sync.Mutex
		seen = map[resource.Type]bool{}
		all  = make(chan struct{})
	)

	t := newTransitions(m)
	t.bootstrapped = func(typ resource.Type) {
		mu.Lock()
		defer mu.Unlock()

		if seen[typ] {
			return
		}

		seen[typ] = true
		if len(seen) == len(watchedTypes(t)) {
			close(all)
		}
	}

	go t.run(ctx)

	select {
	case <-all:
	case <-ctx.Done():
	}
}
