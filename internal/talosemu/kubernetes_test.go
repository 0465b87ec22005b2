package talosemu_test

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/go-kubernetes/kubernetes/upgrade"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/stdpatches"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/internal/talosemu"
)

const (
	applyMethod     = "/machine.MachineService/ApplyConfiguration"
	imagePullMethod = "/machine.MachineService/ImagePull"
	pullMethod      = "/machine.ImageService/Pull"
)

func TestParsePullFault(t *testing.T) {
	t.Parallel()

	const image = "ghcr.io/siderolabs/kubelet:v1.36.2"

	nf, err := talosemu.ParseNodeFault("c1-w-1=pull-fail:" + image)
	if err != nil || nf != (talosemu.NodeFault{Node: "c1-w-1", Fault: talosemu.FaultPullFail, Image: image}) {
		t.Fatalf("got %+v, %v", nf, err)
	}

	nf, err = talosemu.ParseNodeFault("c1-w-1=pull-fail:30s")
	if err != nil || nf != (talosemu.NodeFault{Node: "c1-w-1", Fault: talosemu.FaultPullFail, For: 30e9}) {
		t.Fatalf("got %+v, %v", nf, err)
	}

	for _, bad := range []string{"c1-w-1=pull-fail:", "c1-w-1=rollback:" + image} {
		if _, err := talosemu.ParseNodeFault(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

// pullCRI pre-pulls a control-plane image the way talosctl upgrade-k8s does: the legacy MachineService.ImagePull
// into the CRI namespace.
func pullCRI(ctx context.Context, c *client.Client, node, image string) error {
	_, err := c.MachineClient.ImagePull(client.WithNode(ctx, node), &machine.ImagePullRequest{Namespace: common.ContainerdNamespace_NS_CRI, Reference: image})

	return err
}

// pullSystem pre-pulls a kubelet image through ImageService into the system namespace.
func pullSystem(ctx context.Context, c *client.Client, node, image string) error {
	stream, err := c.ImageClient.Pull(client.WithNode(ctx, node), &machine.ImageServicePullRequest{
		Containerd: &common.ContainerdInstance{Driver: common.ContainerDriver_CONTAINERD, Namespace: common.ContainerdNamespace_NS_SYSTEM},
		ImageRef:   image,
	})
	if err != nil {
		return err
	}

	for {
		if _, err = stream.Recv(); err != nil {
			if err == io.EOF { //nolint:errorlint // the stream returns io.EOF itself
				return nil
			}

			return err
		}
	}
}

// TestImagePullsAndPullFaults pre-pulls Kubernetes images into both containerd namespaces, with a pull-fail fault on
// one image of one node that fails only that pull, naming the image, until the test clears it.
func TestImagePullsAndPullFaults(t *testing.T) {
	t.Parallel()

	const (
		cp         = "c1-cp-1"
		worker     = "c1-w-1"
		apiServer  = "registry.k8s.io/kube-apiserver:v1.36.2"
		kubelet    = "ghcr.io/siderolabs/kubelet:v1.36.2"
		oldKubelet = "ghcr.io/siderolabs/kubelet:v1.35.2"
	)

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1),
		talosemu.WithTalosVersion(newVersion),
		talosemu.WithNodeFault(talosemu.NodeFault{Node: worker, Fault: talosemu.FaultPullFail, Image: kubelet}))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	if err := pullCRI(ctx, c, cp, apiServer); err != nil {
		t.Fatalf("pulling %s: %v", apiServer, err)
	}

	if err := pullSystem(ctx, c, cp, kubelet); err != nil {
		t.Fatalf("pulling %s on %s: %v", kubelet, cp, err)
	}

	err := pullSystem(ctx, c, worker, kubelet)
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), kubelet) {
		t.Fatalf("pull of the faulted image: want NotFound naming %s, got %v", kubelet, err)
	}

	if err = pullSystem(ctx, c, worker, oldKubelet); err != nil {
		t.Fatalf("a pull of another image failed: %v", err)
	}

	if err = fleet.ClearNodeFault(ctx, talosemu.NodeFault{Node: worker, Fault: talosemu.FaultPullFail, Image: kubelet}); err != nil {
		t.Fatal(err)
	}

	if err = pullSystem(ctx, c, worker, kubelet); err != nil {
		t.Fatalf("pull after clearing the fault: %v", err)
	}

	// Each pull is journaled with its node, namespace and image, in order.
	var pulls []string

	for _, e := range fleet.Journal().Entries() {
		if e.Method == imagePullMethod || e.Method == pullMethod {
			pulls = append(pulls, e.Node+" "+e.Namespace+" "+e.Image)
		}
	}

	want := []string{
		cp + " NS_CRI " + apiServer,
		cp + " NS_SYSTEM " + kubelet,
		worker + " NS_SYSTEM " + kubelet,
		worker + " NS_SYSTEM " + oldKubelet,
		worker + " NS_SYSTEM " + kubelet,
	}
	if !slices.Equal(pulls, want) {
		t.Fatalf("journaled pulls:\n%s\nwant:\n%s", strings.Join(pulls, "\n"), strings.Join(want, "\n"))
	}

	// The images land in the namespace they were pulled into.
	stream, err := c.ImageClient.List(client.WithNode(ctx, cp), &machine.ImageServiceListRequest{
		Containerd: &common.ContainerdInstance{Namespace: common.ContainerdNamespace_NS_CRI},
	})
	if err != nil {
		t.Fatal(err)
	}

	var listed []string

	for {
		msg, err := stream.Recv()
		if err != nil {
			break
		}

		listed = append(listed, msg.GetName())
	}

	if !slices.Equal(listed, []string{apiServer}) {
		t.Fatalf("CRI images of %s: %v, want [%s]", cp, listed, apiServer)
	}
}

// applyPatched patches a node's active machine config the way talosctl upgrade-k8s does (COSI get, machinery
// patches, encode) and applies it with NO_REBOOT.
func applyPatched(t *testing.T, c *client.Client, node string, patches ...func(talosconfig.Container) ([]byte, error)) {
	t.Helper()

	data := patchConfig(t, c, node, patches...)

	if _, err := c.ApplyConfiguration(client.WithNode(testContext(t), node), &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_NO_REBOOT}); err != nil {
		t.Fatalf("applying to %s: %v", node, err)
	}
}

func staticPod(t *testing.T, c *client.Client, node, component string) (image, configVersion string, command []string) {
	t.Helper()

	pod, err := safe.StateGetByID[*k8s.StaticPod](client.WithNode(testContext(t), node), c.COSI, component)
	if err != nil {
		t.Fatalf("static pod %s of %s: %v", component, node, err)
	}

	object := pod.TypedSpec().Pod
	annotations := object["metadata"].(map[string]any)["annotations"].(map[string]any)     //nolint:forcetypeassert
	container := object["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any) //nolint:forcetypeassert
	for _, arg := range container["command"].([]any) {                                     //nolint:forcetypeassert
		command = append(command, arg.(string)) //nolint:forcetypeassert
	}

	return container["image"].(string), annotations[constants.AnnotationStaticPodConfigVersion].(string), command //nolint:forcetypeassert
}

func resourceVersion(t *testing.T, c *client.Client, node string, md resource.Pointer) string {
	t.Helper()

	r, err := c.COSI.Get(client.WithNode(testContext(t), node), md)
	if err != nil {
		t.Fatalf("%s of %s: %v", md, node, err)
	}

	return r.Metadata().Version().String()
}

// lastApply is the last ApplyConfiguration the journal holds for node.
func lastApply(t *testing.T, fleet *talosemu.Fleet, node string) talosemu.Entry {
	t.Helper()

	entries := fleet.Journal().Entries()
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].Node == node && entries[i].Method == applyMethod {
			return entries[i]
		}
	}

	t.Fatalf("no ApplyConfiguration to %s in the journal", node)

	return talosemu.Entry{}
}

// TestStaticPodImageUpgrade upgrades a control plane's kube-apiserver with stdpatches on both config formats (a
// v1alpha1 config of Talos 1.12 and the multi-document one of 1.14): the MachineConfig version increments, the
// component's config resources and static pod follow the image with a new config version while the others keep
// theirs, the journal names the image change, and the same config sent again changes nothing.
func TestStaticPodImageUpgrade(t *testing.T) {
	t.Parallel()

	for _, version := range []string{oldVersion, newVersion} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()

			const (
				cp       = "c1-cp-1"
				newImage = "registry.k8s.io/kube-apiserver:v1.36.2"
			)

			fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(0),
				talosemu.WithTalosVersion(version), talosemu.WithKubernetesVersion("1.35.2"))
			c := talosClient(t, fleet)

			oldImage, oldVersion, _ := staticPod(t, c, cp, k8s.APIServerID)
			_, schedulerVersion, _ := staticPod(t, c, cp, k8s.SchedulerID)
			machineConfigVersion := resourceVersion(t, c, cp, config.NewMachineConfig(nil).Metadata())

			if oldImage != "registry.k8s.io/kube-apiserver:v1.35.2" {
				t.Fatalf("kube-apiserver image at start: %s", oldImage)
			}

			configIDs := []string{k8s.APIServerConfigID}
			if version == newVersion {
				configIDs = append(configIDs, k8s.FinalAPIServerConfigID) // the one Talos 1.14 renders the pod from
			}

			apply := func() {
				applyPatched(t, c, cp, func(cfg talosconfig.Container) ([]byte, error) {
					return stdpatches.WithKubeAPIServerImage(stdpatches.GuessVersionContractKubeAPIServer(cfg), newImage)
				})
			}

			apply()

			image, configVersion, _ := staticPod(t, c, cp, k8s.APIServerID)
			if image != newImage || configVersion == oldVersion {
				t.Fatalf("kube-apiserver static pod: image %s, config version %s (was %s)", image, configVersion, oldVersion)
			}

			for _, id := range configIDs {
				cfg, err := safe.StateGetByID[*k8s.APIServerConfig](client.WithNode(testContext(t), cp), c.COSI, id)
				if err != nil {
					t.Fatal(err)
				}

				if cfg.TypedSpec().Image != newImage {
					t.Fatalf("%s image %s, want %s", id, cfg.TypedSpec().Image, newImage)
				}

				if id == configIDs[len(configIDs)-1] && cfg.Metadata().Version().String() != configVersion {
					t.Fatalf("static pod config version %s, %s version %s", configVersion, id, cfg.Metadata().Version())
				}
			}

			if _, v, _ := staticPod(t, c, cp, k8s.SchedulerID); v != schedulerVersion {
				t.Fatalf("kube-scheduler config version changed from %s to %s with the kube-apiserver image", schedulerVersion, v)
			}

			if v := resourceVersion(t, c, cp, config.NewMachineConfig(nil).Metadata()); v == machineConfigVersion {
				t.Fatalf("MachineConfig version stayed %s", v)
			}

			entry := lastApply(t, fleet, cp)
			if entry.Mode != "NO_REBOOT" || !slices.Equal(entry.Changes, []talosemu.ImageChange{{Component: k8s.APIServerID, From: oldImage, To: newImage}}) {
				t.Fatalf("journaled apply: mode %s, changes %+v", entry.Mode, entry.Changes)
			}

			// Sent again, the config changes no image and restarts nothing.
			apply()

			if entry := lastApply(t, fleet, cp); len(entry.Changes) != 0 {
				t.Fatalf("the second apply changed %+v", entry.Changes)
			}

			if _, v, _ := staticPod(t, c, cp, k8s.APIServerID); v != configVersion {
				t.Fatalf("the same config again moved the config version from %s to %s", configVersion, v)
			}
		})
	}
}

// TestKubeletRestartOnImageChange applies a new kubelet image: the kubelet service is destroyed and comes back
// running and healthy, and the KubeletSpec carries the new image.
func TestKubeletRestartOnImageChange(t *testing.T) {
	t.Parallel()

	const (
		worker   = "c1-w-1"
		newImage = "ghcr.io/siderolabs/kubelet:v1.36.2"
	)

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1), talosemu.WithKubernetesVersion("1.35.2"))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	events := make(chan state.Event)
	if err := c.COSI.Watch(client.WithNode(ctx, worker), v1alpha1.NewService("kubelet").Metadata(), events); err != nil {
		t.Fatal(err)
	}

	if e := <-events; e.Type != state.Created || !e.Resource.(*v1alpha1.Service).TypedSpec().Healthy { //nolint:forcetypeassert
		t.Fatalf("kubelet service before the change: %v", e)
	}

	applyPatched(t, c, worker, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeletImage(stdpatches.GuessVersionContractKubelet(cfg), newImage)
	})

	for _, want := range []state.EventType{state.Destroyed, state.Created} {
		select {
		case e := <-events:
			if e.Type != want {
				t.Fatalf("kubelet service event %v, want %v", e.Type, want)
			}

			if spec := e.Resource.(*v1alpha1.Service).TypedSpec(); want == state.Created && (!spec.Running || !spec.Healthy) { //nolint:forcetypeassert
				t.Fatalf("kubelet came back not running and healthy: %+v", spec)
			}
		case <-ctx.Done():
			t.Fatalf("waiting for the kubelet service to %v: %v", want, ctx.Err())
		}
	}

	if got := kubeletImage(t, c, worker); got != newImage {
		t.Fatalf("kubelet spec image %s, want %s", got, newImage)
	}

	if entry := lastApply(t, fleet, worker); len(entry.Changes) != 1 || entry.Changes[0].Component != "kubelet" || entry.Changes[0].To != newImage {
		t.Fatalf("journaled changes %+v", entry.Changes)
	}
}

// TestPreChecksSeeConfigPatches sets a feature gate that Kubernetes 1.36 removes on kube-apiserver and a flag that
// 1.37 removes on a kubelet, through config patches, and runs go-kubernetes' pre-checks over the Talos API: they
// name both.
func TestPreChecksSeeConfigPatches(t *testing.T) {
	t.Parallel()

	const (
		cp     = "c1-cp-1"
		worker = "c1-w-1"
	)

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1), talosemu.WithKubernetesVersion("1.35.2"))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	patch := func(yaml string) func(talosconfig.Container) ([]byte, error) {
		return func(talosconfig.Container) ([]byte, error) { return []byte(yaml), nil }
	}

	applyPatched(t, c, cp, patch("cluster:\n  apiServer:\n    extraArgs:\n      feature-gates: HonorPVReclaimPolicy=true\n"))
	applyPatched(t, c, worker, patch("machine:\n  kubelet:\n    extraArgs:\n      boot-id-file: /etc/boot-id\n"))

	if _, _, command := staticPod(t, c, cp, k8s.APIServerID); !slices.Contains(command, "--feature-gates=HonorPVReclaimPolicy=true") {
		t.Fatalf("kube-apiserver command %v has no feature gate", command)
	}

	run := func(from, to string) error {
		path, err := upgrade.NewPath(from, to)
		if err != nil {
			t.Fatal(err)
		}

		checks, err := upgrade.NewChecks(path, c.COSI, nil, []string{cp}, []string{worker}, t.Logf)
		if err != nil {
			t.Fatal(err)
		}

		return checks.Run(ctx)
	}

	if err := run("1.35.2", "1.36.2"); err == nil || !strings.Contains(err.Error(), "HonorPVReclaimPolicy") || !strings.Contains(err.Error(), cp) {
		t.Fatalf("1.35 -> 1.36 checks: want the feature gate on %s named, got %v", cp, err)
	}

	if err := run("1.36.2", "1.37.2"); err == nil || !strings.Contains(err.Error(), "boot-id-file") || !strings.Contains(err.Error(), worker) {
		t.Fatalf("1.36 -> 1.37 checks: want the kubelet flag on %s named, got %v", worker, err)
	}
}
