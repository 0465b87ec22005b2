package controllers_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/talos"
)

// fakeKubernetes is the Kubernetes version every fake node starts on, the clusters' kubernetesVersion in the tests.
const fakeKubernetes = "1.33.7"

// fakeK8s is the Kubernetes side of one fake node, as its machine config and the API server show it: the image of
// each component, the config version every ApplyConfiguration raises (which the mirror pods carry at once), and a
// pull fault per image.
type fakeK8s struct {
	images        map[string]string
	configVersion int
	pullFails     map[string]bool
}

func newFakeK8s(cp bool) *fakeK8s {
	k := &fakeK8s{images: map[string]string{
		talos.Kubelet:   "ghcr.io/siderolabs/kubelet:v" + fakeKubernetes,
		talos.KubeProxy: "registry.k8s.io/kube-proxy:v" + fakeKubernetes,
	}, pullFails: map[string]bool{}}

	if cp {
		for _, c := range []string{talos.KubeAPIServer, talos.KubeControllerManager, talos.KubeScheduler} {
			k.images[c] = "registry.k8s.io/" + c + ":v" + fakeKubernetes
		}
	}

	return k
}

// k8sOf is the node's Kubernetes side, made on first use; the fleet's lock is held.
func (n *fakeNode) k8sOf() *fakeK8s {
	if n.k8s == nil {
		n.k8s = newFakeK8s(n.cp)
	}

	return n.k8s
}

func (n *fakeNode) kubeletVersion() string {
	return "v" + kuberollout.ImageVersion(n.k8sOf().images[talos.Kubelet])
}

func (t fakeTalos) KubernetesImages(_ context.Context, node string) (out map[string]string, err error) {
	err = t.do(node, "KubernetesImages", "", func(n *fakeNode) error {
		out = map[string]string{}
		for k, v := range n.k8sOf().images {
			out[k] = v
		}

		return nil
	})

	return out, err
}

func (t fakeTalos) SetKubernetesImage(_ context.Context, node, component, image string) (changed bool, err error) {
	err = t.do(node, "ApplyConfiguration", component+"="+image, func(n *fakeNode) error {
		k := n.k8sOf()
		changed = k.images[component] != image
		k.images[component] = image
		k.configVersion++

		return nil
	})

	return changed, err
}

func (t fakeTalos) PullKubernetesImage(_ context.Context, node, image string, _ bool) error {
	return t.do(node, "ImagePull", image, func(n *fakeNode) error {
		if n.k8sOf().pullFails[image] {
			return &talos.Error{Node: node, Op: "pulling " + image, Kind: talos.KindFailed, Err: errors.New("not found")}
		}

		return nil
	})
}

func (t fakeTalos) StaticPod(_ context.Context, node, component string) (image, version string, err error) {
	err = t.do(node, "StaticPod", component, func(n *fakeNode) error {
		image, version = n.k8sOf().images[component], strconv.Itoa(n.k8sOf().configVersion)

		return nil
	})

	return image, version, err
}

func (t fakeTalos) KubeProxyDaemonSet(_ context.Context, node string) (out []byte, err error) {
	err = t.do(node, "KubeProxyDaemonSet", "", func(n *fakeNode) error {
		out, err = json.Marshal(map[string]any{"kind": "DaemonSet", "image": n.k8sOf().images[talos.KubeProxy]})

		return err
	})

	return out, err
}

func (t fakeTalos) KubernetesChecks(_ context.Context, _ []byte, from, to string, _, _ []string) ([]talos.Finding, error) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()

	t.f.calls = append(t.f.calls, fakeCall{"", "KubernetesChecks", from + "->" + to})

	return t.f.findings, nil
}

func (k fakeKube) MirrorPod(_ context.Context, node, component string) (kube.MirrorPod, error) {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()

	n := k.f.nodes[node]

	return kube.MirrorPod{Image: n.k8sOf().images[component], ConfigVersion: strconv.Itoa(n.k8sOf().configVersion), Ready: n.stage == "running"}, nil
}

func (k fakeKube) ApplyDaemonSet(_ context.Context, object []byte) error {
	var ds struct{ Image string }
	if err := json.Unmarshal(object, &ds); err != nil {
		return err
	}

	k.f.mu.Lock()
	defer k.f.mu.Unlock()

	k.f.calls = append(k.f.calls, fakeCall{"", "ApplyDaemonSet", ds.Image})
	k.f.kubeProxy = ds.Image

	return nil
}

func (k fakeKube) DaemonSetRollout(context.Context, string, string) (kube.Rollout, error) {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()

	n := int32(len(k.f.nodes))

	return kube.Rollout{Image: k.f.kubeProxy, Desired: n, Updated: n, Available: n, Observed: true}, nil
}

// k8sCalls are the fleet's calls of the Kubernetes upgrade, as "Method node arg".
func (f *fakeFleet) k8sCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()

	var out []string

	for _, c := range f.calls {
		switch c.Method {
		case "ImagePull", "ApplyConfiguration", "ApplyDaemonSet", "KubernetesChecks":
			out = append(out, strings.Join(strings.Fields(c.Method+" "+c.Node+" "+c.Arg), " "))
		}
	}

	return out
}
