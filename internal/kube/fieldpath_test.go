package kube

import "testing"

func TestIndexedPath(t *testing.T) {
	live := map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"containers": []any{
			map[string]any{"name": "sidecar"},
			map[string]any{"name": "kube-proxy", "ports": []any{
				map[string]any{"containerPort": int64(53), "protocol": "UDP"},
				map[string]any{"containerPort": int64(53), "protocol": "TCP"},
			}},
		},
		"finalizers": []any{"a", "b.c"},
	}}}}

	for path, want := range map[string]string{
		`.spec.template.spec.containers[name="kube-proxy"].args`:                                   "spec.template.spec.containers[1].args",
		`.spec.template.spec.containers[name="kube-proxy"].ports[containerPort=53,protocol="TCP"]`: "spec.template.spec.containers[1].ports[1]",
		`.spec.template.spec.finalizers[="b.c"]`:                                                   "spec.template.spec.finalizers[1]",
		`.spec.template.spec.containers[name="gone"].image`:                                        `spec.template.spec.containers[name="gone"].image`,
		`.metadata.labels.k8s-app`:                                                                 "metadata.labels.k8s-app",
	} {
		if got := indexedPath(live, path); got != want {
			t.Errorf("indexedPath(%s) = %s, want %s", path, got, want)
		}
	}
}
