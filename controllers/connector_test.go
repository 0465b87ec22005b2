package controllers_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	sideroX509 "github.com/siderolabs/crypto/x509"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/emptypb"

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

	_, err = conn.Talos(t.Context(), controllers.ClusterAccess{Cluster: "c2", Credentials: cluster.CredentialsSpec{Talosconfig: "{{ secret-7d1a"}})
	require.ErrorContains(t, err, "talosconfig does not parse")
	require.NotContains(t, err.Error(), "secret-7d1a", "the error lands in statuses and logs: it never quotes the talosconfig")
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

// A credentials change while a call is in flight replaces the cluster's Talos client without cutting the call
// off: it finishes on the client it started with, which closes afterwards; a call made on it then was not sent
// and says so (ErrClientReplaced), so the caller knows it may make it again.
func TestCredentialsConnectorRotationDrains(t *testing.T) {
	t.Parallel()

	ca := newTestCA(t)
	srv := startBlockingTalos(t, ca)

	conn := controllers.NewCredentialsConnector()
	t.Cleanup(func() { require.NoError(t, conn.Close()) })

	access := controllers.ClusterAccess{Cluster: "c1", Credentials: cluster.CredentialsSpec{Talosconfig: talosconfigOf(t, ca, "before", srv.addr)}}
	old, err := conn.Talos(t.Context(), access)
	require.NoError(t, err)

	done := srv.versionInFlight(t, old)

	access.Credentials.Talosconfig = talosconfigOf(t, ca, "after", srv.addr)
	rotated, err := conn.Talos(t.Context(), access)
	require.NoError(t, err)
	assert.NotSame(t, old, rotated, "new credentials, new client")

	close(srv.release)

	r := receive(t, done)
	require.NoError(t, r.err, "the call in flight finished on its client")
	assert.Equal(t, "v1.13.0", r.version)

	_, err = old.Version(t.Context(), "n1")
	require.ErrorIs(t, err, controllers.ErrClientReplaced, "the replaced client closed after its last call")
	assert.False(t, talos.IsUnreachable(err) || talos.IsRefused(err))

	v, err := rotated.Version(t.Context(), "n1")
	require.NoError(t, err)
	assert.Equal(t, "v1.13.0", v)
}

// A call that the connector's own Close cuts off may have reached the machine: it is unreachable (its outcome
// unknown, an install unconfirmed), never a failure the machine reported.
func TestCredentialsConnectorCloseCutsOffUnreachable(t *testing.T) {
	t.Parallel()

	ca := newTestCA(t)
	srv := startBlockingTalos(t, ca)
	conn := controllers.NewCredentialsConnector()

	api, err := conn.Talos(t.Context(), controllers.ClusterAccess{Cluster: "c1", Credentials: cluster.CredentialsSpec{Talosconfig: talosconfigOf(t, ca, "c1", srv.addr)}})
	require.NoError(t, err)

	done := srv.versionInFlight(t, api)
	require.NoError(t, conn.Close())

	err = receive(t, done).err
	require.Error(t, err)
	assert.True(t, talos.IsUnreachable(err), "%v", err)
}

// blockingTalos serves MachineService.Version over TLS on loopback; every call waits for release.
type blockingTalos struct {
	machineapi.UnimplementedMachineServiceServer

	addr    string
	entered chan struct{} // a call arrived (buffered: the first one is what tests wait for)
	release chan struct{}
}

func (s *blockingTalos) Version(ctx context.Context, _ *emptypb.Empty) (*machineapi.VersionResponse, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}

	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	return &machineapi.VersionResponse{Messages: []*machineapi.Version{{Version: &machineapi.VersionInfo{Tag: "v1.13.0"}}}}, nil
}

type versionResult struct {
	version string
	err     error
}

// versionInFlight calls Version on api in the background and returns once the server holds the call; its result
// comes on the channel.
func (s *blockingTalos) versionInFlight(t *testing.T, api talos.API) <-chan versionResult {
	t.Helper()

	done := make(chan versionResult, 1)

	go func() {
		v, err := api.Version(t.Context(), "n1")
		done <- versionResult{v, err}
	}()

	select {
	case <-s.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the call never reached the server")
	}

	return done
}

func receive(t *testing.T, done <-chan versionResult) versionResult {
	t.Helper()

	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the call in flight never returned")

		return versionResult{}
	}
}

func startBlockingTalos(t *testing.T, ca *sideroX509.CertificateAuthority) *blockingTalos {
	t.Helper()

	pair, err := sideroX509.NewKeyPair(ca, sideroX509.IPAddresses([]net.IP{net.IPv4(127, 0, 0, 1)}))
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	s := &blockingTalos{addr: lis.Addr().String(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*pair.Certificate}, MinVersion: tls.VersionTLS13})))
	machineapi.RegisterMachineServiceServer(srv, s)

	go srv.Serve(lis) //nolint:errcheck // ends with Stop

	t.Cleanup(srv.Stop)

	return s
}

func testTalosconfig(t *testing.T, endpoints ...string) string {
	t.Helper()

	return talosconfigOf(t, newTestCA(t), "test", endpoints...)
}

func newTestCA(t *testing.T) *sideroX509.CertificateAuthority {
	t.Helper()

	ca, err := sideroX509.NewSelfSignedCertificateAuthority(sideroX509.ECDSA(true))
	require.NoError(t, err)

	return ca
}

// talosconfigOf is a talosconfig trusting ca, with one context named name.
func talosconfigOf(t *testing.T, ca *sideroX509.CertificateAuthority, name string, endpoints ...string) string {
	t.Helper()

	// The CA's own pair stands in for the client's: the test servers ask for no client certificate.
	cfg := clientconfig.NewConfig(name, endpoints, ca.CrtPEM, &sideroX509.PEMEncodedCertificateAndKey{Crt: ca.CrtPEM, Key: ca.KeyPEM})

	b, err := cfg.Bytes()
	require.NoError(t, err)

	return string(b)
}
