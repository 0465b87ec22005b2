package realkube_test

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/stdpatches"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// eventually polls cond until it holds, failing the test at the deadline.
func eventually(ctx context.Context, t *testing.T, what string, cond func(context.Context) (bool, error)) {
	t.Helper()

	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func nodeState(ctx context.Context, clientset kubernetes.Interface, name string) (version string, ready bool, err error) {
	node, err := clientset.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", false, err
	}

	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}

	return node.Status.NodeInfo.KubeletVersion, ready, nil
}

// TestFleetRunsKubernetes runs a cluster with a real kube-apiserver on its etcd members: the kubeconfig the fleet
// hands out reaches it, nodes register with the kubelet version of their machine config, follow a kubelet image
// change applied through the Talos API, and are NotReady while they reboot.
func TestFleetRunsKubernetes(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	b := startBed(ctx, t, talosemu.WithRebootDowntime(2*time.Second))
	fleet, talos, clientset := b.fleet, b.talos, b.clientset

	kubeconfig, err := os.ReadFile(fleet.KubeconfigPath("c1"))
	if err != nil {
		t.Fatal(err)
	}

	fromAPI, err := talos.Kubeconfig(client.WithNode(ctx, "c1-cp-1"))
	if err != nil || !bytes.Equal(fromAPI, kubeconfig) {
		t.Fatalf("kubeconfig through the Talos API differs from the file (err %v)", err)
	}

	want := "v" + talosemu.DefaultKubernetesVersion

	for _, name := range []string{"c1-cp-1", "c1-w-1"} {
		eventually(ctx, t, name+" registers ready with "+want, func(ctx context.Context) (bool, error) {
			version, ready, err := nodeState(ctx, clientset, name)

			return err == nil && ready && version == want, nil
		})
	}

	// A kubelet image change through ApplyConfiguration reaches the Node.
	const node = "c1-w-1"

	emuNode, err := fleet.Node(node)
	if err != nil {
		t.Fatal(err)
	}

	applyPatch(ctx, t, talos, node, emuNode.Config(), func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeletImage(stdpatches.GuessVersionContractKubelet(cfg), "ghcr.io/siderolabs/kubelet:v1.35.0")
	})

	eventually(ctx, t, node+" reports kubelet v1.35.0", func(ctx context.Context) (bool, error) {
		version, _, err := nodeState(ctx, clientset, node)

		return err == nil && version == "v1.35.0", nil
	})

	// A reboot takes the Node NotReady, and back.
	if err = talos.Reboot(client.WithNode(ctx, node)); err != nil {
		t.Fatal(err)
	}

	eventually(ctx, t, node+" goes NotReady while rebooting", func(ctx context.Context) (bool, error) {
		_, ready, err := nodeState(ctx, clientset, node)

		return err == nil && !ready, nil
	})

	eventually(ctx, t, node+" is Ready again", func(ctx context.Context) (bool, error) {
		_, ready, err := nodeState(ctx, clientset, node)

		return err == nil && ready && emuNode.Up(), nil
	})
}
