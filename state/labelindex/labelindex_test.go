package labelindex_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/labelindex"
)

const key = cluster.LabelCluster

func ids(list resource.List) []string {
	out := make([]string, 0, len(list.Items))
	for _, r := range list.Items {
		out = append(out, r.Metadata().ID())
	}

	return out
}

// The indexed List answers what a scan of the same state answers, through creates, label changes, destroys and
// re-creates, with resources written before the index was first used as well as after.
func TestListMatchesAScan(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	inner := namespaced.NewState(inmem.Build)
	st := state.WrapCore(labelindex.New(inner, key))
	scan := state.WrapCore(inner)
	rng := rand.New(rand.NewPCG(1, 2))

	write := func(id, value string) {
		r := cluster.NewMachine(id)
		if value != "" {
			r.Metadata().Labels().Set(key, value)
		}

		if _, err := st.Get(ctx, r.Metadata()); state.IsNotFoundError(err) {
			require.NoError(t, st.Create(ctx, r))

			return
		}

		_, err := st.UpdateWithConflicts(ctx, r.Metadata(), func(cur resource.Resource) error {
			if value == "" {
				cur.Metadata().Labels().Delete(key)
			} else {
				cur.Metadata().Labels().Set(key, value)
			}

			return nil
		})
		require.NoError(t, err)
	}

	check := func() {
		for _, value := range []string{"c1", "c2", "c3"} {
			query := state.WithLabelQuery(resource.LabelEqual(key, value))
			want, err := scan.List(ctx, cluster.NewMachine("").Metadata(), query)
			require.NoError(t, err)
			got, err := st.List(ctx, cluster.NewMachine("").Metadata(), query)
			require.NoError(t, err)
			require.Equal(t, ids(want), ids(got), "label %s=%s", key, value)
		}
	}

	for i := range 20 { // before the first indexed read
		write(fmt.Sprintf("m-%d", i), fmt.Sprintf("c%d", 1+i%3))
	}

	for range 2000 {
		id := fmt.Sprintf("m-%d", rng.IntN(40))

		switch rng.IntN(4) {
		case 0:
			if err := st.Destroy(ctx, cluster.NewMachine(id).Metadata()); err != nil {
				require.True(t, state.IsNotFoundError(err), "%v", err)
			}
		case 1:
			write(id, "")
		default:
			write(id, fmt.Sprintf("c%d", 1+rng.IntN(3)))
		}

		check()
	}

	// A query the index does not answer is passed on unchanged.
	all, err := st.List(ctx, cluster.NewMachine("").Metadata(), state.WithLabelQuery(resource.LabelExists(key)))
	require.NoError(t, err)
	want, err := scan.List(ctx, cluster.NewMachine("").Metadata(), state.WithLabelQuery(resource.LabelExists(key)))
	require.NoError(t, err)
	assert.Equal(t, ids(want), ids(all))
}

// Concurrent writers and readers: every resource that exists with a label before a List starts is in its answer.
func TestConcurrentWrites(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	st := state.WrapCore(labelindex.New(namespaced.NewState(inmem.Build), key))

	var wg sync.WaitGroup

	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				r := cluster.NewMachine(fmt.Sprintf("w%d-%d", w, i))
				r.Metadata().Labels().Set(key, "c1")
				assert.NoError(t, st.Create(ctx, r))

				list, err := st.List(ctx, r.Metadata(), state.WithLabelQuery(resource.LabelEqual(key, "c1")))
				assert.NoError(t, err)
				assert.Contains(t, ids(list), r.Metadata().ID(), "its own create is listed")

				if i%3 == 0 {
					assert.NoError(t, st.Destroy(ctx, r.Metadata()))
				}
			}
		})
	}

	wg.Wait()

	list, err := st.List(ctx, cluster.NewMachine("").Metadata(), state.WithLabelQuery(resource.LabelEqual(key, "c1")))
	require.NoError(t, err)
	assert.Len(t, list.Items, 4*(200-67))
}

// countingState counts the Lists that reach the wrapped state.
type countingState struct {
	state.CoreState

	lists int
}

func (c *countingState) List(ctx context.Context, kind resource.Kind, opts ...state.ListOption) (resource.List, error) {
	c.lists++

	return c.CoreState.List(ctx, kind, opts...)
}

// An equality query on the indexed key is answered from the index: after the one full list that builds it, no List
// reaches the wrapped state; any other query is passed on.
func TestIndexedQueryDoesNotScan(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	inner := &countingState{CoreState: namespaced.NewState(inmem.Build)}
	st := state.WrapCore(labelindex.New(inner, key))

	for i := range 10 {
		r := cluster.NewMachine(fmt.Sprintf("m-%d", i))
		r.Metadata().Labels().Set(key, fmt.Sprintf("c%d", i%2))
		require.NoError(t, st.Create(ctx, r))
	}

	for range 3 {
		list, err := st.List(ctx, cluster.NewMachine("").Metadata(), state.WithLabelQuery(resource.LabelEqual(key, "c1")))
		require.NoError(t, err)
		assert.Equal(t, []string{"m-1", "m-3", "m-5", "m-7", "m-9"}, ids(list))
	}

	assert.Equal(t, 1, inner.lists, "one list builds the index, then none")

	_, err := st.List(ctx, cluster.NewMachine("").Metadata(), state.WithLabelQuery(resource.LabelExists(key)))
	require.NoError(t, err)
	assert.Equal(t, 2, inner.lists, "a query the index does not answer is passed on")
}
