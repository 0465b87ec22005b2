package server_test

import (
	"crypto/tls"
	"testing"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/server"
	"github.com/upshift-io/upshift/state/validate"
)

// testKubeconfig is a kubeconfig the Credentials validation accepts.
const testKubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
users: [{name: u, user: {token: secret-token}}]
`

// authBed is a server with a cluster "prod", its worker "prod-w-1" and its credentials, written by an admin.
func authBed(t *testing.T) *testServer {
	t.Helper()

	st := openStore(t)
	srv := listen(t, validate.NewState(st.State()), st)
	admin := srv.dial(t, "root", server.RoleAdmin).State()
	ctx := t.Context()

	require.NoError(t, admin.Create(ctx, newClusterID("prod")))

	m := cluster.NewMachine("prod-w-1")
	*m.TypedSpec() = cluster.MachineSpec{Cluster: "prod", Role: cluster.RoleWorker, Endpoint: "127.0.0.1:50000"}
	require.NoError(t, admin.Create(ctx, m))

	creds := cluster.NewCredentials("prod")
	creds.TypedSpec().Kubeconfig = testKubeconfig
	require.NoError(t, admin.Create(ctx, creds))

	return srv
}

// requireDenied asserts that err is PermissionDenied with a message naming the caller's role, the verb and the type.
func requireDenied(t *testing.T, err error, role server.Role, verb server.Verb, typ resource.Type) {
	t.Helper()

	require.Error(t, err)
	assert.True(t, server.IsPermissionDenied(err), "%T %v", err, err)
	assert.Contains(t, err.Error(), "(role "+string(role)+") may not "+string(verb)+" "+typ, "%v", err)
}

func upgradeProd(t *testing.T, st state.State, version string) error {
	t.Helper()

	_, err := safe.StateUpdateWithConflicts(t.Context(), st, cluster.NewCluster("prod").Metadata(), func(c *cluster.Cluster) error {
		c.TypedSpec().TalosVersion = version

		return nil
	})

	return err
}

// Without a client certificate, over plaintext, or with a certificate of another engine's CA, no call gets in.
func TestAuthRefusesUnauthenticated(t *testing.T) {
	t.Parallel()

	srv := authBed(t)
	cfg, err := srv.pki.Issue("mallory", server.RoleAdmin, srv.endpoint)
	require.NoError(t, err)

	serverOnly, err := cfg.TLS()
	require.NoError(t, err)

	serverOnly.Certificates = nil // trusts the server, presents nothing

	other, err := server.LoadOrCreatePKI(t.TempDir())
	require.NoError(t, err)

	foreign, err := other.Issue("mallory", server.RoleAdmin, srv.endpoint)
	require.NoError(t, err)

	foreignTLS, err := foreign.TLS()
	require.NoError(t, err)

	foreignTLS.RootCAs = serverOnly.RootCAs // it even trusts the server: only its own certificate is foreign

	for name, creds := range map[string]credentials.TransportCredentials{
		"no client certificate":         credentials.NewTLS(serverOnly),
		"plaintext":                     insecure.NewCredentials(),
		"certificate of another CA":     credentials.NewTLS(foreignTLS),
		"no client certificate, no TLS": insecure.NewCredentials(),
	} {
		conn, err := grpc.NewClient(srv.endpoint, grpc.WithTransportCredentials(creds))
		require.NoError(t, err, name)

		_, err = v1alpha1.NewStateClient(conn).Get(t.Context(), &v1alpha1.GetRequest{
			Namespace: resources.Namespace, Type: cluster.CredentialsType, Id: "prod",
		})
		require.Error(t, err, name)
		assert.Equal(t, codes.Unavailable, status.Code(err), "%s: %v", name, err)

		require.NoError(t, conn.Close())
	}

	// And through Dial, as the CLI connects, with the other engine's config.
	c, err := server.Dial(srv.endpoint, foreign)
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, c.Close()) })

	_, err = c.State().Get(t.Context(), cluster.NewCluster("prod").Metadata())
	require.Error(t, err)
}

// A reader reads (get, list, watch, history) but cannot start an upgrade, lock, or read credentials.
func TestAuthReader(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	srv := authBed(t)
	reader := srv.dial(t, "rita", server.RoleReader)
	st := reader.State()

	_, err := st.Get(ctx, cluster.NewCluster("prod").Metadata())
	require.NoError(t, err)

	machines, err := st.List(ctx, cluster.NewMachine("").Metadata())
	require.NoError(t, err)
	assert.Len(t, machines.Items, 1)

	_, err = reader.History(ctx, resources.Namespace, cluster.ClusterType, "prod")
	require.NoError(t, err)

	requireDenied(t, upgradeProd(t, st, "v1.14.0"), server.RoleReader, server.VerbUpdate, cluster.ClusterType)
	requireDenied(t, st.Create(ctx, cluster.NewMachineLock("prod-w-1")), server.RoleReader, server.VerbCreate, cluster.MachineLockType)

	_, err = st.Get(ctx, cluster.NewCredentials("prod").Metadata())
	requireDenied(t, err, server.RoleReader, server.VerbRead, cluster.CredentialsType)

	_, err = st.List(ctx, cluster.NewCredentials("").Metadata())
	requireDenied(t, err, server.RoleReader, server.VerbRead, cluster.CredentialsType)

	_, err = reader.History(ctx, resources.Namespace, cluster.CredentialsType, "prod")
	requireDenied(t, err, server.RoleReader, server.VerbRead, cluster.CredentialsType)

	// A watch of credentials ends with the refusal before it delivers anything.
	events := make(chan state.Event, 1)
	if err = st.WatchKind(ctx, cluster.NewCredentials("").Metadata(), events); err == nil {
		ev := <-events
		require.Equal(t, state.Errored, ev.Type)
		err = ev.Error
	}

	requireDenied(t, err, server.RoleReader, server.VerbRead, cluster.CredentialsType)

	_, err = reader.IssueConfig(ctx, "rita2", server.RoleAdmin)
	requireDenied(t, err, server.RoleReader, server.VerbIssue, server.ClientConfigType)
}

// An operator upgrades and locks, and its name is the writer in the history; it cannot write credentials or add
// machines. An admin can.
func TestAuthOperatorAndAdmin(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	srv := authBed(t)
	operator := srv.dial(t, "olga", server.RoleOperator)
	st := operator.State()

	require.NoError(t, upgradeProd(t, st, "v1.14.0"))
	require.NoError(t, st.Create(ctx, cluster.NewMachineLock("prod-w-1")))

	creds := cluster.NewCredentials("prod")
	creds.TypedSpec().Kubeconfig = testKubeconfig
	requireDenied(t, st.Destroy(ctx, creds.Metadata()), server.RoleOperator, server.VerbDestroy, cluster.CredentialsType)

	_, err := st.Get(ctx, creds.Metadata())
	requireDenied(t, err, server.RoleOperator, server.VerbRead, cluster.CredentialsType)

	m := cluster.NewMachine("prod-w-2")
	*m.TypedSpec() = cluster.MachineSpec{Cluster: "prod", Role: cluster.RoleWorker, Endpoint: "127.0.0.1:50000"}
	requireDenied(t, st.Create(ctx, m), server.RoleOperator, server.VerbCreate, cluster.MachineType)

	hist, err := operator.History(ctx, resources.Namespace, cluster.ClusterType, "prod")
	require.NoError(t, err)
	require.Len(t, hist.Events, 2)
	assert.Equal(t, "user:root", hist.Events[0].Writer)
	assert.Equal(t, "user:olga", hist.Events[1].Writer, "the writer is the certificate's name")

	lockHist, err := operator.History(ctx, resources.Namespace, cluster.MachineLockType, "prod-w-1")
	require.NoError(t, err)
	require.Len(t, lockHist.Events, 1)
	assert.Equal(t, "user:olga", lockHist.Events[0].Writer)

	admin := srv.dial(t, "ada", server.RoleAdmin)

	_, err = safe.StateUpdateWithConflicts(ctx, admin.State(), creds.Metadata(), func(c *cluster.Credentials) error {
		c.TypedSpec().Kubeconfig = testKubeconfig + "# rotated\n"

		return nil
	})
	require.NoError(t, err)

	got, err := safe.StateGet[*cluster.Credentials](ctx, admin.State(), creds.Metadata())
	require.NoError(t, err)
	assert.Equal(t, resources.Redacted, got.TypedSpec().Kubeconfig, "secrets are redacted unless asked for, for an admin too")

	got, err = safe.StateGet[*cluster.Credentials](server.WithSecretsShown(ctx), admin.State(), creds.Metadata())
	require.NoError(t, err)
	assert.Contains(t, got.TypedSpec().Kubeconfig, "# rotated", "an admin may read them back")

	require.NoError(t, admin.State().Create(ctx, m))

	// An admin issues configs over the API; the one issued carries its name and role.
	issued, err := admin.IssueConfig(ctx, "rita", server.RoleReader)
	require.NoError(t, err)
	assert.Equal(t, srv.endpoint, issued.Endpoint)

	name, role, err := issued.Identity()
	require.NoError(t, err)
	assert.Equal(t, "rita", name)
	assert.Equal(t, server.RoleReader, role)

	rita, err := server.Dial(issued.Endpoint, issued)
	require.NoError(t, err)

	t.Cleanup(func() { require.NoError(t, rita.Close()) })

	requireDenied(t, upgradeProd(t, rita.State(), "v1.13.4"), server.RoleReader, server.VerbUpdate, cluster.ClusterType)
}

// The in-process Go API has no caller and is not checked; a handler's own check (showing secrets) follows the
// same table.
func TestAuthorizeCaller(t *testing.T) {
	t.Parallel()

	require.NoError(t, server.AuthorizeCaller(t.Context(), server.VerbShowSecrets, cluster.CredentialsType))

	_, err := server.ParseRole("root")
	require.ErrorContains(t, err, `unknown role "root" (roles: reader, operator, admin)`)
}

// A client config survives a write and a load, and a damaged one is named at load.
func TestClientConfigRoundTrip(t *testing.T) {
	t.Parallel()

	pki, err := server.LoadOrCreatePKI(t.TempDir())
	require.NoError(t, err)

	cfg, err := pki.Issue("ci", server.RoleOperator, "127.0.0.1:50651")
	require.NoError(t, err)

	path := t.TempDir() + "/config"
	require.NoError(t, cfg.Write(path))

	loaded, err := server.LoadClientConfig(path)
	require.NoError(t, err)
	assert.Equal(t, cfg, loaded)

	_, err = server.ParseClientConfig([]byte("endpoint: x\nca: nope\n"))
	require.ErrorContains(t, err, "ca, crt and key are all required")

	var tlsCfg *tls.Config

	tlsCfg, err = loaded.TLS()
	require.NoError(t, err)
	assert.Equal(t, server.ServerName, tlsCfg.ServerName)
}
