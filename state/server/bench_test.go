package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/store"
	"github.com/upshift-io/upshift/state/validate"
)

// writesPerOp is how many durable writes one benchmark iteration makes, so `-benchtime 1x` still measures a rate.
const writesPerOp = 300

// BenchmarkAPIWrites compares one writer creating clusters on the store directly (the baseline), through the
// validating state, and over gRPC through the server: what validation and the API add to a durable write.
func BenchmarkAPIWrites(b *testing.B) {
	for _, path := range []struct {
		name  string
		state func(b *testing.B, st *store.Store) state.CoreState
	}{
		{"store", func(_ *testing.B, st *store.Store) state.CoreState { return st.State() }},
		{"validated", func(_ *testing.B, st *store.Store) state.CoreState { return validate.NewState(st.State()) }},
		{"grpc", func(b *testing.B, st *store.Store) state.CoreState {
			return listen(b, validate.NewState(st.State()), st).dial(b, "bench", server.RoleAdmin).State()
		}},
	} {
		b.Run(path.name, func(b *testing.B) {
			st, err := store.Open(filepath.Join(b.TempDir(), "state.db"))
			require.NoError(b, err)
			b.Cleanup(func() { st.Close() }) //nolint:errcheck

			target := path.state(b, st)
			ctx := context.Background()
			n := 0

			b.ResetTimer()

			start := time.Now()

			for b.Loop() {
				for range writesPerOp {
					n++

					require.NoError(b, target.Create(ctx, newClusterID(fmt.Sprintf("c%d", n))))
				}
			}

			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "writes/s")
		})
	}
}
