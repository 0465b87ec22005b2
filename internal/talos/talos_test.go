package talos_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	sideroX509 "github.com/siderolabs/crypto/x509"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/internal/talos"
)

func talosconfig(t *testing.T, p pki, endpoint string) []byte {
	t.Helper()

	cfg := clientconfig.NewConfig("test", []string{endpoint}, p.caPEM, &sideroX509.PEMEncodedCertificateAndKey{Crt: p.clientCert, Key: p.clientKey})

	b, err := cfg.Bytes()
	must(t, err)

	return b
}

func newFleet(t *testing.T) (*fakeTalos, talos.API) {
	t.Helper()

	p := newPKI(t)

	cp := newNode(t, "v1.13.0", "running", true, "boot-1", "c1-cp-1")
	cp.members = []*machineapi.EtcdMember{{Id: 0xa1, Hostname: "c1-cp-1"}, {Id: 0xb2, Hostname: "c1-cp-2", IsLearner: true}}
	cp.memberStatus = &machineapi.EtcdMemberStatus{MemberId: 0xa1, Leader: 0xa1, Errors: []string{"NOSPACE"}}

	f := startFakeTalos(t, p, map[string]*fakeNode{
		"c1-cp-1": cp,
		"c1-w-1":  newNode(t, "v1.12.0", "rebooting", false, "", ""),
	})

	c, err := talos.New(t.Context(), talos.WithTalosconfig(talosconfig(t, p, f.addr)))
	must(t, err)

	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return f, c
}

func TestMachineStatus(t *testing.T) {
	f, c := newFleet(t)

	got, err := c.MachineStatus(t.Context(), "c1-cp-1")
	must(t, err)

	if got.Version != "v1.13.0" || got.Stage != "running" || !got.Ready || got.BootID != "boot-1" || got.NodeName != "c1-cp-1" || len(got.UnmetConditions) != 0 {
		t.Errorf("c1-cp-1 status = %+v", got)
	}

	// A machine without the BootID resource gets its boot ID from the kernel file; one without a node name has
	// none.
	got, err = c.MachineStatus(t.Context(), "c1-w-1")
	must(t, err)

	if got.Version != "v1.12.0" || got.Stage != "rebooting" || got.Ready || got.BootID != "read-boot-id" || got.NodeName != "" ||
		strings.Join(got.UnmetConditions, ",") != "nodeReady: node not ready" {
		t.Errorf("c1-w-1 status = %+v", got)
	}

	for _, call := range f.recorded() {
		if call.method == "Read" && (call.node != "c1-w-1" || call.arg != "/proc/sys/kernel/random/boot_id") {
			t.Errorf("unexpected read %+v", call)
		}
	}
}

func TestInstallerCalls(t *testing.T) {
	f, c := newFleet(t)
	ctx := t.Context()

	const image = "ghcr.io/siderolabs/installer:v1.14.1"

	pinned, err := c.PullImage(ctx, "c1-cp-1", image)
	must(t, err)

	if pinned != image+"@sha256:abc" {
		t.Errorf("pinned = %q", pinned)
	}

	must(t, c.Install(ctx, "c1-cp-1", pinned))
	must(t, c.LegacyUpgrade(ctx, "c1-w-1", image))
	must(t, c.Reboot(ctx, "c1-cp-1"))

	want := []call{
		{node: "c1-cp-1", method: "ImageService.Pull", arg: image},
		{node: "c1-cp-1", method: "LifecycleService.Upgrade", arg: image + "@sha256:abc"},
		{node: "c1-w-1", method: "MachineService.Upgrade", arg: image, preserve: true},
		{node: "c1-cp-1", method: "Reboot"},
	}

	if got := f.recorded(); !slices.Equal(got, want) {
		t.Errorf("calls = %+v\nwant %+v", got, want)
	}
}

func TestInstallerExitCode(t *testing.T) {
	f, c := newFleet(t)
	f.exitCode = 3

	err := c.Install(t.Context(), "c1-cp-1", "installer:v1")
	if err == nil || !strings.Contains(err.Error(), `exited with code 3 (last output "installing")`) || talos.IsRefused(err) || talos.IsUnreachable(err) {
		t.Fatalf("Install error = %v", err)
	}

	var te *talos.Error
	if !errors.As(err, &te) || te.Node != "c1-cp-1" || te.Kind != talos.KindFailed {
		t.Errorf("error = %#v", te)
	}
}

func TestEtcd(t *testing.T) {
	f, c := newFleet(t)
	ctx := t.Context()

	members, err := c.EtcdMembers(ctx, "c1-cp-1")
	must(t, err)

	if len(members) != 2 || members[0] != (talos.EtcdMember{ID: 0xa1, Hostname: "c1-cp-1"}) || !members[1].Learner {
		t.Errorf("members = %+v", members)
	}

	st, err := c.EtcdMemberStatus(ctx, "c1-cp-1")
	must(t, err)

	if st.MemberID != 0xa1 || st.Leader != 0xa1 || strings.Join(st.Errors, ",") != "NOSPACE" {
		t.Errorf("status = %+v", st)
	}

	if talos.MemberID(st.MemberID) != "00000000000000a1" {
		t.Errorf("MemberID(%d) = %s", st.MemberID, talos.MemberID(st.MemberID))
	}

	must(t, c.EtcdForfeitLeadership(ctx, "c1-cp-1"))

	if calls := f.recorded(); calls[len(calls)-1] != (call{node: "c1-cp-1", method: "EtcdForfeitLeadership"}) {
		t.Errorf("last call = %+v", calls[len(calls)-1])
	}
}

func TestErrorKinds(t *testing.T) {
	f, c := newFleet(t)
	ctx := t.Context()

	f.fail("LifecycleService.Upgrade", status.Error(codes.FailedPrecondition, "another installation is already in progress"))

	err := c.Install(ctx, "c1-cp-1", "installer:v1")
	if !talos.IsRefused(err) || talos.IsUnreachable(err) || !strings.Contains(err.Error(), `node "c1-cp-1": installing Talos: refused`) {
		t.Errorf("refused install = %v", err)
	}

	f.fail("MachineService.Upgrade", status.Error(codes.Unimplemented, "no"))

	if err := c.LegacyUpgrade(ctx, "c1-w-1", "installer:v1"); !talos.IsRefused(err) {
		t.Errorf("unimplemented legacy upgrade = %v", err)
	}

	f.fail("Reboot", status.Error(codes.Internal, "boom"))

	if err := c.Reboot(ctx, "c1-w-1"); err == nil || talos.IsRefused(err) || talos.IsUnreachable(err) {
		t.Errorf("internal reboot error = %v", err)
	}

	// apid answers Unavailable for a node it cannot reach.
	if _, err := c.MachineStatus(ctx, "c1-w-9"); !talos.IsUnreachable(err) {
		t.Errorf("unknown node = %v", err)
	}

	// A stopped endpoint (an apid that went away) is unreachable too.
	f.srv.Stop()

	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	if err := c.Reboot(tctx, "c1-cp-1"); !talos.IsUnreachable(err) {
		t.Errorf("stopped server = %v", err)
	}
}

func TestNew(t *testing.T) {
	p := newPKI(t)
	ctx := t.Context()

	for name, opts := range map[string][]talos.Option{
		"no credentials":       {talos.WithEndpoint("127.0.0.1:1")},
		"both credentials":     {talos.WithTalosconfig(talosconfig(t, p, "127.0.0.1:1")), talos.WithTLSConfig(&tls.Config{})},
		"garbage talosconfig":  {talos.WithTalosconfig([]byte("{not yaml"))},
		"talosconfig no ctx":   {talos.WithTalosconfig([]byte("context: missing\ncontexts: {}\n"))},
		"tls without endpoint": {talos.WithTLSConfig(&tls.Config{})},
	} {
		if c, err := talos.New(ctx, opts...); err == nil {
			c.Close() //nolint:errcheck
			t.Errorf("%s: New succeeded", name)
		}
	}

	// A TLS config and an explicit endpoint work as well as a talosconfig.
	f := startFakeTalos(t, p, map[string]*fakeNode{"n1": newNode(t, "v1.14.1", "running", true, "b", "n1")})

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)

	cert, err := tls.X509KeyPair(p.clientCert, p.clientKey)
	must(t, err)

	c, err := talos.New(ctx, talos.WithEndpoint(f.addr), talos.WithTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}))
	must(t, err)

	defer c.Close() //nolint:errcheck

	st, err := c.MachineStatus(ctx, "n1")
	must(t, err)

	if st.Version != "v1.14.1" {
		t.Errorf("version = %q", st.Version)
	}
}
