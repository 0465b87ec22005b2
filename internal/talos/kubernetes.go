package talos

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/go-kubernetes/kubernetes/upgrade"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/stdpatches"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"k8s.io/client-go/tools/clientcmd"
)

// Kubernetes components whose image Talos takes from the machine config.
const (
	KubeAPIServer         = "kube-apiserver"
	KubeControllerManager = "kube-controller-manager"
	KubeScheduler         = "kube-scheduler"
	KubeProxy             = "kube-proxy"
	Kubelet               = "kubelet"
)

// Finding is one item a Kubernetes pre-check found: a flag, feature gate or admission plugin the target removes,
// set on a component of a node, or objects of an API version the target no longer serves.
type Finding struct {
	// Check names the check (the names resources/cluster.KubernetesChecks lists).
	Check string
	// Node and Component say where a flag was found; empty for API objects.
	Node, Component string
	// Value is the flag, the feature gate, the plugin, or the API resource with its object count.
	Value string
}

// Kubernetes changes and reads the Kubernetes components Talos runs on a node, through its machine config: the
// way `talosctl upgrade-k8s` does it.
type Kubernetes interface {
	// KubernetesImages returns the image of each component (KubeAPIServer …) in the node's active machine config;
	// a worker has only the kubelet and kube-proxy.
	KubernetesImages(ctx context.Context, node string) (map[string]string, error)
	// SetKubernetesImage patches the node's machine config so that component runs image (machinery stdpatches, in
	// the document format of the node's config contract) and applies it without a reboot. A config that already
	// names image is not sent again: changed is false.
	SetKubernetesImage(ctx context.Context, node, component, image string) (changed bool, err error)
	// PullKubernetesImage pulls image on node: into the CRI namespace for pods (cri), else the system one (kubelet).
	PullKubernetesImage(ctx context.Context, node, image string, cri bool) error
	// StaticPod returns the image and talos.dev/config-version of the static pod Talos rendered for component.
	StaticPod(ctx context.Context, node, component string) (image, configVersion string, err error)
	// KubeProxyDaemonSet returns the kube-proxy DaemonSet of the bootstrap manifests a control plane rendered, as JSON.
	KubeProxyDaemonSet(ctx context.Context, node string) ([]byte, error)
	// KubernetesChecks runs go-kubernetes' pre-upgrade checks of the path from → to over the nodes' static pods
	// and kubelet specs and, with a kubeconfig, the cluster's objects.
	KubernetesChecks(ctx context.Context, kubeconfig []byte, from, to string, controlPlanes, workers []string) ([]Finding, error)
}

var _ Kubernetes = (*Client)(nil)

func (c *Client) machineConfig(ctx context.Context, node string) (*config.MachineConfig, error) {
	cfg, err := safe.StateGetByID[*config.MachineConfig](client.WithNode(ctx, node), c.c.COSI, config.ActiveID)
	if err != nil {
		return nil, fmt.Errorf("reading the machine config: %w", err)
	}

	return cfg, nil
}

// KubernetesImages implements Kubernetes.
func (c *Client) KubernetesImages(ctx context.Context, node string) (map[string]string, error) {
	cfg, err := c.machineConfig(ctx, node)
	if err != nil {
		return nil, wrap(node, "reading Kubernetes images", err)
	}

	out := map[string]string{}
	ct := cfg.Provider()

	if k := ct.K8sKubeletConfig(); k != nil {
		out[Kubelet] = k.Image()
	}

	if k := ct.K8sProxyConfig(); k != nil {
		out[KubeProxy] = k.Image()
	}

	if ct.Machine() != nil && ct.Machine().Type().IsControlPlane() {
		if k := ct.K8sAPIServerConfig(); k != nil {
			out[KubeAPIServer] = k.Image()
		}

		if k := ct.K8sControllerManagerConfig(); k != nil {
			out[KubeControllerManager] = k.Image()
		}

		if k := ct.K8sSchedulerConfig(); k != nil {
			out[KubeScheduler] = k.Image()
		}
	}

	return out, nil
}

// patchFor is the stdpatches patch that sets component's image, in the format the config's contract reads.
func patchFor(ct talosconfig.Container, component, image string) ([]byte, error) {
	switch component {
	case KubeAPIServer:
		return stdpatches.WithKubeAPIServerImage(stdpatches.GuessVersionContractKubeAPIServer(ct), image)
	case KubeControllerManager:
		return stdpatches.WithKubeControllerManagerImage(stdpatches.GuessVersionContractKubeControllerManager(ct), image)
	case KubeScheduler:
		return stdpatches.WithKubeSchedulerImage(stdpatches.GuessVersionContractKubeScheduler(ct), image)
	case KubeProxy:
		return stdpatches.WithKubeProxyImage(stdpatches.GuessVersionContractKubeProxy(ct), image)
	case Kubelet:
		return stdpatches.WithKubeletImage(stdpatches.GuessVersionContractKubelet(ct), image)
	default:
		return nil, fmt.Errorf("unknown Kubernetes component %q", component)
	}
}

// SetKubernetesImage implements Kubernetes.
func (c *Client) SetKubernetesImage(ctx context.Context, node, component, image string) (bool, error) {
	op := "setting the " + component + " image"

	images, err := c.KubernetesImages(ctx, node)
	if err != nil {
		return false, err
	}

	if images[component] == image {
		return false, nil
	}

	cfg, err := c.machineConfig(ctx, node)
	if err != nil {
		return false, wrap(node, op, err)
	}

	patch, err := stdpatches.PreparePatch(patchFor(cfg.Container(), component, image))
	if err != nil {
		return false, wrap(node, op, fmt.Errorf("preparing the patch: %w", err))
	}

	out, err := configpatcher.Apply(configpatcher.WithConfig(cfg.Provider()), []configpatcher.Patch{patch})
	if err != nil {
		return false, wrap(node, op, fmt.Errorf("patching the machine config: %w", err))
	}

	data, err := out.Bytes()
	if err != nil {
		return false, wrap(node, op, fmt.Errorf("encoding the machine config: %w", err))
	}

	if _, err = c.c.ApplyConfiguration(client.WithNode(ctx, node), &machineapi.ApplyConfigurationRequest{
		Data: data, Mode: machineapi.ApplyConfigurationRequest_NO_REBOOT,
	}); err != nil {
		return false, wrap(node, op, fmt.Errorf("applying the machine config: %w", err))
	}

	return true, nil
}

// PullKubernetesImage implements Kubernetes.
func (c *Client) PullKubernetesImage(ctx context.Context, node, image string, cri bool) error {
	ns := common.ContainerdNamespace_NS_SYSTEM
	if cri {
		ns = common.ContainerdNamespace_NS_CRI
	}

	_, err := c.pull(ctx, node, image, &common.ContainerdInstance{Driver: common.ContainerDriver_CRI, Namespace: ns}, "pulling "+image)

	return err
}

// StaticPod implements Kubernetes.
func (c *Client) StaticPod(ctx context.Context, node, component string) (string, string, error) {
	op := "reading the " + component + " static pod"

	res, err := safe.StateGetByID[*k8s.StaticPod](client.WithNode(ctx, node), c.c.COSI, component)
	if err != nil {
		return "", "", wrap(node, op, err)
	}

	var pod struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			Containers []struct {
				Image string `json:"image"`
			} `json:"containers"`
		} `json:"spec"`
	}

	raw, err := json.Marshal(res.TypedSpec().Pod)
	if err == nil {
		err = json.Unmarshal(raw, &pod)
	}

	if err != nil || len(pod.Spec.Containers) == 0 {
		return "", "", wrap(node, op, fmt.Errorf("static pod without a container: %v", err))
	}

	return pod.Spec.Containers[0].Image, pod.Metadata.Annotations[constants.AnnotationStaticPodConfigVersion], nil
}

// KubeProxyDaemonSet implements Kubernetes.
func (c *Client) KubeProxyDaemonSet(ctx context.Context, node string) ([]byte, error) {
	const op = "reading the kube-proxy manifest"

	manifests, err := safe.StateListAll[*k8s.Manifest](client.WithNode(ctx, node), c.c.COSI)
	if err != nil {
		return nil, wrap(node, op, err)
	}

	for m := range manifests.All() {
		for _, item := range m.TypedSpec().Items {
			if item.Object["kind"] != "DaemonSet" {
				continue
			}

			if meta, ok := item.Object["metadata"].(map[string]any); ok && meta["name"] == "kube-proxy" {
				out, err := json.Marshal(item.Object)
				if err != nil {
					return nil, wrap(node, op, err)
				}

				return out, nil
			}
		}
	}

	return nil, wrap(node, op, errors.New("no kube-proxy DaemonSet among the bootstrap manifests"))
}

// KubernetesChecks implements Kubernetes.
func (c *Client) KubernetesChecks(ctx context.Context, kubeconfig []byte, from, to string, controlPlanes, workers []string) ([]Finding, error) {
	path, err := upgrade.NewPath(from, to)
	if err != nil {
		return nil, fmt.Errorf("pre-checks %s -> %s: %w", from, to, err)
	}

	restConfig, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if len(kubeconfig) == 0 {
		restConfig, err = nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("pre-checks: reading kubeconfig: %w", err)
	}

	checks, err := upgrade.NewChecks(path, c.c.COSI, restConfig, controlPlanes, workers, func(string, ...any) {})
	if err != nil {
		return nil, fmt.Errorf("pre-checks %s: %w", path, err)
	}

	out, err := findings(checks.Run(ctx))
	if err != nil {
		return nil, fmt.Errorf("pre-checks %s: %w", path, err)
	}

	return out, nil
}

// findings turns the error of go-kubernetes' checks into one Finding per item found, so every check's result can be
// recorded; an error that is not a list of removed items (the checks could not run) is returned as it is. Run
// returns the items as a ComponentRemovedItemsError value (ErrorOrNil), so both the value and a pointer are read.
func findings(err error) ([]Finding, error) {
	var (
		removed upgrade.ComponentRemovedItemsError
		ptr     *upgrade.ComponentRemovedItemsError
	)

	switch {
	case err == nil:
		return nil, nil
	case errors.As(err, &removed):
	case errors.As(err, &ptr) && ptr != nil:
		removed = *ptr
	default:
		return nil, err
	}

	var out []Finding

	add := func(check string, items []upgrade.ComponentItem) {
		for _, it := range items {
			out = append(out, Finding{Check: check, Node: it.Node, Component: it.Component, Value: it.Value})
		}
	}

	add("removed-admission-plugins", removed.AdmissionFlags)
	add("removed-flags", removed.CLIFlags)
	add("removed-feature-gates", removed.FeatureGates)

	for res, n := range removed.APIResources {
		out = append(out, Finding{Check: "removed-apis", Value: fmt.Sprintf("%s (%d objects)", res, n)})
	}

	slices.SortFunc(out, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.Check, b.Check), cmp.Compare(a.Node, b.Node), cmp.Compare(a.Component, b.Component), cmp.Compare(a.Value, b.Value))
	})

	return out, nil
}
