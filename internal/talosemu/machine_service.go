package talosemu

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// bootIDPath is the only file the emulated Read serves: clients read it to tell that a node rebooted.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// metalMode is the runtime mode emulated nodes validate configurations for: bare metal, already installed (the
// emulator's generated configs name no install disk).
type metalMode struct{}

func (metalMode) String() string        { return "metal" }
func (metalMode) RequiresInstall() bool { return false }
func (metalMode) InContainer() bool     { return false }

// machineService implements the parts of Talos' MachineService the engine and talosctl-style reads use.
type machineService struct {
	machine.UnimplementedMachineServiceServer
}

func (machineService) Version(ctx context.Context, _ *emptypb.Empty) (*machine.VersionResponse, error) {
	n := nodeFrom(ctx)

	return &machine.VersionResponse{Messages: []*machine.Version{{
		Version: &machine.VersionInfo{
			Tag:       "v" + n.Version(),
			Sha:       "emulated",
			GoVersion: runtime.Version(),
			Os:        "linux",
			Arch:      "amd64",
		},
		Platform: &machine.PlatformInfo{Name: "metal", Mode: "metal"},
		Features: &machine.FeaturesInfo{Rbac: true},
	}}}, nil
}

func (machineService) Hostname(ctx context.Context, _ *emptypb.Empty) (*machine.HostnameResponse, error) {
	return &machine.HostnameResponse{Messages: []*machine.Hostname{{Hostname: nodeFrom(ctx).name}}}, nil
}

func (machineService) ApplyConfiguration(ctx context.Context, req *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	n := nodeFrom(ctx)

	cfg, err := configloader.NewFromBytes(req.GetData())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "failed to parse config: %v", err)
	}

	if cfg.Machine() == nil || cfg.Machine().Type() == configmachine.TypeUnknown {
		return nil, status.Error(codes.InvalidArgument, "the configuration has no machine type")
	}

	warnings, err := cfg.Validate(metalMode{})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "configuration validation failed: %v", err)
	}

	if cfg.Machine().Type().IsControlPlane() != n.controlPlane {
		return nil, status.Errorf(codes.InvalidArgument, "machine type %s of the configuration does not match node %q", cfg.Machine().Type(), n.name)
	}

	reply := func(mode machine.ApplyConfigurationRequest_Mode, details string) *machine.ApplyConfigurationResponse {
		return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{Mode: mode, ModeDetails: details, Warnings: warnings}}}
	}

	mode := req.GetMode()
	immediate := canApplyImmediate(n.Config(), cfg)

	switch mode {
	case machine.ApplyConfigurationRequest_TRY:
		return nil, status.Error(codes.InvalidArgument, "try mode is not supported by the emulator")
	case machine.ApplyConfigurationRequest_AUTO:
		mode = machine.ApplyConfigurationRequest_NO_REBOOT
		if immediate != nil {
			mode = machine.ApplyConfigurationRequest_REBOOT
		}
	case machine.ApplyConfigurationRequest_NO_REBOOT:
		if immediate != nil {
			return nil, status.Error(codes.InvalidArgument, immediate.Error())
		}
	case machine.ApplyConfigurationRequest_REBOOT, machine.ApplyConfigurationRequest_STAGED:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "unknown apply mode %v", mode)
	}

	if req.GetDryRun() {
		return reply(mode, "Dry run: the configuration is valid and would be applied in mode "+mode.String()), nil
	}

	switch mode { //nolint:exhaustive // the other modes were handled above
	case machine.ApplyConfigurationRequest_STAGED:
		n.mu.Lock()
		n.stagedCfg = cfg
		n.mu.Unlock()

		return reply(mode, "Staged configuration to be applied after the next reboot"), nil
	case machine.ApplyConfigurationRequest_REBOOT:
		if err = n.beginSequence(); err != nil {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}

		n.mu.Lock()
		n.stagedCfg = cfg
		n.mu.Unlock()

		afterReturn(ctx, func() { n.reboot(false) })

		return reply(mode, "Applied configuration with a reboot"), nil
	default:
		restarted, err := n.applyNow(n.fleet.ctx, cfg)
		if err != nil {
			code := codes.Internal
			if errors.Is(err, errInvalidConfig) {
				code = codes.InvalidArgument
			}

			return nil, status.Error(code, err.Error())
		}

		if slices.Contains(restarted, componentAPIServer) {
			afterReturn(ctx, n.restartAPIServer)
		}

		return reply(mode, "Applied configuration without a reboot"), nil
	}
}

func (machineService) Reboot(ctx context.Context, _ *machine.RebootRequest) (*machine.RebootResponse, error) {
	n := nodeFrom(ctx)

	if err := n.beginSequence(); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}

	afterReturn(ctx, func() { n.reboot(false) })

	return &machine.RebootResponse{Messages: []*machine.Reboot{{ActorId: n.BootID()}}}, nil
}

// Upgrade is the legacy (< 1.13) upgrade: it installs and reboots in one sequence; without preserve the node's
// ephemeral data, its etcd data included, is wiped.
func (machineService) Upgrade(ctx context.Context, req *machine.UpgradeRequest) (*machine.UpgradeResponse, error) {
	n := nodeFrom(ctx)

	if _, err := n.pull(common.ContainerdNamespace_NS_SYSTEM, req.GetImage()); err != nil {
		return nil, status.Errorf(codes.NotFound, "error validating installer image %q: %v", req.GetImage(), err)
	}

	if n.etcd != nil && !req.GetPreserve() && !req.GetForce() {
		if err := n.validateEtcdForUpgrade(ctx); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "error validating etcd for upgrade: %v", err)
		}
	}

	if err := n.beginSequence(); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}

	image, wipe := req.GetImage(), !req.GetPreserve()

	afterReturn(ctx, func() {
		version, err := n.install(image)
		if err != nil {
			n.fleet.journal.record(Entry{Node: n.name, Event: EventInstallFailed, Image: image, Error: err.Error()})
			n.endSequence()

			return
		}

		n.fleet.journal.record(Entry{Node: n.name, Event: EventInstalled, Image: image, Version: version})
		n.reboot(wipe)
	})

	return &machine.UpgradeResponse{Messages: []*machine.Upgrade{{Ack: "Upgrade request received", ActorId: n.BootID()}}}, nil
}

func (machineService) Read(req *machine.ReadRequest, srv grpc.ServerStreamingServer[common.Data]) error {
	if req.GetPath() != bootIDPath {
		return status.Errorf(codes.NotFound, "open %s: no such file or directory (the emulator serves only %s)", req.GetPath(), bootIDPath)
	}

	return srv.Send(&common.Data{Bytes: []byte(nodeFrom(srv.Context()).BootID() + "\n")})
}

func (machineService) Kubeconfig(_ *emptypb.Empty, srv grpc.ServerStreamingServer[common.Data]) error {
	n := nodeFrom(srv.Context())

	if !n.controlPlane {
		return status.Error(codes.FailedPrecondition, "kubeconfig is only available on control plane nodes")
	}

	if n.cluster.kubeconfig == nil {
		return status.Errorf(codes.FailedPrecondition, "Kubernetes is not running in emulated cluster %q", n.cluster.name)
	}

	archive, err := kubeconfigArchive(n.cluster.kubeconfig)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}

	return srv.Send(&common.Data{Bytes: archive})
}

// kubeconfigArchive packs a kubeconfig the way Talos streams it: a tar.gz holding one file.
func kubeconfigArchive(kubeconfig []byte) ([]byte, error) {
	var buf bytes.Buffer

	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)

	if err := tw.WriteHeader(&tar.Header{Name: "kubeconfig", Mode: 0o600, Size: int64(len(kubeconfig)), Typeflag: tar.TypeReg}); err != nil {
		return nil, fmt.Errorf("packing kubeconfig: %w", err)
	}

	if _, err := tw.Write(kubeconfig); err != nil {
		return nil, fmt.Errorf("packing kubeconfig: %w", err)
	}

	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("packing kubeconfig: %w", err)
	}

	if err := gz.Close(); err != nil {
		return nil, fmt.Errorf("packing kubeconfig: %w", err)
	}

	return buf.Bytes(), nil
}

func (machineService) ServiceList(ctx context.Context, _ *emptypb.Empty) (*machine.ServiceListResponse, error) {
	n := nodeFrom(ctx)

	services, err := safe.StateListAll[*v1alpha1.Service](ctx, n.st)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing services: %v", err)
	}

	var infos []*machine.ServiceInfo

	for svc := range services.All() {
		state := "Finished"
		if svc.TypedSpec().Running {
			state = "Running"
		}

		infos = append(infos, &machine.ServiceInfo{
			Id:     svc.Metadata().ID(),
			State:  state,
			Events: &machine.ServiceEvents{},
			Health: &machine.ServiceHealth{Healthy: svc.TypedSpec().Healthy, Unknown: svc.TypedSpec().Unknown},
		})
	}

	sort.Slice(infos, func(i, j int) bool { return infos[i].Id < infos[j].Id })

	return &machine.ServiceListResponse{Messages: []*machine.ServiceList{{Services: infos}}}, nil
}

// ImagePull is the legacy pre-pull (talosctl upgrade-k8s uses it): control-plane images into the CRI namespace, the
// kubelet image into the system namespace.
func (machineService) ImagePull(ctx context.Context, req *machine.ImagePullRequest) (*machine.ImagePullResponse, error) {
	if err := pullInto(nodeFrom(ctx), req.GetNamespace(), req.GetReference()); err != nil {
		return nil, err
	}

	return &machine.ImagePullResponse{Messages: []*machine.ImagePull{{}}}, nil
}

// pullNamespace checks the containerd namespace of a pull; an unset one means the system namespace, as for
// clients that pull installer images without naming one.
func pullNamespace(namespace common.ContainerdNamespace) (common.ContainerdNamespace, error) {
	switch namespace {
	case common.ContainerdNamespace_NS_UNKNOWN, common.ContainerdNamespace_NS_SYSTEM:
		return common.ContainerdNamespace_NS_SYSTEM, nil
	case common.ContainerdNamespace_NS_CRI:
		return namespace, nil
	default:
		return 0, status.Errorf(codes.InvalidArgument, "unsupported containerd namespace %s", namespace)
	}
}

// pullInto pulls image into a containerd namespace of n, failing with the gRPC error a client sees.
func pullInto(n *Node, namespace common.ContainerdNamespace, image string) error {
	namespace, err := pullNamespace(namespace)
	if err != nil {
		return err
	}

	if _, err = n.pull(namespace, image); err != nil {
		return status.Error(codes.NotFound, err.Error())
	}

	return nil
}

func (machineService) EtcdMemberList(ctx context.Context, req *machine.EtcdMemberListRequest) (*machine.EtcdMemberListResponse, error) {
	member, err := etcdOf(ctx)
	if err != nil {
		return nil, err
	}

	members, err := member.memberList(ctx, req.GetQueryLocal())
	if err != nil {
		return nil, etcdError(err)
	}

	return &machine.EtcdMemberListResponse{Messages: []*machine.EtcdMembers{{Members: members}}}, nil
}

func (machineService) EtcdStatus(ctx context.Context, _ *emptypb.Empty) (*machine.EtcdStatusResponse, error) {
	member, err := etcdOf(ctx)
	if err != nil {
		return nil, err
	}

	memberStatus, err := member.status(ctx)
	if err != nil {
		return nil, etcdError(err)
	}

	if nodeFrom(ctx).hasFault(FaultEtcdUnhealthy) {
		memberStatus.Errors = append(memberStatus.Errors, "etcd member is unhealthy: injected fault")
	}

	return &machine.EtcdStatusResponse{Messages: []*machine.EtcdStatus{{MemberStatus: memberStatus}}}, nil
}

func (machineService) EtcdForfeitLeadership(ctx context.Context, _ *machine.EtcdForfeitLeadershipRequest) (*machine.EtcdForfeitLeadershipResponse, error) {
	member, err := etcdOf(ctx)
	if err != nil {
		return nil, err
	}

	leader, err := member.forfeitLeadership(ctx)
	if err != nil {
		return nil, etcdError(err)
	}

	return &machine.EtcdForfeitLeadershipResponse{Messages: []*machine.EtcdForfeitLeadership{{Member: leader}}}, nil
}

// EtcdLeaveCluster removes the node's member from the cluster and clears its data; it rejoins as a new member on
// its next boot, as on Talos.
func (machineService) EtcdLeaveCluster(ctx context.Context, _ *machine.EtcdLeaveClusterRequest) (*machine.EtcdLeaveClusterResponse, error) {
	member, err := etcdOf(ctx)
	if err != nil {
		return nil, err
	}

	n := nodeFrom(ctx)

	if err = member.wipe(ctx); err != nil {
		return nil, etcdError(err)
	}

	n.fleet.journal.record(Entry{Node: n.name, Event: EventEtcdWiped})

	if err = n.setServices(ctx, true); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}

	return &machine.EtcdLeaveClusterResponse{Messages: []*machine.EtcdLeaveCluster{{}}}, nil
}

func (machineService) EtcdRemoveMemberByID(ctx context.Context, req *machine.EtcdRemoveMemberByIDRequest) (*machine.EtcdRemoveMemberByIDResponse, error) {
	member, err := etcdOf(ctx)
	if err != nil {
		return nil, err
	}

	if err = member.removeMember(ctx, req.GetMemberId()); err != nil {
		return nil, etcdError(err)
	}

	return &machine.EtcdRemoveMemberByIDResponse{Messages: []*machine.EtcdRemoveMemberByID{{}}}, nil
}

// etcdOf returns the etcd member of the node a call is for; workers have none, like on Talos.
func etcdOf(ctx context.Context) (etcdMember, error) {
	n := nodeFrom(ctx)
	if n.etcd == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "etcd is not running on worker node %q", n.name)
	}

	return n.etcd, nil
}

func etcdError(err error) error {
	if errors.Is(err, errEtcdNotRunning) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}

	return status.Error(codes.Unknown, err.Error())
}
