package talosemu

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/cosi-project/runtime/pkg/state/registry"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	clusterres "github.com/siderolabs/talos/pkg/machinery/resources/cluster"
	"github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/etcd"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
)

// History kept per resource collection: enough for watches with tail events, small enough for 10,000-node fleets.
const (
	historyInitialCapacity = 4
	historyMaxCapacity     = 64
)

// newNodeState builds a node's COSI state. The meta namespace (namespaces and resource definitions, the same on
// every node) is shared by the whole fleet, the cluster namespace (discovery) by the nodes of one cluster.
func newNodeState(shared, discovery state.CoreState) state.State {
	build := inmem.NewStateWithOptions(inmem.WithHistoryInitialCapacity(historyInitialCapacity), inmem.WithHistoryMaxCapacity(historyMaxCapacity))

	return state.WrapCore(namespaced.NewState(func(ns resource.Namespace) state.CoreState {
		switch ns {
		case meta.NamespaceName:
			return shared
		case clusterres.NamespaceName:
			return discovery
		}

		return build(ns)
	}))
}

// newMetaState registers the namespaces and resource definitions of every resource the emulator serves, so
// `talosctl get` can resolve types and aliases.
func newMetaState(ctx context.Context) (state.CoreState, error) {
	core := inmem.NewState(meta.NamespaceName)
	st := state.WrapCore(core)

	namespaces := registry.NewNamespaceRegistry(st)
	if err := namespaces.RegisterDefault(ctx); err != nil {
		return nil, fmt.Errorf("registering meta namespaces: %w", err)
	}

	for ns, description := range map[resource.Namespace]string{
		runtime.NamespaceName:         "Talos runtime resources",
		k8s.NamespaceName:             "Kubernetes resources of all nodes",
		k8s.ControlPlaneNamespaceName: "Kubernetes control plane resources",
		config.NamespaceName:          "Talos machine configuration",
		etcd.NamespaceName:            "etcd resources",
		clusterres.NamespaceName:      "Cluster configuration and discovery resources",
	} {
		if err := namespaces.Register(ctx, ns, description); err != nil {
			return nil, fmt.Errorf("registering namespace %q: %w", ns, err)
		}
	}

	definitions := registry.NewResourceRegistry(st)
	if err := definitions.RegisterDefault(ctx); err != nil {
		return nil, fmt.Errorf("registering meta resource definitions: %w", err)
	}

	for _, r := range []meta.ResourceWithRD{
		&runtime.MachineStatus{}, &runtime.Version{}, &runtime.BootID{}, &v1alpha1.Service{},
		&k8s.Nodename{}, &k8s.KubeletSpec{}, &k8s.StaticPod{}, &k8s.StaticPodStatus{}, &k8s.Manifest{},
		&k8s.APIServerConfig{}, &k8s.ControllerManagerConfig{}, &k8s.SchedulerConfig{},
		&config.MachineConfig{}, &etcd.Member{}, &clusterres.Member{},
	} {
		if err := definitions.Register(ctx, r); err != nil {
			return nil, fmt.Errorf("registering resource definition %T: %w", r, err)
		}
	}

	return core, nil
}

// services lists the Talos services a node runs, by role.
func (n *Node) services() []string {
	if n.controlPlane {
		return []string{"apid", "containerd", "cri", "etcd", "kubelet", "machined", "trustd"}
	}

	return []string{"apid", "containerd", "cri", "kubelet", "machined"}
}

// publishInitial creates every resource of a freshly created node.
func (n *Node) publishInitial(ctx context.Context) error {
	if err := n.rerender(); err != nil {
		return err
	}

	nodename := k8s.NewNodename(k8s.NamespaceName, k8s.NodenameID)
	nodename.TypedSpec().Nodename = n.name
	nodename.TypedSpec().HostnameVersion = "1"

	for _, r := range []resource.Resource{runtime.NewMachineStatus(), runtime.NewVersion(), runtime.NewBootID(), nodename} {
		if err := n.st.Create(ctx, r); err != nil {
			return fmt.Errorf("creating %s on %q: %w", r.Metadata().Type(), n.name, err)
		}
	}

	_, err := n.publishConfig(ctx)

	return err
}

// publishRebooting shows a node going down: stage Rebooting, services stopped.
func (n *Node) publishRebooting(ctx context.Context) error {
	if err := n.setMachineStatus(ctx, runtime.MachineStageRebooting, nil); err != nil {
		return err
	}

	return n.setServices(ctx, false)
}

// publishBooting shows the node after its downtime: the new boot ID and running version, stage Booting.
func (n *Node) publishBooting(ctx context.Context) error {
	if err := n.publishIdentity(ctx); err != nil {
		return err
	}

	return n.setMachineStatus(ctx, runtime.MachineStageBooting, []runtime.UnmetCondition{{Name: "services", Reason: "services are starting"}})
}

// publishBooted shows a fully booted node: identity, configuration, services and stage Running.
func (n *Node) publishBooted(ctx context.Context, republishConfig bool) error {
	if err := n.publishIdentity(ctx); err != nil {
		return err
	}

	if republishConfig {
		if _, err := n.publishConfig(ctx); err != nil {
			return err
		}
	}

	return n.publishHealth(ctx)
}

// publishHealth updates services and the machine status from the node's faults.
func (n *Node) publishHealth(ctx context.Context) error {
	if err := n.setServices(ctx, true); err != nil {
		return err
	}

	var unmet []runtime.UnmetCondition
	if n.etcd != nil && n.hasFault(FaultEtcdUnhealthy) {
		unmet = append(unmet, runtime.UnmetCondition{Name: "serviceHealth", Reason: "service \"etcd\" not healthy"})
	}

	return n.setMachineStatus(ctx, runtime.MachineStageRunning, unmet)
}

func (n *Node) publishIdentity(ctx context.Context) error {
	n.mu.Lock()
	version, bootID := n.running, n.bootID
	n.mu.Unlock()

	if err := safe.StateModify(ctx, n.st, runtime.NewVersion(), func(r *runtime.Version) error {
		r.TypedSpec().Name = "Talos"
		r.TypedSpec().Version = "v" + version

		return nil
	}); err != nil {
		return fmt.Errorf("updating version of %q: %w", n.name, err)
	}

	if err := n.publishMember(ctx, version); err != nil {
		return err
	}

	if err := safe.StateModify(ctx, n.st, runtime.NewBootID(), func(r *runtime.BootID) error {
		r.TypedSpec().BootID = bootID

		return nil
	}); err != nil {
		return fmt.Errorf("updating boot ID of %q: %w", n.name, err)
	}

	if n.etcd != nil {
		id := n.etcd.id()

		if err := safe.StateModify(ctx, n.st, etcd.NewMember(etcd.NamespaceName, etcd.LocalMemberID), func(r *etcd.Member) error {
			r.TypedSpec().MemberID = fmt.Sprintf("%016x", id)

			return nil
		}); err != nil {
			return fmt.Errorf("updating etcd member of %q: %w", n.name, err)
		}
	}

	return nil
}

func (n *Node) setMachineStatus(ctx context.Context, stage runtime.MachineStage, unmet []runtime.UnmetCondition) error {
	return wrapNode(n, "machine status", safe.StateModify(ctx, n.st, runtime.NewMachineStatus(), func(r *runtime.MachineStatus) error {
		r.TypedSpec().Stage = stage
		r.TypedSpec().Status.Ready = stage == runtime.MachineStageRunning && len(unmet) == 0
		r.TypedSpec().Status.UnmetConditions = unmet

		return nil
	}))
}

// setServices marks every service running and healthy (up) or stopped (down); etcd follows its fault.
func (n *Node) setServices(ctx context.Context, up bool) error {
	// etcd runs only while the node is a member (not after it left the cluster), and is healthy unless faulted.
	etcdRunning := up && n.etcd != nil && n.etcd.id() != 0
	etcdHealthy := etcdRunning && !n.hasFault(FaultEtcdUnhealthy)

	for _, id := range n.services() {
		running, healthy := up, up
		if id == "etcd" {
			running, healthy = etcdRunning, etcdHealthy
		}

		if err := safe.StateModify(ctx, n.st, v1alpha1.NewService(id), func(r *v1alpha1.Service) error {
			r.TypedSpec().Running = running
			r.TypedSpec().Healthy = healthy
			r.TypedSpec().Unknown = false

			return nil
		}); err != nil {
			return wrapNode(n, "service "+id, err)
		}
	}

	return nil
}

// rerender derives the kubelet, static pods and manifests from the active machine config.
func (n *Node) rerender() error {
	n.mu.Lock()
	defer n.mu.Unlock()

	r, err := render(n.cfg, n.name, n.controlPlane, n.running)
	if err != nil {
		return fmt.Errorf("rendering machine config of %q: %w", n.name, err)
	}

	n.rendered = r

	return nil
}

// publishConfig publishes the machine config and everything rendered from it, and returns the control-plane
// components whose static pod changed (their config resource got a new version), which the kubelet restarts. When
// the kubelet's image or flags change, the kubelet service restarts (its resource is destroyed and created again),
// as clients that upgrade kubelets expect.
func (n *Node) publishConfig(ctx context.Context) ([]string, error) {
	n.mu.Lock()
	cfg, r, running := n.cfg, n.rendered, n.running
	previous := n.staticPodVersions
	n.mu.Unlock()

	if err := n.putMachineConfig(ctx, cfg); err != nil {
		return nil, wrapNode(n, "machine config", err)
	}

	kubeletChanged := false

	if err := safe.StateModify(ctx, n.st, k8s.NewKubeletSpec(k8s.NamespaceName, k8s.KubeletID), func(res *k8s.KubeletSpec) error {
		spec := res.TypedSpec()
		kubeletChanged = spec.Image != "" && (spec.Image != r.kubelet.image || !slices.Equal(spec.Args, r.kubelet.args))
		spec.Image = r.kubelet.image
		spec.ExpectedNodename = n.name
		spec.Args = r.kubelet.args
		spec.Config = map[string]any{"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration"}

		return nil
	}); err != nil {
		return nil, wrapNode(n, "kubelet spec", err)
	}

	if kubeletChanged {
		if err := n.restartService(ctx, "kubelet"); err != nil {
			return nil, err
		}
	}

	versions := make(map[string]string, len(r.components))

	var restarted []string

	for _, c := range r.components {
		version, err := n.publishComponent(ctx, c, servesFinalConfigs(running))
		if err != nil {
			return nil, err
		}

		versions[c.name] = version

		if previous[c.name] != "" && previous[c.name] != version {
			restarted = append(restarted, c.name)
		}
	}

	n.mu.Lock()
	n.staticPodVersions = versions
	n.mu.Unlock()

	for _, m := range r.manifests {
		items := make([]k8s.SingleManifest, 0, len(m.objects))
		for _, object := range m.objects {
			items = append(items, k8s.SingleManifest{Object: object})
		}

		if err := safe.StateModify(ctx, n.st, k8s.NewManifest(k8s.ControlPlaneNamespaceName, m.id), func(res *k8s.Manifest) error {
			res.TypedSpec().Items = items

			return nil
		}); err != nil {
			return nil, wrapNode(n, "manifest "+m.id, err)
		}
	}

	return restarted, nil
}

// publishComponent writes a control-plane component's config resources (the plain one and, when final is set, the
// final one Talos 1.14 renders the static pod from), then its StaticPod annotated with the version of that config,
// and its status. It returns that version.
func (n *Node) publishComponent(ctx context.Context, c renderedComponent, final bool) (string, error) {
	ids := []string{c.name}
	if final {
		ids = append(ids, k8s.FinalPrefix+c.name)
	}

	var version string

	for _, id := range ids {
		v, err := modifyComponentConfig(ctx, n.st, id, c)
		if err != nil {
			return "", wrapNode(n, "config "+id, err)
		}

		version = v
	}

	object := staticPodObject(c, version)

	if err := safe.StateModify(ctx, n.st, k8s.NewStaticPod(k8s.NamespaceName, c.name), func(res *k8s.StaticPod) error {
		res.TypedSpec().Pod = object

		return nil
	}); err != nil {
		return "", wrapNode(n, "static pod "+c.name, err)
	}

	if err := safe.StateModify(ctx, n.st, k8s.NewStaticPodStatus(k8s.NamespaceName, staticPodStatusID(n.name, c.name)), func(res *k8s.StaticPodStatus) error {
		res.TypedSpec().PodStatus = runningPodStatus()

		return nil
	}); err != nil {
		return "", wrapNode(n, "static pod status "+c.name, err)
	}

	return version, nil
}

// modifyComponentConfig writes one config resource of a control-plane component and returns its version, which
// changes only when the image or the extra args do.
func modifyComponentConfig(ctx context.Context, st state.State, id string, c renderedComponent) (string, error) {
	args := make(map[string]k8s.ArgValues, len(c.extraArgs))
	for key, values := range c.extraArgs {
		args[key] = k8s.ArgValues{Values: values}
	}

	switch c.name {
	case componentAPIServer:
		return modifyVersion(ctx, st, k8s.NewAPIServerConfig(id), func(r *k8s.APIServerConfig) {
			r.TypedSpec().Image, r.TypedSpec().ExtraArgs = c.image, args
		})
	case componentControllerManager:
		return modifyVersion(ctx, st, k8s.NewControllerManagerConfig(id), func(r *k8s.ControllerManagerConfig) {
			r.TypedSpec().Enabled, r.TypedSpec().Image, r.TypedSpec().ExtraArgs = true, c.image, args
		})
	default:
		return modifyVersion(ctx, st, k8s.NewSchedulerConfig(id), func(r *k8s.SchedulerConfig) {
			r.TypedSpec().Enabled, r.TypedSpec().Image, r.TypedSpec().ExtraArgs = true, c.image, args
		})
	}
}

// modifyVersion creates or updates a resource (an unchanged one keeps its version) and returns its version.
func modifyVersion[T resource.Resource](ctx context.Context, st state.State, r T, set func(T)) (string, error) {
	out, err := safe.StateModifyWithResult(ctx, st, r, func(r T) error {
		set(r)

		return nil
	})
	if err != nil {
		return "", err
	}

	return out.Metadata().Version().String(), nil
}

// putMachineConfig creates or replaces the active MachineConfig resource (its spec has no setter).
func (n *Node) putMachineConfig(ctx context.Context, cfg talosconfig.Provider) error {
	res := config.NewMachineConfig(cfg)

	current, err := n.st.Get(ctx, res.Metadata())
	if state.IsNotFoundError(err) {
		return n.st.Create(ctx, res)
	}

	if err != nil {
		return err
	}

	res.Metadata().SetVersion(current.Metadata().Version())

	return n.st.Update(ctx, res)
}

// restartService shows a service restart: its resource goes away and comes back running.
func (n *Node) restartService(ctx context.Context, id string) error {
	if err := n.st.Destroy(ctx, v1alpha1.NewService(id).Metadata()); err != nil && !state.IsNotFoundError(err) {
		return wrapNode(n, "service "+id, err)
	}

	svc := v1alpha1.NewService(id)
	svc.TypedSpec().Running, svc.TypedSpec().Healthy = true, true

	return wrapNode(n, "service "+id, n.st.Create(ctx, svc))
}

func wrapNode(n *Node, what string, err error) error {
	if err == nil {
		return nil
	}

	return fmt.Errorf("updating %s of %q: %w", what, n.name, err)
}

// isInstallerImage tells installer images (whose tag is a Talos version) from other images.
func isInstallerImage(ref string) bool {
	ref, _, _ = strings.Cut(ref, "@")
	if colon := strings.LastIndex(ref, ":"); colon > strings.LastIndex(ref, "/") {
		ref = ref[:colon]
	}

	return strings.Contains(ref, "installer")
}
