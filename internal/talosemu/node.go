package talosemu

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"go.uber.org/zap"
)

// errNodeDown is returned for calls to a node whose API is unreachable (rebooting, or the api-down fault).
var errNodeDown = errors.New("node is unreachable")

// Node is one emulated Talos machine. Its exported methods are the test-facing view of its state; everything a client
// does goes through the gRPC API.
type Node struct {
	name         string
	nodeID       string // the discovery identity
	cluster      *cluster
	controlPlane bool
	fleet        *Fleet
	st           state.State
	etcd         etcdMember // nil on workers

	mu        sync.Mutex
	running   string // running Talos version
	staged    string // version installed for the next boot ("" if none)
	bootID    string
	cfg       config.Provider
	stagedCfg config.Provider // applied in STAGED mode, active after the next reboot
	rendered  rendered
	// staticPodVersions are the versions of the control-plane components' config resources, which the static pods
	// carry in their talos.dev/config-version annotation.
	staticPodVersions map[string]string
	faults            map[Fault]bool
	pullFaults        map[string]bool // images whose pulls fail (pull-fail faults naming an image)
	faultsChanged     chan struct{}
	booted            bool // up and not rebooting
	busy              bool // an install or reboot sequence is in progress
	reach             context.Context
	unreach           context.CancelFunc                      // ends reach when the API becomes unreachable
	images            map[common.ContainerdNamespace][]string // pulled images by containerd namespace
	kubelet           Kubelet
}

// Name is the node's Talos node name, machine ID and Kubernetes node name.
func (n *Node) Name() string { return n.name }

// Cluster is the name of the emulated cluster the node belongs to.
func (n *Node) Cluster() string { return n.cluster.name }

// ControlPlane reports whether the node is a control-plane node (runs an etcd member and the static pods).
func (n *Node) ControlPlane() bool { return n.controlPlane }

// Version is the Talos version the node runs now (without a "v" prefix).
func (n *Node) Version() string {
	n.mu.Lock()
	defer n.mu.Unlock()

	return n.running
}

// StagedVersion is the version installed for the next boot, or "" when nothing is staged.
func (n *Node) StagedVersion() string {
	n.mu.Lock()
	defer n.mu.Unlock()

	return n.staged
}

// BootID is the node's current boot ID; it changes on every reboot.
func (n *Node) BootID() string {
	n.mu.Lock()
	defer n.mu.Unlock()

	return n.bootID
}

// Up reports whether the node is booted and its API reachable.
func (n *Node) Up() bool {
	n.mu.Lock()
	defer n.mu.Unlock()

	return n.reach != nil && n.reach.Err() == nil
}

// State is the node's COSI state (the resources its COSI API serves), for tests that watch transitions the API
// cannot show while the node is down.
func (n *Node) State() state.State { return n.st }

// EtcdMemberID is the ID of the node's etcd member (0 on workers and while it is not a member).
func (n *Node) EtcdMemberID() uint64 {
	if n.etcd == nil {
		return 0
	}

	return n.etcd.id()
}

// Config is the node's active machine configuration.
func (n *Node) Config() config.Provider {
	n.mu.Lock()
	defer n.mu.Unlock()

	return n.cfg
}

func (n *Node) hasFault(f Fault) bool {
	n.mu.Lock()
	defer n.mu.Unlock()

	return n.faults[f]
}

// markFaultLocked sets or clears a fault in the node's fault sets and reports whether that changed anything. The
// caller holds n.mu.
func (n *Node) markFaultLocked(nf NodeFault, on bool) bool {
	set := n.faults[nf.Fault]
	if nf.Image != "" {
		set = n.pullFaults[nf.Image]
	}

	if set == on {
		return false
	}

	switch {
	case nf.Image != "" && on:
		n.pullFaults[nf.Image] = true
	case nf.Image != "":
		delete(n.pullFaults, nf.Image)
	case on:
		n.faults[nf.Fault] = true
	default:
		delete(n.faults, nf.Fault)
	}

	close(n.faultsChanged)
	n.faultsChanged = make(chan struct{})

	return true
}

// setFault sets or clears a fault and applies what it changes at once (reachability, health).
func (n *Node) setFault(ctx context.Context, nf NodeFault, on bool) error {
	n.mu.Lock()
	if !n.markFaultLocked(nf, on) {
		n.mu.Unlock()

		return nil
	}

	if nf.Fault == FaultAPIDown && n.booted {
		n.setReachableLocked(!on)
	}

	booted := n.booted
	n.mu.Unlock()

	if nf.Fault == FaultEtcdUnhealthy && booted {
		return n.publishHealth(ctx)
	}

	return nil
}

// setReachableLocked opens or closes the node's API; closing it cancels every call in flight. The caller holds n.mu.
func (n *Node) setReachableLocked(reachable bool) {
	if !reachable {
		if n.unreach != nil {
			n.unreach()
		}

		return
	}

	if n.reach != nil && n.reach.Err() == nil {
		return
	}

	n.reach, n.unreach = context.WithCancel(context.Background())
}

// reachability returns the context that lives as long as the node's API stays reachable, or errNodeDown.
func (n *Node) reachability() (context.Context, error) {
	n.mu.Lock()
	defer n.mu.Unlock()

	if n.reach == nil || n.reach.Err() != nil {
		return nil, errNodeDown
	}

	return n.reach, nil
}

// boot brings the node up for the first time.
func (n *Node) boot(ctx context.Context) error {
	if n.etcd != nil {
		if err := n.etcd.start(ctx); err != nil {
			return err
		}
	}

	return n.finishBoot(ctx, false)
}

// finishBoot publishes a fully booted node (with its configuration again when it may have changed during the
// reboot) and opens its API.
func (n *Node) finishBoot(ctx context.Context, republishConfig bool) error {
	if err := n.publishBooted(ctx, republishConfig); err != nil {
		return err
	}

	n.mu.Lock()
	n.booted, n.busy = true, false
	if !n.faults[FaultAPIDown] {
		n.setReachableLocked(true)
	}
	kubelet := n.kubelet
	n.mu.Unlock()

	if kubelet != nil {
		kubelet.Update(n.kubeletConfig())
		kubelet.SetReady(true)
	}

	return nil
}

// kubeletConfig is what the node's emulated kubelet runs, from the rendered machine config.
func (n *Node) kubeletConfig() KubeletConfig {
	n.mu.Lock()
	defer n.mu.Unlock()

	pods := make([]StaticPod, 0, len(n.rendered.components))
	for _, c := range n.rendered.components {
		pods = append(pods, StaticPod{
			Name:        c.name,
			Image:       c.image,
			Annotations: map[string]string{constants.AnnotationStaticPodConfigVersion: n.staticPodVersions[c.name]},
		})
	}

	return KubeletConfig{
		Name:             n.name,
		KubeletVersion:   n.rendered.kubelet.version,
		ControlPlane:     n.controlPlane,
		StaticPods:       pods,
		StaticPodRestart: n.fleet.opts.staticPodRestart,
		OSImage:          "Talos (v" + n.running + ")",
	}
}

// beginSequence marks the node busy with an install or reboot; only one runs at a time, like Talos' sequencer.
func (n *Node) beginSequence() error {
	n.mu.Lock()
	defer n.mu.Unlock()

	if n.busy || !n.booted {
		return errSequenceInProgress
	}

	n.busy = true

	return nil
}

func (n *Node) endSequence() {
	n.mu.Lock()
	defer n.mu.Unlock()

	n.busy = false
}

var errSequenceInProgress = errors.New("another installation, upgrade or reboot is already in progress")

// reboot starts a reboot in the background: the node goes down at once and comes back after the downtime. wipe
// clears the node's ephemeral data first (its etcd member leaves the cluster and rejoins as a new member). The caller
// must hold the sequence (beginSequence).
func (n *Node) reboot(wipe bool) {
	n.fleet.background(func(ctx context.Context) {
		if err := n.rebootSequence(ctx, wipe); err != nil && ctx.Err() == nil {
			n.fleet.logger.Error("reboot failed", zap.String("node", n.name), zap.Error(err))
		}
	})
}

func (n *Node) rebootSequence(ctx context.Context, wipe bool) error {
	n.mu.Lock()
	n.booted = false
	n.setReachableLocked(false)
	oldBootID, version := n.bootID, n.running
	kubelet := n.kubelet
	n.mu.Unlock()

	if kubelet != nil {
		kubelet.SetReady(false)
	}

	if err := n.publishRebooting(ctx); err != nil {
		return err
	}

	if n.etcd != nil {
		if wipe {
			if err := n.etcd.wipe(ctx); err != nil {
				n.fleet.logger.Error("wiping etcd member", zap.String("node", n.name), zap.Error(err))
			}

			n.fleet.journal.record(Entry{Node: n.name, Event: EventEtcdWiped})
		} else {
			n.etcd.stop()
		}
	}

	n.fleet.journal.record(Entry{Node: n.name, Event: EventRebootDown, BootID: oldBootID, Version: version})

	if err := n.waitDowntime(ctx); err != nil {
		return err
	}

	n.mu.Lock()
	if n.staged != "" {
		if n.faults[FaultRollback] {
			n.fleet.journal.record(Entry{Node: n.name, Event: EventRolledBack, Version: n.running})
		} else {
			n.running = n.staged
		}

		n.staged = ""
	}

	if n.stagedCfg != nil {
		n.cfg, n.stagedCfg = n.stagedCfg, nil
	}

	n.bootID = newBootID()
	n.mu.Unlock()

	if err := n.publishBooting(ctx); err != nil {
		return err
	}

	if n.etcd != nil {
		joining := n.etcd.id() == 0

		if err := n.startEtcd(ctx); err != nil {
			return err
		}

		if joining {
			n.fleet.journal.record(Entry{Node: n.name, Event: EventEtcdJoined, MemberID: fmt.Sprintf("%016x", n.etcd.id())})
		}
	}

	if err := n.rerender(); err != nil {
		return err
	}

	if err := n.finishBoot(ctx, true); err != nil {
		return err
	}

	n.fleet.journal.record(Entry{Node: n.name, Event: EventRebootUp, BootID: n.BootID(), Version: n.Version()})

	return nil
}

// waitDowntime waits out the reboot downtime (longer with slow-reboot) and, with no-return, until the fault is
// cleared.
func (n *Node) waitDowntime(ctx context.Context) error {
	downtime := n.fleet.opts.rebootDowntime
	if n.hasFault(FaultSlowReboot) {
		downtime *= time.Duration(n.fleet.opts.slowRebootFactor)
	}

	timer := time.NewTimer(downtime)
	defer timer.Stop()

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
	}

	for {
		n.mu.Lock()
		noReturn, changed := n.faults[FaultNoReturn], n.faultsChanged
		n.mu.Unlock()

		if !noReturn {
			return nil
		}

		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// install checks and "runs" the installer for image, and stages its version for the next boot.
func (n *Node) install(image string) (string, error) {
	target, err := n.pull(common.ContainerdNamespace_NS_SYSTEM, image)
	if err != nil {
		return "", err
	}

	if target == "" {
		return "", fmt.Errorf("image %q is not a Talos installer image", image)
	}

	n.mu.Lock()
	defer n.mu.Unlock()

	if err = checkUpgradeable(n.running, target); err != nil {
		return "", err
	}

	if n.faults[FaultInstallFail] {
		return "", fmt.Errorf("installer exited with code 1: failed to install bootloader (injected fault)")
	}

	n.staged = target

	return target, nil
}

// pull emulates an image pull into a containerd namespace: installer images must name a supported version, and a
// pull-fail fault fails every pull or the pulls of the image it names. It returns the Talos version an installer
// image carries ("" for other images).
func (n *Node) pull(namespace common.ContainerdNamespace, image string) (string, error) {
	if image == "" {
		return "", fmt.Errorf("image reference is empty")
	}

	n.mu.Lock()
	failed := n.faults[FaultPullFail] || n.pullFaults[image]
	n.mu.Unlock()

	if failed {
		return "", fmt.Errorf("pulling image %q: not found (injected fault)", image)
	}

	var version string

	if isInstallerImage(image) {
		v, err := versionFromImage(image)
		if err != nil {
			return "", err
		}

		version = v
	}

	n.mu.Lock()
	if !slices.Contains(n.images[namespace], image) {
		n.images[namespace] = append(n.images[namespace], image)
	}
	n.mu.Unlock()

	return version, nil
}

// pulledImages lists the images pulled into a containerd namespace of the node so far.
func (n *Node) pulledImages(namespace common.ContainerdNamespace) []string {
	n.mu.Lock()
	defer n.mu.Unlock()

	return slices.Clone(n.images[namespace])
}

func newBootID() string {
	b := make([]byte, 16)
	rand.Read(b) //nolint:errcheck // crypto/rand.Read never fails on Linux

	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80

	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// applyNow activates a machine config without a reboot and re-renders everything that depends on it; a config
// that cannot be rendered is refused before anything changes. It returns the control-plane components whose static
// pod the change restarts.
func (n *Node) applyNow(ctx context.Context, cfg config.Provider) ([]string, error) {
	r, err := render(cfg, n.name, n.controlPlane, n.Version())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidConfig, err)
	}

	n.mu.Lock()
	n.cfg, n.rendered = cfg, r
	kubelet := n.kubelet
	n.mu.Unlock()

	restarted, err := n.publishConfig(ctx)
	if err != nil {
		return nil, err
	}

	if kubelet != nil {
		kubelet.Update(n.kubeletConfig())
	}

	return restarted, nil
}

// restartAPIServer shows the cluster's clients what a restart of this control plane's kube-apiserver looks like:
// the cluster's API endpoint is unreachable for the static pod restart time (journal events apiserver-down and
// apiserver-up). Without Kubernetes (lite mode) there is nothing to interrupt.
func (n *Node) restartAPIServer() {
	kube := n.cluster.kube
	if kube == nil {
		return
	}

	d := n.fleet.opts.staticPodRestart

	n.fleet.background(func(ctx context.Context) {
		n.fleet.journal.record(Entry{Node: n.name, Event: EventAPIServerDown})

		if err := kube.InterruptAPIServer(ctx, d); err != nil {
			if ctx.Err() == nil {
				n.fleet.logger.Error("interrupting the API server", zap.String("node", n.name), zap.Error(err))
			}

			return
		}

		n.fleet.journal.record(Entry{Node: n.name, Event: EventAPIServerUp})
	})
}

var errInvalidConfig = errors.New("invalid machine configuration")

// validateEtcdForUpgrade is Talos' check before an upgrade that wipes a control plane's etcd data: the cluster keeps
// quorum without the member, and every member is started and healthy (injected etcd-unhealthy faults included).
func (n *Node) validateEtcdForUpgrade(ctx context.Context) error {
	if err := n.etcd.validateForUpgrade(ctx); err != nil {
		return err
	}

	for _, other := range n.fleet.clusterNodes(n.cluster) {
		if other.etcd != nil && other.hasFault(FaultEtcdUnhealthy) {
			return fmt.Errorf("etcd member %016x is not healthy; all members must be healthy to perform an upgrade", other.etcd.id())
		}
	}

	return nil
}

// startEtcd starts the node's etcd member, again every second after a failure (a membership change refused for
// too long, a start that did not get ready), as Talos restarts its etcd service, until ctx ends.
func (n *Node) startEtcd(ctx context.Context) error {
	for {
		err := n.etcd.start(ctx)
		if err == nil {
			return nil
		}

		n.fleet.logger.Error("starting etcd member; trying again", zap.String("node", n.name), zap.Error(err))

		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
