package talosemu

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// rendered is everything a node derives from its machine config, like Talos' controllers do: what the kubelet runs,
// the control-plane components (their configs and static pods) and the bootstrap manifests.
type rendered struct {
	kubelet    renderedKubelet
	components []renderedComponent // control planes only, in staticPodComponents order
	manifests  []renderedManifest
}

// renderedKubelet is the node's KubeletSpec: the image, the version its tag names and the command line.
type renderedKubelet struct {
	image   string
	version string
	args    []string
}

// renderedComponent is one control-plane component: its config (image and extra args) and the command line of its
// static pod, the defaults merged with the extra args as Talos merges them.
type renderedComponent struct {
	name      string
	image     string
	extraArgs map[string][]string
	command   []string
}

type renderedManifest struct {
	id      string
	objects []map[string]any
}

// Component names, as Talos names the static pods, their configs and the images a config patch changes.
const (
	componentAPIServer         = "kube-apiserver"
	componentControllerManager = "kube-controller-manager"
	componentScheduler         = "kube-scheduler"
	componentKubeProxy         = "kube-proxy"
	componentKubelet           = "kubelet"
)

// staticPodComponents are the control-plane static pods in the order Talos renders them.
var staticPodComponents = []string{componentAPIServer, componentControllerManager, componentScheduler}

// componentDefaults are a few of the flags Talos gives each component by default, so the rendered command lines
// look like Talos' and extra args merge into something; feature gates and admission plugins merge additively.
var componentDefaults = map[string]map[string]string{
	componentAPIServer: {
		"allow-privileged":         "true",
		"enable-admission-plugins": "NodeRestriction",
		"profiling":                "false",
		"secure-port":              "6443",
	},
	componentControllerManager: {"bind-address": "127.0.0.1", "leader-elect": "true", "profiling": "false"},
	componentScheduler:         {"bind-address": "127.0.0.1", "leader-elect": "true", "profiling": "false"},
	componentKubeProxy:         {"cluster-cidr": "10.244.0.0/16", "hostname-override": "$(NODE_NAME)", "proxy-mode": "iptables"},
	componentKubelet:           {"cert-dir": "/var/lib/kubelet/pki", "config": "/etc/kubernetes/kubelet.yaml"},
}

// additiveArgs are the flags whose extra values are appended to the defaults instead of replacing them.
var additiveArgs = []string{"enable-admission-plugins", "feature-gates"}

// componentImages lists the image of each Kubernetes component a machine config names (kubelet always; the
// control-plane components and kube-proxy when the config has them).
func componentImages(cfg config.Config) map[string]string {
	images := map[string]string{}

	if c := cfg.K8sKubeletConfig(); c != nil {
		images[componentKubelet] = c.Image()
	}

	if c := cfg.K8sAPIServerConfig(); c != nil {
		images[componentAPIServer] = c.Image()
	}

	if c := cfg.K8sControllerManagerConfig(); c != nil {
		images[componentControllerManager] = c.Image()
	}

	if c := cfg.K8sSchedulerConfig(); c != nil {
		images[componentScheduler] = c.Image()
	}

	if c := cfg.K8sProxyConfig(); c != nil && c.Enabled() {
		images[componentKubeProxy] = c.Image()
	}

	return images
}

// componentExtraArgs are the extra args a machine config gives a component.
func componentExtraArgs(cfg config.Config, component string) map[string][]string {
	var args map[string][]string

	switch component {
	case componentAPIServer:
		args = cfg.K8sAPIServerConfig().ExtraArgs()
	case componentControllerManager:
		args = cfg.K8sControllerManagerConfig().ExtraArgs()
	case componentScheduler:
		args = cfg.K8sSchedulerConfig().ExtraArgs()
	case componentKubeProxy:
		args = cfg.K8sProxyConfig().ExtraArgs()
	case componentKubelet:
		args = cfg.K8sKubeletConfig().ExtraArgs()
	}

	return args
}

// commandLine merges a component's default flags with its extra args into "--key=value" arguments, sorted by key:
// an extra arg replaces the default, except for the additive flags, whose values are appended.
func commandLine(defaults map[string]string, extra map[string][]string) []string {
	merged := map[string][]string{}

	for key, value := range defaults {
		merged[key] = []string{value}
	}

	for key, values := range extra {
		if slices.Contains(additiveArgs, key) && len(merged[key]) > 0 {
			merged[key] = []string{strings.Join(append(merged[key], values...), ",")}

			continue
		}

		merged[key] = values
	}

	args := make([]string, 0, len(merged))

	for _, key := range slices.Sorted(maps.Keys(merged)) {
		for _, value := range merged[key] {
			args = append(args, "--"+key+"="+value)
		}
	}

	return args
}

// render derives what a node runs from its machine config; talosVersion is the Talos release the node runs, whose
// defaults the bootstrap manifests follow.
func render(cfg config.Config, node string, controlPlane bool, talosVersion string) (rendered, error) {
	images := componentImages(cfg)

	image, ok := images[componentKubelet]
	if !ok {
		return rendered{}, fmt.Errorf("machine config has no kubelet configuration")
	}

	version := imageVersion(image)
	if version == "" {
		return rendered{}, fmt.Errorf("kubelet image %q has no version tag", image)
	}

	kubeletArgs := maps.Clone(componentDefaults[componentKubelet])
	kubeletArgs["hostname-override"] = node

	r := rendered{kubelet: renderedKubelet{
		image:   image,
		version: "v" + version,
		args:    commandLine(kubeletArgs, componentExtraArgs(cfg, componentKubelet)),
	}}

	if !controlPlane {
		return r, nil
	}

	for _, name := range staticPodComponents {
		if images[name] == "" {
			return rendered{}, fmt.Errorf("machine config has no image for %s", name)
		}

		extra := componentExtraArgs(cfg, name)

		r.components = append(r.components, renderedComponent{
			name:      name,
			image:     images[name],
			extraArgs: extra,
			command:   append([]string{"/usr/local/bin/" + name}, commandLine(componentDefaults[name], extra)...),
		})
	}

	r.manifests = bootstrapManifests(cfg, talosVersion)

	return r, nil
}

// kubeProxyManifestID is the ID of the bootstrap manifest holding kube-proxy, the one the emulator applies to the
// cluster's API server at start, as the bootstrap node of a real cluster does.
const kubeProxyManifestID = "10-kube-proxy"

// imageVersion is the tag of an image reference without a "v" prefix and without variant suffixes ("-fat").
func imageVersion(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")

	colon := strings.LastIndex(ref, ":")
	if colon < 0 || colon < strings.LastIndex(ref, "/") {
		return ""
	}

	tag := strings.TrimPrefix(ref[colon+1:], "v")
	tag, _, _ = strings.Cut(tag, "-fat")
	tag, _, _ = strings.Cut(tag, "-slim")

	return tag
}

// kubeProxyObjects are the kube-proxy ServiceAccount and DaemonSet as Talos renders them (selector, tolerations,
// one node at a time rolling update), so a rollout of a new image behaves as on Talos.
func kubeProxyObjects(image string, command []string) []map[string]any {
	labels := map[string]any{"k8s-app": "kube-proxy", "tier": "node"}

	commandItems := make([]any, 0, len(command))
	for _, arg := range command {
		commandItems = append(commandItems, arg)
	}

	return []map[string]any{
		{
			"apiVersion": "v1",
			"kind":       "ServiceAccount",
			"metadata":   map[string]any{"name": "kube-proxy", "namespace": "kube-system"},
		},
		{
			"apiVersion": "apps/v1",
			"kind":       "DaemonSet",
			"metadata":   map[string]any{"name": "kube-proxy", "namespace": "kube-system", "labels": labels},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": labels},
				"updateStrategy": map[string]any{
					"type":          "RollingUpdate",
					"rollingUpdate": map[string]any{"maxUnavailable": int64(1)},
				},
				"template": map[string]any{
					"metadata": map[string]any{"labels": labels},
					"spec": map[string]any{
						"serviceAccountName": "kube-proxy",
						"hostNetwork":        true,
						"priorityClassName":  "system-cluster-critical",
						"tolerations": []any{
							map[string]any{"operator": "Exists", "effect": "NoSchedule"},
							map[string]any{"operator": "Exists", "effect": "NoExecute"},
						},
						"containers": []any{map[string]any{
							"name":    "kube-proxy",
							"image":   image,
							"command": commandItems,
						}},
					},
				},
			},
		},
	}
}

func coreDNSObjects(image string) []map[string]any {
	labels := map[string]any{"k8s-app": "kube-dns"}

	return []map[string]any{
		{
			"apiVersion": "apps/v1",
			"kind":       "Deployment",
			"metadata":   map[string]any{"name": "coredns", "namespace": "kube-system", "labels": labels},
			"spec": map[string]any{
				"replicas": int64(2),
				"selector": map[string]any{"matchLabels": labels},
				"template": map[string]any{
					"metadata": map[string]any{"labels": labels},
					"spec": map[string]any{
						"containers": []any{map[string]any{
							"name":  "coredns",
							"image": image,
							"args":  []any{"-conf", "/etc/coredns/Corefile"},
						}},
					},
				},
			},
		},
		{
			"apiVersion": "v1",
			"kind":       "Service",
			"metadata":   map[string]any{"name": "kube-dns", "namespace": "kube-system", "labels": labels},
			"spec": map[string]any{
				"selector":  labels,
				"clusterIP": "10.96.0.10",
				"ports": []any{
					map[string]any{"name": "dns", "port": int64(53), "protocol": "UDP"},
					map[string]any{"name": "dns-tcp", "port": int64(53), "protocol": "TCP"},
				},
			},
		},
	}
}

// staticPodObject is the pod Talos renders for a control-plane component, annotated with the version of the
// component's config resource so clients can wait for a configuration change to reach the pod.
func staticPodObject(c renderedComponent, configVersion string) map[string]any {
	command := make([]any, 0, len(c.command))
	for _, arg := range c.command {
		command = append(command, arg)
	}

	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata": map[string]any{
			"name":      c.name,
			"namespace": "kube-system",
			"labels": map[string]any{
				"k8s-app":                   c.name,
				"component":                 c.name,
				"tier":                      "control-plane",
				"app.kubernetes.io/name":    c.name,
				"app.kubernetes.io/version": imageVersion(c.image),
			},
			"annotations": map[string]any{constants.AnnotationStaticPodConfigVersion: configVersion},
		},
		"spec": map[string]any{
			"hostNetwork":       true,
			"priorityClassName": "system-cluster-critical",
			"containers": []any{map[string]any{
				"name":    c.name,
				"image":   c.image,
				"command": command,
			}},
		},
	}
}

// staticPodStatusID is the ID Talos gives a static pod's status: the mirror pod's namespace/name.
func staticPodStatusID(node, component string) string {
	return "kube-system/" + component + "-" + node
}

func runningPodStatus() map[string]any {
	return map[string]any{
		"phase": "Running",
		"conditions": []any{
			map[string]any{"type": "Ready", "status": "True"},
			map[string]any{"type": "ContainersReady", "status": "True"},
		},
	}
}

// imageChanges lists the component images a machine config (as sent to ApplyConfiguration) changes against the
// node's active config; a config that does not parse changes nothing (the call is refused).
func (n *Node) imageChanges(data []byte) []ImageChange {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return nil
	}

	before, after := componentImages(n.Config()), componentImages(cfg)

	var changes []ImageChange

	for _, component := range []string{componentAPIServer, componentControllerManager, componentScheduler, componentKubeProxy, componentKubelet} {
		if before[component] != after[component] {
			changes = append(changes, ImageChange{Component: component, From: before[component], To: after[component]})
		}
	}

	return changes
}
