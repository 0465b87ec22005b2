package talosemu

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// rendered is everything a node derives from its machine config, like Talos' controllers do: what the kubelet runs,
// the control-plane static pods and the bootstrap manifests.
type rendered struct {
	kubeletImage   string
	kubeletVersion string
	staticPods     []StaticPod
	manifests      []renderedManifest
}

type renderedManifest struct {
	id      string
	objects []map[string]any
}

// staticPodComponents are the control-plane static pods in the order Talos renders them.
var staticPodComponents = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}

func render(cfg config.Config, controlPlane bool, talosVersion string) (rendered, error) {
	kubeletConfig := cfg.K8sKubeletConfig()
	if kubeletConfig == nil {
		return rendered{}, fmt.Errorf("machine config has no kubelet configuration")
	}

	r := rendered{kubeletImage: kubeletConfig.Image()}
	if v := imageVersion(r.kubeletImage); v != "" {
		r.kubeletVersion = "v" + v
	} else {
		return rendered{}, fmt.Errorf("kubelet image %q has no version tag", r.kubeletImage)
	}

	if !controlPlane {
		return r, nil
	}

	images := map[string]string{}

	if c := cfg.K8sAPIServerConfig(); c != nil {
		images["kube-apiserver"] = c.Image()
	}

	if c := cfg.K8sControllerManagerConfig(); c != nil {
		images["kube-controller-manager"] = c.Image()
	}

	if c := cfg.K8sSchedulerConfig(); c != nil {
		images["kube-scheduler"] = c.Image()
	}

	for _, name := range staticPodComponents {
		if images[name] == "" {
			return rendered{}, fmt.Errorf("machine config has no image for %s", name)
		}

		r.staticPods = append(r.staticPods, StaticPod{Name: name, Image: images[name]})
	}

	r.manifests = bootstrapManifests(cfg, talosVersion)

	return r, nil
}

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

func kubeProxyObjects(image string) []map[string]any {
	labels := map[string]any{"k8s-app": "kube-proxy", "tier": "node"}

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
				"selector": map[string]any{"matchLabels": map[string]any{"k8s-app": "kube-proxy"}},
				"template": map[string]any{
					"metadata": map[string]any{"labels": labels},
					"spec": map[string]any{
						"serviceAccountName": "kube-proxy",
						"hostNetwork":        true,
						"tolerations":        []any{map[string]any{"operator": "Exists"}},
						"containers": []any{map[string]any{
							"name":    "kube-proxy",
							"image":   image,
							"command": []any{"/usr/local/bin/kube-proxy", "--cluster-cidr=10.244.0.0/16", "--hostname-override=$(NODE_NAME)"},
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

// staticPodObject is the pod Talos renders for a control-plane component, annotated with the config version so
// clients can wait for a configuration change to reach the pod.
func staticPodObject(node string, pod StaticPod, configVersion int) map[string]any {
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata": map[string]any{
			"name":      pod.Name,
			"namespace": "kube-system",
			"labels":    map[string]any{"k8s-app": pod.Name, "tier": "control-plane"},
			"annotations": map[string]any{
				constants.AnnotationStaticPodConfigVersion: strconv.Itoa(configVersion),
			},
		},
		"spec": map[string]any{
			"nodeName":    node,
			"hostNetwork": true,
			"containers": []any{map[string]any{
				"name":    pod.Name,
				"image":   pod.Image,
				"command": []any{"/usr/local/bin/" + pod.Name},
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
