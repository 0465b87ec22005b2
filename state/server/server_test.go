package server_test

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/store"
	"github.com/upshift-io/upshift/state/validate"
)

// testServer is a server on a loopback port with its PKI, so tests can issue client configs of any role.
type testServer struct {
	pki      *server.PKI
	endpoint string
}

// listen serves local and st's history on a free loopback port until the test ends.
func listen(tb testing.TB, local state.CoreState, st *store.Store) *testServer {
	tb.Helper()

	pki, err := server.LoadOrCreatePKI(tb.TempDir())
	require.NoError(tb, err)

	srv := server.New(local, st, pki, nil)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)

	go srv.Serve(lis) //nolint:errcheck // Serve returns when Stop is called

	tb.Cleanup(srv.Stop)

	return &testServer{pki: pki, endpoint: lis.Addr().String()}
}

// dial connects to the server as name with role.
func (s *testServer) dial(tb testing.TB, name string, role server.Role) *server.Client {
	tb.Helper()

	cfg, err := s.pki.Issue(name, role, s.endpoint)
	require.NoError(tb, err)

	c, err := server.Dial(s.endpoint, cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, c.Close()) })

	return c
}

// openStore opens a store in a temporary directory, closed when the test ends.
func openStore(tb testing.TB) *store.Store {
	tb.Helper()

	st, err := store.Open(filepath.Join(tb.TempDir(), "state.db"), store.WithEncryptionKey(make([]byte, store.KeySize)))
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, st.Close()) })

	return st
}

// serve runs a server over a real store on a loopback port and returns a client of it (alice, an admin) and the
// local state.
func serve(t *testing.T) (*server.Client, state.State) {
	t.Helper()

	st := openStore(t)
	local := validate.NewState(st.State())

	return listen(t, local, st).dial(t, "alice", server.RoleAdmin), state.WrapCore(local)
}

func newCluster(version string) *cluster.Cluster {
	c := newClusterID("prod")
	c.TypedSpec().TalosVersion = version

	return c
}

func newClusterID(id string) *cluster.Cluster {
	c := cluster.NewCluster(id)
	*c.TypedSpec() = cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.37.2"}

	return c
}

// Writes over gRPC are logged with the API user as writer, and History returns them.
func TestHistoryNamesTheUser(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	c, _ := serve(t)

	require.NoError(t, c.State().Create(ctx, newCluster("v1.14.0")))
	_, err := c.State().UpdateWithConflicts(ctx, newCluster("").Metadata(), func(r resource.Resource) error {
		r.(*cluster.Cluster).TypedSpec().TalosVersion = "v1.14.1" //nolint:forcetypeassert

		return nil
	})
	require.NoError(t, err)

	hist, err := c.History(ctx, newCluster("").Metadata().Namespace(), cluster.ClusterType, "prod")
	require.NoError(t, err)
	require.Len(t, hist.Events, 2)

	assert.Equal(t, []string{"created", "updated"}, []string{hist.Events[0].Kind, hist.Events[1].Kind})
	assert.Equal(t, []uint64{1, 2}, []uint64{hist.Events[0].Version, hist.Events[1].Version})
	assert.Less(t, hist.Events[0].Seq, hist.Events[1].Seq)
	assert.False(t, hist.Events[0].Time.IsZero())
	assert.Equal(t, "user:alice", hist.Events[1].Writer)
	assert.Contains(t, hist.Events[1].Resource, "talosVersion: v1.14.1")
}

// A refused write reaches a gRPC client as the same validation error, with the same message, as the Go API's,
// on Create and on Update (where COSI's client would otherwise report a phase conflict).
func TestValidationErrorOverGRPC(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	c, local := serve(t)

	localErr := local.Create(ctx, newCluster("1.x"))
	require.Error(t, localErr)

	remoteErr := c.State().Create(ctx, newCluster("1.x"))
	require.Error(t, remoteErr)
	assert.True(t, validate.IsError(remoteErr), "%v", remoteErr)
	assert.Equal(t, localErr.Error(), remoteErr.Error())

	require.NoError(t, c.State().Create(ctx, newCluster("v1.14.0")))

	_, err := c.State().UpdateWithConflicts(ctx, newCluster("").Metadata(), func(r resource.Resource) error {
		r.(*cluster.Cluster).TypedSpec().TalosVersion = "1.x" //nolint:forcetypeassert

		return nil
	})
	require.Error(t, err)
	assert.True(t, validate.IsError(err), "%v", err)
	assert.False(t, state.IsPhaseConflictError(err))
	assert.Equal(t, localErr.Error(), err.Error())
}

// An API client cannot write in a controller's name, so outputs stay the controllers'.
func TestOwnerRefusedOverGRPC(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	c, local := serve(t)

	summary := observe.NewClusterSummary("prod")
	err := c.State().Create(ctx, summary, state.WithCreateOwner("ClusterSummaryController"))
	require.Error(t, err)
	assert.True(t, validate.IsError(err), "%v", err)
	assert.Contains(t, err.Error(), `metadata.owner: "ClusterSummaryController" is a controller of the engine`)

	err = c.State().Create(ctx, summary)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "only its controllers write it")

	require.NoError(t, local.Create(ctx, summary, state.WithCreateOwner("ClusterSummaryController")))

	err = c.State().Destroy(ctx, summary.Metadata(), state.WithDestroyOwner("ClusterSummaryController"))
	require.Error(t, err)
	assert.True(t, validate.IsError(err), "%v", err)

	err = c.State().Destroy(ctx, summary.Metadata())
	assert.True(t, state.IsOwnerConflictError(err), "%v", err)
}
