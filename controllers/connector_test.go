package controllers_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
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
