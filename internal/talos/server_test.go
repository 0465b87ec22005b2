package talos_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	cosiapi "github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	cosiserver "github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// call is one request the test server received.
type call struct {
	node, method, arg string
	preserve          bool
}

// fakeNode is what the test server answers for one node.
type fakeNode struct {
	version      string
	members      []*machineapi.EtcdMember
	memberStatus *machineapi.EtcdMemberStatus
	st           state.State
}

// fakeTalos is a minimal Talos apid: the few machinery services the adapter calls, routing on the "node"
// metadata like apid does, over TLS. It is not the emulator: it answers from fixed data and records calls.
type fakeTalos struct {
	mu       sync.Mutex
	nodes    map[string]*fakeNode
	calls    []call
	failWith map[string]error // method -> error to return
	exitCode int32

	addr string
	srv  *grpc.Server
}

func (f *fakeTalos) record(ctx context.Context, method, arg string, preserve bool) (*fakeNode, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	md, _ := metadata.FromIncomingContext(ctx)

	nodes := md.Get("node")
	if len(nodes) != 1 {
		return nil, status.Errorf(codes.InvalidArgument, "expected one node in metadata, got %v", nodes)
	}

	f.calls = append(f.calls, call{node: nodes[0], method: method, arg: arg, preserve: preserve})

	if err := f.failWith[method]; err != nil {
		return nil, err
	}

	n, ok := f.nodes[nodes[0]]
	if !ok {
		return nil, status.Errorf(codes.Unavailable, "node %q is not known", nodes[0])
	}

	return n, nil
}

func (f *fakeTalos) recorded() []call {
	f.mu.Lock()
	defer f.mu.Unlock()

	return append([]call(nil), f.calls...)
}

func (f *fakeTalos) fail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	f.failWith[method] = err
}

type machineService struct {
	machineapi.UnimplementedMachineServiceServer
	f *fakeTalos
}

func (s machineService) Version(ctx context.Context, _ *emptypb.Empty) (*machineapi.VersionResponse, error) {
	n, err := s.f.record(ctx, "Version", "", false)
	if err != nil {
		return nil, err
	}

	return &machineapi.VersionResponse{Messages: []*machineapi.Version{{Version: &machineapi.VersionInfo{Tag: n.version}}}}, nil
}

func (s machineService) Upgrade(ctx context.Context, req *machineapi.UpgradeRequest) (*machineapi.UpgradeResponse, error) {
	if _, err := s.f.record(ctx, "MachineService.Upgrade", req.GetImage(), req.GetPreserve()); err != nil {
		return nil, err
	}

	return &machineapi.UpgradeResponse{Messages: []*machineapi.Upgrade{{Ack: "Upgrade request received", ActorId: "1"}}}, nil
}

func (s machineService) Reboot(ctx context.Context, _ *machineapi.RebootRequest) (*machineapi.RebootResponse, error) {
	if _, err := s.f.record(ctx, "Reboot", "", false); err != nil {
		return nil, err
	}

	return &machineapi.RebootResponse{Messages: []*machineapi.Reboot{{ActorId: "2"}}}, nil
}

func (s machineService) Read(req *machineapi.ReadRequest, srv grpc.ServerStreamingServer[common.Data]) error {
	if _, err := s.f.record(srv.Context(), "Read", req.GetPath(), false); err != nil {
		return err
	}

	return srv.Send(&common.Data{Bytes: []byte("read-boot-id\n")})
}

func (s machineService) EtcdMemberList(ctx context.Context, _ *machineapi.EtcdMemberListRequest) (*machineapi.EtcdMemberListResponse, error) {
	n, err := s.f.record(ctx, "EtcdMemberList", "", false)
	if err != nil {
		return nil, err
	}

	return &machineapi.EtcdMemberListResponse{Messages: []*machineapi.EtcdMembers{{Members: n.members}}}, nil
}

func (s machineService) EtcdStatus(ctx context.Context, _ *emptypb.Empty) (*machineapi.EtcdStatusResponse, error) {
	n, err := s.f.record(ctx, "EtcdStatus", "", false)
	if err != nil {
		return nil, err
	}

	return &machineapi.EtcdStatusResponse{Messages: []*machineapi.EtcdStatus{{MemberStatus: n.memberStatus}}}, nil
}

func (s machineService) EtcdForfeitLeadership(ctx context.Context, _ *machineapi.EtcdForfeitLeadershipRequest) (*machineapi.EtcdForfeitLeadershipResponse, error) {
	if _, err := s.f.record(ctx, "EtcdForfeitLeadership", "", false); err != nil {
		return nil, err
	}

	return &machineapi.EtcdForfeitLeadershipResponse{Messages: []*machineapi.EtcdForfeitLeadership{{}}}, nil
}

type imageService struct {
	machineapi.UnimplementedImageServiceServer
	f *fakeTalos
}

func (s imageService) Pull(req *machineapi.ImageServicePullRequest, srv grpc.ServerStreamingServer[machineapi.ImageServicePullResponse]) error {
	if req.GetContainerd().GetNamespace() != common.ContainerdNamespace_NS_SYSTEM {
		return status.Error(codes.InvalidArgument, "installer images belong in the system namespace")
	}

	if _, err := s.f.record(srv.Context(), "ImageService.Pull", req.GetImageRef(), false); err != nil {
		return err
	}

	if err := srv.Send(&machineapi.ImageServicePullResponse{Response: &machineapi.ImageServicePullResponse_PullProgress{
		PullProgress: &machineapi.ImageServicePullProgress{LayerId: "sha256:1"},
	}}); err != nil {
		return err
	}

	return srv.Send(&machineapi.ImageServicePullResponse{Response: &machineapi.ImageServicePullResponse_Name{Name: req.GetImageRef() + "@sha256:abc"}})
}

type lifecycleService struct {
	machineapi.UnimplementedLifecycleServiceServer
	f *fakeTalos
}

func (s lifecycleService) Upgrade(req *machineapi.LifecycleServiceUpgradeRequest, srv grpc.ServerStreamingServer[machineapi.LifecycleServiceUpgradeResponse]) error {
	if _, err := s.f.record(srv.Context(), "LifecycleService.Upgrade", req.GetSource().GetImageName(), false); err != nil {
		return err
	}

	for _, m := range []string{"pulling", "installing"} {
		if err := srv.Send(&machineapi.LifecycleServiceUpgradeResponse{Progress: &machineapi.LifecycleServiceInstallProgress{
			Response: &machineapi.LifecycleServiceInstallProgress_Message{Message: m},
		}}); err != nil {
			return err
		}
	}

	s.f.mu.Lock()
	code := s.f.exitCode
	s.f.mu.Unlock()

	return srv.Send(&machineapi.LifecycleServiceUpgradeResponse{Progress: &machineapi.LifecycleServiceInstallProgress{
		Response: &machineapi.LifecycleServiceInstallProgress_ExitCode{ExitCode: code},
	}})
}

// cosiRouter serves each node's COSI state, chosen by the "node" metadata.
type cosiRouter struct {
	cosiapi.UnimplementedStateServer
	f *fakeTalos
}

func (s cosiRouter) Get(ctx context.Context, req *cosiapi.GetRequest) (*cosiapi.GetResponse, error) {
	n, err := s.f.record(ctx, "COSI.Get", req.GetType(), false)
	if err != nil {
		return nil, err
	}

	return cosiserver.NewState(n.st).Get(ctx, req)
}

func newNode(t *testing.T, version, stage string, ready bool, bootID, nodename string) *fakeNode {
	t.Helper()

	st := state.WrapCore(namespaced.NewState(inmem.Build))
	ctx := t.Context()

	ms := runtime.NewMachineStatus()
	ms.TypedSpec().Stage = map[string]runtime.MachineStage{"running": runtime.MachineStageRunning, "rebooting": runtime.MachineStageRebooting}[stage]
	ms.TypedSpec().Status.Ready = ready

	if !ready {
		ms.TypedSpec().Status.UnmetConditions = []runtime.UnmetCondition{{Name: "nodeReady", Reason: "node not ready"}}
	}

	must(t, st.Create(ctx, ms))

	if bootID != "" {
		b := runtime.NewBootID()
		b.TypedSpec().BootID = bootID
		must(t, st.Create(ctx, b))
	}

	if nodename != "" {
		n := k8s.NewNodename(k8s.NamespaceName, k8s.NodenameID)
		n.TypedSpec().Nodename = nodename
		must(t, st.Create(ctx, n))
	}

	return &fakeNode{version: version, st: st}
}

func must(t testing.TB, err error) {
	t.Helper()

	if err != nil {
		t.Fatal(err)
	}
}

// pki is a CA with a server certificate for 127.0.0.1 and a client certificate, as PEM.
type pki struct {
	caPEM, serverCert, serverKey, clientCert, clientKey []byte
}

func newPKI(t *testing.T) pki {
	t.Helper()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)

	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(t, err)

	ca, err := x509.ParseCertificate(caDER)
	must(t, err)

	leaf := func(serial int64, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(t, err)

		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprint("leaf-", serial), Organization: []string{"os:admin"}},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		must(t, err)

		keyDER, err := x509.MarshalECPrivateKey(key)
		must(t, err)

		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	}

	p := pki{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	p.serverCert, p.serverKey = leaf(2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.clientCert, p.clientKey = leaf(3, x509.ExtKeyUsageClientAuth, nil)

	return p
}

// startFakeTalos serves the fake on a free loopback port with mutual TLS and stops it when the test ends.
func startFakeTalos(t *testing.T, p pki, nodes map[string]*fakeNode) *fakeTalos {
	t.Helper()

	cert, err := tls.X509KeyPair(p.serverCert, p.serverKey)
	must(t, err)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)

	f := &fakeTalos{nodes: nodes, failWith: map[string]error{}}
	f.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	})))

	machineapi.RegisterMachineServiceServer(f.srv, machineService{f: f})
	machineapi.RegisterImageServiceServer(f.srv, imageService{f: f})
	machineapi.RegisterLifecycleServiceServer(f.srv, lifecycleService{f: f})
	cosiapi.RegisterStateServer(f.srv, cosiRouter{f: f})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)

	f.addr = lis.Addr().String()

	go f.srv.Serve(lis) //nolint:errcheck

	t.Cleanup(f.srv.Stop)

	return f
}
