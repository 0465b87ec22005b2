package controllers_test

import (
	"strings"
	"testing"

	sideroX509 "github.com/siderolabs/crypto/x509"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
)

func TestCredentialsConnector(t *testing.T) {
	t.Parallel()

	conn := controllers.NewCredentialsConnector()
	t.Cleanup(func() { require.NoError(t, conn.Close()) })

	access := controllers.ClusterAccess{Cluster: "c1", Credentials: cluster.CredentialsSpec{Kubeconfig: testKubeconfig}}

	first, err := conn.Kubernetes(t.Context(), access)
	require.NoError(t, err)

	again, err := conn.Kubernetes(t.Context(), access)
	require.NoError(t, err)
	assert.Same(t, first, again, "one client per cluster while its credentials stay")

	access.Credentials.Kubeconfig = strings.Replace(testKubeconfig, "6443", "7443", 1)
	changed, err := conn.Kubernetes(t.Context(), access)
	require.NoError(t, err)
	assert.NotSame(t, first, changed, "new credentials, new client")

	_, err = conn.Kubernetes(t.Context(), controllers.ClusterAccess{Cluster: "c2", Credentials: cluster.CredentialsSpec{Talosconfig: "x"}})
	require.ErrorIs(t, err, controllers.ErrNoKubernetes)

	_, err = conn.Talos(t.Context(), controllers.ClusterAccess{Cluster: "c2", Credentials: cluster.CredentialsSpec{Kubeconfig: testKubeconfig}})
	require.ErrorContains(t, err, `cluster "c2": no talosconfig`)

	_, err = conn.Talos(t.Context(), controllers.ClusterAccess{Cluster: "c2", Credentials: cluster.CredentialsSpec{Talosconfig: "{{"}})
	require.ErrorContains(t, err, "reading talosconfig")
}

// TestCredentialsConnectorTalos: one Talos client per cluster when its talosconfig names endpoints, one per
// machine endpoint when it names none, and new clients when the talosconfig changes.
func TestCredentialsConnectorTalos(t *testing.T) {
	t.Parallel()

	conn := controllers.NewCredentialsConnector()
	t.Cleanup(func() { require.NoError(t, conn.Close()) })

	get := func(talosconfig, endpoint string) talos.API {
		t.Helper()

		c, err := conn.Talos(t.Context(), controllers.ClusterAccess{Cluster: "c1", Credentials: cluster.CredentialsSpec{Talosconfig: talosconfig}, Endpoint: endpoint})
		require.NoError(t, err)

		return c
	}

	withEndpoints := testTalosconfig(t, "127.0.0.1:50000")
	first := get(withEndpoints, "10.0.0.1:50000")
	assert.Same(t, first, get(withEndpoints, "10.0.0.2:50000"), "the talosconfig's endpoint serves every machine")

	withoutEndpoints := testTalosconfig(t)
	one := get(withoutEndpoints, "10.0.0.1:50000")
	assert.NotSame(t, first, one, "new credentials, new client")
	assert.Same(t, one, get(withoutEndpoints, "10.0.0.1:50000"), "one client per machine endpoint")
	assert.NotSame(t, one, get(withoutEndpoints, "10.0.0.2:50000"), "each machine endpoint has its own client")
}

func testTalosconfig(t *testing.T, endpoints ...string) string {
	t.Helper()

	ca, err := sideroX509.NewSelfSignedCertificateAuthority(sideroX509.ECDSA(true))
	require.NoError(t, err)

	// The CA's own pair stands in for the client's: a client is built without connecting.
	cfg := clientconfig.NewConfig("test", endpoints, ca.CrtPEM, &sideroX509.PEMEncodedCertificateAndKey{Crt: ca.CrtPEM, Key: ca.KeyPEM})

	b, err := cfg.Bytes()
	require.NoError(t, err)

	return string(b)
}
