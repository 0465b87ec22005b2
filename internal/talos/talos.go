// Package talos is the engine's adapter to the Talos machine API of one cluster. It speaks to a single apid
// endpoint with the stock machinery client and addresses each machine with a per-node context (apid routes on
// the "node" metadata), so the engine needs one connection per cluster, not per machine.
//
// Controllers depend on the small interfaces (Observer, Installer, Etcd), never on the machinery client, and
// every error says which node and operation failed and whether the node was unreachable or refused.
package talos

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"golang.org/x/sync/errgroup"
)

// MachineStatus is what one observation of a machine returns.
type MachineStatus struct {
	// Version is the running Talos version as its tag, e.g. "v1.14.1".
	Version string
	// Stage is Talos' machine stage, e.g. "running", "rebooting".
	Stage string
	// Ready is Talos' own readiness (services healthy, node ready).
	Ready bool
	// UnmetConditions says why a machine is not ready.
	UnmetConditions []string
	// BootID changes on every boot; a new one proves a reboot happened.
	BootID string
	// NodeName is the machine's Kubernetes node name; empty when it has none (yet).
	NodeName string
}

// MemberID renders an etcd member ID the way Talos prints it (16 hex digits), so IDs from EtcdMembers and
// EtcdMemberStatus compare as strings in resources and messages.
func MemberID(id uint64) string { return fmt.Sprintf("%016x", id) }

// EtcdMember is one member of the cluster's etcd, as a control plane lists it.
type EtcdMember struct {
	// ID is the member ID (MemberID renders it).
	ID uint64
	// Hostname is the member's name; empty for a member added but never started.
	Hostname string
	// Learner is true for a non-voting member.
	Learner bool
}

// EtcdMemberStatus is a control plane's own etcd member as it reports itself.
type EtcdMemberStatus struct {
	// MemberID is the reporting member's ID.
	MemberID uint64
	// Leader is the member ID of the leader this member knows of (0 when none).
	Leader uint64
	// Learner is true for a non-voting member.
	Learner bool
	// Errors are the member's alarms and errors; a healthy member has none.
	Errors []string
}

// Observer reads a machine's state.
type Observer interface {
	// Version returns the running Talos version as its tag, e.g. "v1.14.1" (one round trip).
	Version(ctx context.Context, node string) (string, error)
	// MachineStatus returns everything an observation needs (four round trips).
	MachineStatus(ctx context.Context, node string) (MachineStatus, error)
}

// Installer replaces a machine's Talos and reboots it. Each call is one side effect the controller records
// before making it.
type Installer interface {
	// PullImage pulls an installer image into the system containerd (ImageService.Pull, Talos >= 1.13) and
	// returns the pinned reference.
	PullImage(ctx context.Context, node, image string) (string, error)
	// Install writes the image's Talos to disk without rebooting (LifecycleService.Upgrade, Talos >= 1.13),
	// following the installer to its exit.
	Install(ctx context.Context, node, image string) error
	// LegacyUpgrade installs and reboots in one call on Talos < 1.13 (MachineService.Upgrade), always
	// preserving ephemeral data.
	LegacyUpgrade(ctx context.Context, node, image string) error
	// Reboot reboots the machine.
	Reboot(ctx context.Context, node string) error
}

// Etcd reads and steers the etcd member of a control plane.
type Etcd interface {
	EtcdMembers(ctx context.Context, node string) ([]EtcdMember, error)
	EtcdMemberStatus(ctx context.Context, node string) (EtcdMemberStatus, error)
	EtcdForfeitLeadership(ctx context.Context, node string) error
}

// Configurer reads and changes a machine's config.
type Configurer interface {
	// MachineConfig returns the config the machine runs (its config.MachineConfig resource), canonically encoded.
	MachineConfig(ctx context.Context, node string) ([]byte, error)
	// ApplyConfiguration sends cfg in mode (machineapi.ApplyConfigurationRequest_NO_REBOOT, ...), only checking it
	// when dryRun is set, and returns Talos' account of what it did or would do. A change the mode cannot make (a
	// NO_REBOOT of a change that needs a reboot) is refused (KindRefused).
	ApplyConfiguration(ctx context.Context, node string, cfg []byte, mode machineapi.ApplyConfigurationRequest_Mode, dryRun bool) (string, error)
}

// API is everything the engine does with one cluster's Talos machines.
type API interface {
	Observer
	Installer
	Etcd
	Configurer
	Kubernetes
	io.Closer
}

// Client implements API over the machinery client.
type Client struct {
	c *client.Client
}

var _ API = (*Client)(nil)

type options struct {
	talosconfig []byte
	tlsConfig   *tls.Config
	endpoint    string
}

// Option configures New.
type Option func(*options)

// WithTalosconfig authenticates with a talosconfig (its current context's CA, certificate and key); its
// endpoints are used unless WithEndpoint is given.
func WithTalosconfig(talosconfig []byte) Option {
	return func(o *options) { o.talosconfig = talosconfig }
}

// WithTLSConfig authenticates with a ready TLS configuration instead of a talosconfig.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *options) { o.tlsConfig = cfg }
}

// WithEndpoint sets the one apid endpoint ("host:port"; port 50000 when omitted) every call goes through.
func WithEndpoint(endpoint string) Option {
	return func(o *options) { o.endpoint = endpoint }
}

// New returns a Client for one cluster. It needs either a talosconfig or a TLS configuration, and an endpoint
// (from WithEndpoint or the talosconfig). No connection is made until the first call.
func New(ctx context.Context, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}

	var clientOpts []client.OptionFunc

	switch {
	case len(o.talosconfig) > 0 && o.tlsConfig != nil:
		return nil, errors.New("creating Talos client: give a talosconfig or a TLS config, not both")
	case len(o.talosconfig) > 0:
		cfg, err := clientconfig.FromBytes(o.talosconfig)
		if err != nil {
			return nil, fmt.Errorf("creating Talos client: reading talosconfig: %w", err)
		}

		if _, ok := cfg.Contexts[cfg.Context]; !ok {
			return nil, fmt.Errorf("creating Talos client: talosconfig has no context %q", cfg.Context)
		}

		clientOpts = append(clientOpts, client.WithConfig(cfg))
	case o.tlsConfig != nil:
		if o.endpoint == "" {
			return nil, errors.New("creating Talos client: a TLS config needs an endpoint")
		}

		clientOpts = append(clientOpts, client.WithTLSConfig(o.tlsConfig))
	default:
		return nil, errors.New("creating Talos client: no credentials: give a talosconfig or a TLS config")
	}

	if o.endpoint != "" {
		clientOpts = append(clientOpts, client.WithEndpoints(o.endpoint))
	}

	c, err := client.New(ctx, clientOpts...)
	if err != nil {
		return nil, fmt.Errorf("creating Talos client: %w", err)
	}

	return &Client{c: c}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.c.Close() }

// systemContainerd is where installer images live (talosctl uses the same).
func systemContainerd() *common.ContainerdInstance {
	return &common.ContainerdInstance{Driver: common.ContainerDriver_CRI, Namespace: common.ContainerdNamespace_NS_SYSTEM}
}

// Version implements Observer.
func (c *Client) Version(ctx context.Context, node string) (string, error) {
	v, err := c.version(client.WithNode(ctx, node))

	return v, wrap(node, "reading version", err)
}

func (c *Client) version(nodeCtx context.Context) (string, error) {
	resp, err := c.c.Version(nodeCtx)
	if err != nil {
		return "", err
	}

	if len(resp.GetMessages()) == 0 {
		return "", errors.New("empty response")
	}

	return resp.GetMessages()[0].GetVersion().GetTag(), nil
}

// MachineStatus observes the machine: its version (Version API), stage and readiness (MachineStatus), boot
// ID (BootID, or the kernel's boot_id file on Talos that lacks the resource) and Kubernetes node name. The four
// reads go out at once, so an observation costs about one round trip of latency.
func (c *Client) MachineStatus(ctx context.Context, node string) (MachineStatus, error) {
	var out MachineStatus

	eg, ctx := errgroup.WithContext(client.WithNode(ctx, node))

	eg.Go(func() (err error) {
		if out.Version, err = c.version(ctx); err != nil {
			return fmt.Errorf("version: %w", err)
		}

		return nil
	})

	eg.Go(func() error {
		ms, err := safe.StateGetByID[*runtime.MachineStatus](ctx, c.c.COSI, runtime.MachineStatusID)
		if err != nil {
			return fmt.Errorf("machine status: %w", err)
		}

		out.Stage = strings.ToLower(ms.TypedSpec().Stage.String())
		out.Ready = ms.TypedSpec().Status.Ready

		for _, cond := range ms.TypedSpec().Status.UnmetConditions {
			out.UnmetConditions = append(out.UnmetConditions, cond.Name+": "+cond.Reason)
		}

		return nil
	})

	eg.Go(func() (err error) {
		if out.BootID, err = c.bootID(ctx); err != nil {
			return fmt.Errorf("boot ID: %w", err)
		}

		return nil
	})

	eg.Go(func() error {
		nodename, err := safe.StateGetByID[*k8s.Nodename](ctx, c.c.COSI, k8s.NodenameID)

		switch {
		case err == nil:
			out.NodeName = nodename.TypedSpec().Nodename
		case !state.IsNotFoundError(err):
			return fmt.Errorf("node name: %w", err)
		}

		return nil
	})

	if err := eg.Wait(); err != nil {
		return MachineStatus{}, wrap(node, "observing machine", err)
	}

	return out, nil
}

func (c *Client) bootID(ctx context.Context) (string, error) {
	res, err := safe.StateGetByID[*runtime.BootID](ctx, c.c.COSI, runtime.BootIDID)
	if err == nil {
		return res.TypedSpec().BootID, nil
	}

	if !state.IsNotFoundError(err) {
		return "", err
	}

	r, err := c.c.Read(ctx, "/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}

	defer r.Close() //nolint:errcheck

	b, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}

	return strings.TrimSpace(string(b)), nil
}

// PullImage implements Installer.
func (c *Client) PullImage(ctx context.Context, node, image string) (string, error) {
	return c.pull(ctx, node, image, systemContainerd(), "pulling installer image")
}

// pull pulls image into one containerd instance of node and returns the pinned reference.
func (c *Client) pull(ctx context.Context, node, image string, instance *common.ContainerdInstance, op string) (string, error) {
	stream, err := c.c.ImageClient.Pull(client.WithNode(ctx, node), &machineapi.ImageServicePullRequest{
		Containerd: instance,
		ImageRef:   image,
	})
	if err != nil {
		return "", wrap(node, op, err)
	}

	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return "", wrap(node, op, fmt.Errorf("pull of %q ended without an image name", image))
		}

		if err != nil {
			return "", wrap(node, op, fmt.Errorf("pulling %q: %w", image, err))
		}

		if name := msg.GetName(); name != "" {
			return name, nil
		}
	}
}

// Install implements Installer.
func (c *Client) Install(ctx context.Context, node, image string) error {
	const op = "installing Talos"

	stream, err := c.c.LifecycleClient.Upgrade(client.WithNode(ctx, node), &machineapi.LifecycleServiceUpgradeRequest{
		Containerd: systemContainerd(),
		Source:     &machineapi.InstallArtifactsSource{ImageName: image},
	})
	if err != nil {
		return wrap(node, op, err)
	}

	var last string

	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return wrap(node, op, fmt.Errorf("installer %q ended without an exit code (last output %q)", image, last))
		}

		if err != nil {
			return wrap(node, op, fmt.Errorf("installer %q: %w", image, err))
		}

		switch r := msg.GetProgress().GetResponse().(type) {
		case *machineapi.LifecycleServiceInstallProgress_Message:
			last = r.Message
		case *machineapi.LifecycleServiceInstallProgress_ExitCode:
			if r.ExitCode != 0 {
				return wrap(node, op, fmt.Errorf("installer %q exited with code %d (last output %q)", image, r.ExitCode, last))
			}

			return nil
		}
	}
}

// LegacyUpgrade implements Installer.
func (c *Client) LegacyUpgrade(ctx context.Context, node, image string) error {
	_, err := c.c.UpgradeWithOptions(client.WithNode(ctx, node),
		client.WithUpgradeImage(image),
		client.WithUpgradePreserve(true),
	)

	return wrap(node, "upgrading Talos (legacy, preserve=true)", err)
}

// Reboot implements Installer.
func (c *Client) Reboot(ctx context.Context, node string) error {
	return wrap(node, "rebooting", c.c.Reboot(client.WithNode(ctx, node)))
}

// MachineConfig implements Configurer.
func (c *Client) MachineConfig(ctx context.Context, node string) ([]byte, error) {
	res, err := safe.StateGetByID[*config.MachineConfig](client.WithNode(ctx, node), c.c.COSI, config.ActiveID)
	if err != nil {
		return nil, wrap(node, "reading machine config", err)
	}

	out, err := res.Provider().EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		return nil, fmt.Errorf("node %q: encoding its machine config: %w", node, err)
	}

	return out, nil
}

// ApplyConfiguration implements Configurer.
func (c *Client) ApplyConfiguration(ctx context.Context, node string, cfg []byte, mode machineapi.ApplyConfigurationRequest_Mode, dryRun bool) (string, error) {
	resp, err := c.c.ApplyConfiguration(client.WithNode(ctx, node), &machineapi.ApplyConfigurationRequest{Data: cfg, Mode: mode, DryRun: dryRun})
	if err != nil {
		return "", wrap(node, "applying config ("+mode.String()+")", err)
	}

	var details []string
	for _, m := range resp.GetMessages() {
		details = append(details, m.GetModeDetails())
	}

	return strings.Join(details, "; "), nil
}

// EtcdMembers implements Etcd: the member list as the control plane node sees it.
func (c *Client) EtcdMembers(ctx context.Context, node string) ([]EtcdMember, error) {
	resp, err := c.c.EtcdMemberList(client.WithNode(ctx, node), &machineapi.EtcdMemberListRequest{})
	if err != nil {
		return nil, wrap(node, "listing etcd members", err)
	}

	var members []EtcdMember

	for _, msg := range resp.GetMessages() {
		for _, m := range msg.GetMembers() {
			members = append(members, EtcdMember{ID: m.GetId(), Hostname: m.GetHostname(), Learner: m.GetIsLearner()})
		}
	}

	return members, nil
}

// EtcdMemberStatus implements Etcd.
func (c *Client) EtcdMemberStatus(ctx context.Context, node string) (EtcdMemberStatus, error) {
	const op = "reading etcd status"

	resp, err := c.c.EtcdStatus(client.WithNode(ctx, node))
	if err != nil {
		return EtcdMemberStatus{}, wrap(node, op, err)
	}

	if len(resp.GetMessages()) == 0 {
		return EtcdMemberStatus{}, wrap(node, op, errors.New("empty response"))
	}

	s := resp.GetMessages()[0].GetMemberStatus()

	return EtcdMemberStatus{MemberID: s.GetMemberId(), Leader: s.GetLeader(), Learner: s.GetIsLearner(), Errors: s.GetErrors()}, nil
}

// EtcdForfeitLeadership implements Etcd: the node's member hands leadership to another one (a no-op when it
// does not lead).
func (c *Client) EtcdForfeitLeadership(ctx context.Context, node string) error {
	_, err := c.c.EtcdForfeitLeadership(client.WithNode(ctx, node), &machineapi.EtcdForfeitLeadershipRequest{})

	return wrap(node, "forfeiting etcd leadership", err)
}
