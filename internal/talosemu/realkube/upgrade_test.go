package realkube_test

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/stdpatches"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/upshift-io/upshift/internal/kubeemu"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/internal/talosemu/realkube"
)

const (
	fromVersion = "1.35.2"
	toVersion   = "1.36.2"
	// restart is how long a restarted static pod stays not Ready and the API endpoint down for a kube-apiserver:
	// long enough that the test sees both.
	restart = 2 * time.Second
)

// bed is a fleet of one cluster with one control plane and one worker, with its Talos and Kubernetes clients.
type bed struct {
	fleet     *talosemu.Fleet
	talos     *client.Client
	clientset kubernetes.Interface
}

// startBed starts a bed's fleet with opts and real Kubernetes; it closes at the end of the test.
func startBed(ctx context.Context, t *testing.T, opts ...talosemu.Option) bed {
	t.Helper()

	fleet, err := talosemu.New(ctx, append([]talosemu.Option{
		talosemu.WithStateDir(t.TempDir()), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1),
		talosemu.WithKubernetes(realkube.Runner{KubeletOptions: []kubeemu.KubeletOption{kubeemu.WithHeartbeatInterval(time.Second)}}),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		if err := fleet.Close(); err != nil {
			t.Errorf("closing fleet: %v", err)
		}
	})

	talos, err := client.New(ctx, client.WithConfigFromFile(fleet.TalosconfigPath()))
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { talos.Close() }) //nolint:errcheck

	kubeconfig, err := os.ReadFile(fleet.KubeconfigPath("c1"))
	if err != nil {
		t.Fatal(err)
	}

	restConfig, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}

	clientset, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		t.Fatal(err)
	}

	return bed{fleet: fleet, talos: talos, clientset: clientset}
}

// apply patches a node's machine config like talosctl upgrade-k8s, read through COSI, and applies it.
func (b bed) apply(ctx context.Context, t *testing.T, node string, patch func(talosconfig.Container) ([]byte, error)) {
	t.Helper()

	active, err := safe.StateGetByID[*config.MachineConfig](client.WithNode(ctx, node), b.talos.COSI, config.ActiveID)
	if err != nil {
		t.Fatal(err)
	}

	applyPatch(ctx, t, b.talos, node, active.Provider(), patch)
}

// applyPatch applies a machinery standard patch to cfg and sends the result to node with NO_REBOOT.
func applyPatch(ctx context.Context, t *testing.T, talos *client.Client, node string, cfg talosconfig.Provider,
	patch func(talosconfig.Container) ([]byte, error),
) {
	t.Helper()

	p, err := stdpatches.PreparePatch(patch(cfg))
	if err != nil {
		t.Fatal(err)
	}

	patched, err := configpatcher.Apply(configpatcher.WithConfig(cfg), []configpatcher.Patch{p})
	if err != nil {
		t.Fatal(err)
	}

	data, err := patched.Bytes()
	if err != nil {
		t.Fatal(err)
	}

	if _, err = talos.ApplyConfiguration(client.WithNode(ctx, node), &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_NO_REBOOT}); err != nil {
		t.Fatalf("applying to %s: %v", node, err)
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}

	return false
}

// mirrorPodAt reports whether a mirror pod runs image with a config version of at least version, and is Ready.
func mirrorPodAt(pod *corev1.Pod, image string, version int) bool {
	v, err := strconv.Atoi(pod.Annotations[constants.AnnotationStaticPodConfigVersion])

	return err == nil && v >= version && pod.Spec.Containers[0].Image == image && podReady(pod)
}

// TestKubernetesUpgradeSteps runs every step of a Kubernetes upgrade from 1.35 to 1.36 the way the engine does,
// through the real Talos API and the real kube-apiserver, and checks what Talos would show: a changed static pod
// comes back with the new image and config version, not Ready while it restarts; a kube-apiserver restart cuts
// the cluster's clients off for the restart time; a kubelet comes back with the new version; a kube-proxy
// DaemonSet update rolls out to every node.
func TestKubernetesUpgradeSteps(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	const (
		cp     = "c1-cp-1"
		worker = "c1-w-1"
	)

	b := startBed(ctx, t, talosemu.WithTalosVersion("1.14.1"), talosemu.WithKubernetesVersion(fromVersion), talosemu.WithStaticPodRestart(restart))
	pods := b.clientset.CoreV1().Pods("kube-system")

	// At start: mirror pods, Nodes and the kube-proxy DaemonSet are on fromVersion.
	for _, component := range []string{k8s.APIServerID, k8s.ControllerManagerID, k8s.SchedulerID} {
		eventually(ctx, t, component+" mirror pod on "+fromVersion, func(ctx context.Context) (bool, error) {
			pod, err := pods.Get(ctx, component+"-"+cp, metav1.GetOptions{})

			return err == nil && mirrorPodAt(pod, "registry.k8s.io/"+component+":v"+fromVersion, 1), nil
		})
	}

	waitKubeProxyRollout(ctx, t, b.clientset, "registry.k8s.io/kube-proxy:v"+fromVersion, 2)

	// kube-controller-manager: the mirror pod is replaced, not Ready first, then Ready with the new config version.
	cmImage := "registry.k8s.io/kube-controller-manager:v" + toVersion

	cmWatch, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", k8s.ControllerManagerID+"-"+cp).String()})
	if err != nil {
		t.Fatal(err)
	}

	defer cmWatch.Stop()

	b.apply(ctx, t, cp, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeControllerManagerImage(stdpatches.GuessVersionContractKubeControllerManager(cfg), cmImage)
	})

	cmConfig, err := safe.StateGetByID[*k8s.ControllerManagerConfig](client.WithNode(ctx, cp), b.talos.COSI, k8s.FinalControllerManagerConfigID)
	if err != nil {
		t.Fatal(err)
	}

	cmVersion := int(cmConfig.Metadata().Version().Value())
	sawNotReady := false

	for done := false; !done; {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for the kube-controller-manager mirror pod on %s: %v", cmImage, ctx.Err())
		case e, ok := <-cmWatch.ResultChan():
			if !ok {
				t.Fatal("the watch of the kube-controller-manager mirror pod ended")
			}

			pod, isPod := e.Object.(*corev1.Pod)
			if !isPod || e.Type == watch.Deleted || pod.Spec.Containers[0].Image != cmImage {
				continue
			}

			sawNotReady = sawNotReady || !podReady(pod)

			if done = mirrorPodAt(pod, cmImage, cmVersion); done {
				// The creation time is truncated to the second, so this bound holds however late the event came.
				if started := time.Since(pod.CreationTimestamp.Time); started < restart {
					t.Fatalf("the restarted kube-controller-manager mirror pod was Ready %s after its creation, want at least %s", started, restart)
				}
			}
		}
	}

	if !sawNotReady {
		t.Fatal("the restarted kube-controller-manager mirror pod was never reported not Ready")
	}

	// kube-apiserver: the cluster's endpoint goes down (a watch through it is cut) for the restart time.
	apiImage := "registry.k8s.io/kube-apiserver:v" + toVersion

	nodeWatch, err := b.clientset.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}

	defer nodeWatch.Stop()

	b.apply(ctx, t, cp, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeAPIServerImage(stdpatches.GuessVersionContractKubeAPIServer(cfg), apiImage)
	})

	down, err := b.fleet.Journal().Wait(ctx, talosemu.MatchEvent(cp, talosemu.EventAPIServerDown))
	if err != nil {
		t.Fatal(err)
	}

	for cut := false; !cut; {
		select {
		case <-ctx.Done():
			t.Fatalf("a watch through the API endpoint survived the kube-apiserver restart: %v", ctx.Err())
		case _, ok := <-nodeWatch.ResultChan():
			cut = !ok
		}
	}

	up, err := b.fleet.Journal().Wait(ctx, talosemu.MatchEvent(cp, talosemu.EventAPIServerUp))
	if err != nil {
		t.Fatal(err)
	}

	if outage := up.Time.Sub(down.Time); outage < restart {
		t.Fatalf("the API endpoint was down for %s, want at least %s", outage, restart)
	}

	apiConfig, err := safe.StateGetByID[*k8s.APIServerConfig](client.WithNode(ctx, cp), b.talos.COSI, k8s.FinalAPIServerConfigID)
	if err != nil {
		t.Fatal(err)
	}

	eventually(ctx, t, "kube-apiserver mirror pod on "+apiImage, func(ctx context.Context) (bool, error) {
		pod, err := pods.Get(ctx, k8s.APIServerID+"-"+cp, metav1.GetOptions{})

		return err == nil && mirrorPodAt(pod, apiImage, int(apiConfig.Metadata().Version().Value())), nil
	})

	// kubelet: the Node reports the version of the new image, and Ready.
	b.apply(ctx, t, worker, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeletImage(stdpatches.GuessVersionContractKubelet(cfg), "ghcr.io/siderolabs/kubelet:v"+toVersion)
	})

	eventually(ctx, t, worker+" reports kubelet v"+toVersion, func(ctx context.Context) (bool, error) {
		version, ready, err := nodeState(ctx, b.clientset, worker)

		return err == nil && ready && version == "v"+toVersion, nil
	})

	// kube-proxy: the re-rendered manifest carries the new image; applying its DaemonSet rolls it out.
	proxyImage := "registry.k8s.io/kube-proxy:v" + toVersion

	b.apply(ctx, t, cp, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeProxyImage(stdpatches.GuessVersionContractKubeProxy(cfg), proxyImage)
	})

	manifest, err := safe.StateGetByID[*k8s.Manifest](client.WithNode(ctx, cp), b.talos.COSI, "10-kube-proxy")
	if err != nil {
		t.Fatal(err)
	}

	applied := time.Now()

	for _, item := range manifest.TypedSpec().Items {
		if item.Object["kind"] != "DaemonSet" {
			continue
		}

		data, err := json.Marshal(item.Object)
		if err != nil {
			t.Fatal(err)
		}

		force := true
		if _, err = b.clientset.AppsV1().DaemonSets("kube-system").Patch(ctx, "kube-proxy", types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: "talos", Force: &force}); err != nil {
			t.Fatalf("applying the kube-proxy DaemonSet: %v", err)
		}
	}

	waitKubeProxyRollout(ctx, t, b.clientset, proxyImage, 2)

	// kube-proxy exits on SIGTERM: replacing it does not wait out its grace period (30 s) on every node.
	if took := time.Since(applied); took >= 30*time.Second {
		t.Fatalf("the kube-proxy rollout over 2 nodes took %s, as long as a grace period per node", took)
	}
}

// waitKubeProxyRollout waits until the kube-proxy DaemonSet runs image on every one of nodes: its status shows
// the rollout complete (updated = desired = available) for its current generation, and each of its pods runs image
// and is Ready.
func waitKubeProxyRollout(ctx context.Context, t *testing.T, clientset kubernetes.Interface, image string, nodes int32) {
	t.Helper()

	eventually(ctx, t, "kube-proxy rollout of "+image, func(ctx context.Context) (bool, error) {
		ds, err := clientset.AppsV1().DaemonSets("kube-system").Get(ctx, "kube-proxy", metav1.GetOptions{})
		if err != nil {
			return false, nil //nolint:nilerr // not created yet, or the endpoint is restarting
		}

		s := ds.Status
		if ds.Spec.Template.Spec.Containers[0].Image != image || s.ObservedGeneration < ds.Generation ||
			s.DesiredNumberScheduled != nodes || s.UpdatedNumberScheduled != nodes || s.NumberAvailable != nodes {
			return false, nil
		}

		list, err := clientset.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
		if err != nil || int32(len(list.Items)) != nodes {
			return false, nil //nolint:nilerr // retried
		}

		for _, pod := range list.Items {
			if pod.Spec.Containers[0].Image != image || !podReady(&pod) || pod.DeletionTimestamp != nil {
				return false, nil
			}
		}

		return true, nil
	})
}
