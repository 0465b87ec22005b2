package talosemu_test

import (
	"strings"
	"testing"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	talosconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/stdpatches"
	"github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/internal/talosemu"
)

// patchConfig applies standard image patches to a node's active machine config, read through the COSI API like
// `talosctl upgrade-k8s` does.
func patchConfig(t *testing.T, c *client.Client, node string, patches ...func(talosconfig.Container) ([]byte, error)) []byte {
	t.Helper()

	active, err := safe.StateGetByID[*config.MachineConfig](client.WithNode(testContext(t), node), c.COSI, config.ActiveID)
	if err != nil {
		t.Fatalf("reading machine config of %s: %v", node, err)
	}

	var parsed []configpatcher.Patch

	for _, p := range patches {
		patch, err := stdpatches.PreparePatch(p(active.Container()))
		if err != nil {
			t.Fatal(err)
		}

		parsed = append(parsed, patch)
	}

	out, err := configpatcher.Apply(configpatcher.WithConfig(active.Provider()), parsed)
	if err != nil {
		t.Fatal(err)
	}

	data, err := out.Bytes()
	if err != nil {
		t.Fatal(err)
	}

	return data
}

func kubeProxyImage(t *testing.T, c *client.Client, node string) string {
	t.Helper()

	manifest, err := safe.StateGetByID[*k8s.Manifest](client.WithNode(testContext(t), node), c.COSI, "10-kube-proxy")
	if err != nil {
		t.Fatal(err)
	}

	for _, item := range manifest.TypedSpec().Items {
		if item.Object["kind"] != "DaemonSet" {
			continue
		}

		spec := item.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any) //nolint:forcetypeassert
		container := spec["containers"].([]any)[0].(map[string]any)                                        //nolint:forcetypeassert

		return container["image"].(string) //nolint:forcetypeassert
	}

	t.Fatal("no kube-proxy DaemonSet in the manifest")

	return ""
}

func kubeletImage(t *testing.T, c *client.Client, node string) string {
	t.Helper()

	spec, err := safe.StateGetByID[*k8s.KubeletSpec](client.WithNode(testContext(t), node), c.COSI, k8s.KubeletID)
	if err != nil {
		t.Fatal(err)
	}

	return spec.TypedSpec().Image
}

func TestApplyConfigurationRerenders(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1), talosemu.WithRebootDowntime(0))
	c := talosClient(t, fleet)
	ctx := testContext(t)

	const (
		cp            = "c1-cp-1"
		worker        = "c1-w-1"
		newKubeProxy  = "registry.k8s.io/kube-proxy:v1.35.0"
		newKubelet    = "ghcr.io/siderolabs/kubelet:v1.35.0"
		nextKubelet   = "ghcr.io/siderolabs/kubelet:v1.35.1"
		kubeProxyWant = "registry.k8s.io/kube-proxy:v" + talosemu.DefaultKubernetesVersion
	)

	if got := kubeProxyImage(t, c, cp); got != kubeProxyWant {
		t.Fatalf("kube-proxy image %s, want %s", got, kubeProxyWant)
	}

	// NO_REBOOT: the bootstrap manifests follow the kube-proxy image at once.
	data := patchConfig(t, c, cp, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeProxyImage(stdpatches.GuessVersionContractKubeProxy(cfg), newKubeProxy)
	})

	if _, err := c.ApplyConfiguration(client.WithNode(ctx, cp), &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_NO_REBOOT}); err != nil {
		t.Fatal(err)
	}

	if got := kubeProxyImage(t, c, cp); got != newKubeProxy {
		t.Fatalf("kube-proxy image after apply: %s, want %s", got, newKubeProxy)
	}

	// The kubelet spec follows too, and the journal records the mode.
	data = patchConfig(t, c, worker, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeletImage(stdpatches.GuessVersionContractKubelet(cfg), newKubelet)
	})

	if _, err := c.ApplyConfiguration(client.WithNode(ctx, worker), &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_AUTO}); err != nil {
		t.Fatal(err)
	}

	if got := kubeletImage(t, c, worker); got != newKubelet {
		t.Fatalf("kubelet image after apply: %s, want %s", got, newKubelet)
	}

	if _, err := fleet.Journal().Wait(ctx, func(e talosemu.Entry) bool {
		return e.Node == worker && e.Method == "/machine.MachineService/ApplyConfiguration" && e.Mode == "AUTO"
	}); err != nil {
		t.Fatal(err)
	}

	// STAGED: nothing changes until the next reboot.
	data = patchConfig(t, c, worker, func(cfg talosconfig.Container) ([]byte, error) {
		return stdpatches.WithKubeletImage(stdpatches.GuessVersionContractKubelet(cfg), nextKubelet)
	})

	if _, err := c.ApplyConfiguration(client.WithNode(ctx, worker), &machine.ApplyConfigurationRequest{Data: data, Mode: machine.ApplyConfigurationRequest_STAGED}); err != nil {
		t.Fatal(err)
	}

	if got := kubeletImage(t, c, worker); got != newKubelet {
		t.Fatalf("a staged config took effect before the reboot: %s", got)
	}

	if err := c.Reboot(client.WithNode(ctx, worker)); err != nil {
		t.Fatal(err)
	}

	waitEvent(ctx, t, fleet, worker, talosemu.EventRebootUp)

	if got := kubeletImage(t, c, worker); got != nextKubelet {
		t.Fatalf("staged config after the reboot: %s, want %s", got, nextKubelet)
	}

	// Bad input is refused with a clear error and changes nothing.
	for name, req := range map[string]*machine.ApplyConfigurationRequest{
		"garbage":         {Data: []byte("not: [a machine config"), Mode: machine.ApplyConfigurationRequest_NO_REBOOT},
		"no machine type": {Data: []byte("version: v1alpha1\nmachine: {}\ncluster: {}\n"), Mode: machine.ApplyConfigurationRequest_NO_REBOOT},
		"untagged kubelet": {Data: patchConfig(t, c, worker, func(cfg talosconfig.Container) ([]byte, error) {
			return stdpatches.WithKubeletImage(stdpatches.GuessVersionContractKubelet(cfg), "ghcr.io/siderolabs/kubelet")
		}), Mode: machine.ApplyConfigurationRequest_NO_REBOOT},
		"control plane role": {Data: patchConfig(t, c, cp), Mode: machine.ApplyConfigurationRequest_NO_REBOOT},
		"try mode":           {Data: patchConfig(t, c, worker), Mode: machine.ApplyConfigurationRequest_TRY},
	} {
		if _, err := c.ApplyConfiguration(client.WithNode(ctx, worker), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: want InvalidArgument, got %v", name, err)
		}
	}

	if got := kubeletImage(t, c, worker); got != nextKubelet {
		t.Fatalf("a refused config changed the kubelet image to %s", got)
	}
}

// TestApplyConfigurationRebootRules shows the emulator deciding per field, as Talos does, whether a change needs a
// reboot: a sysctl applies live; a machine.env change is refused by NO_REBOOT (dry run or not) with Talos' error,
// applied with a reboot by AUTO, and made by REBOOT once the node is back.
func TestApplyConfigurationRebootRules(t *testing.T) {
	t.Parallel()

	fleet := startFleet(t, talosemu.WithLite(), talosemu.WithControlPlanes(1), talosemu.WithWorkers(1), talosemu.WithRebootDowntime(0))
	c := talosClient(t, fleet)
	ctx := client.WithNode(testContext(t), "c1-w-1")

	patched := func(patch string) []byte {
		return patchConfig(t, c, "c1-w-1", func(talosconfig.Container) ([]byte, error) { return []byte(patch), nil })
	}
	apply := func(data []byte, mode machine.ApplyConfigurationRequest_Mode, dryRun bool) (*machine.ApplyConfigurationResponse, error) {
		return c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: data, Mode: mode, DryRun: dryRun})
	}
	node, err := fleet.Node("c1-w-1")
	if err != nil {
		t.Fatal(err)
	}

	reboots := func() int {
		n := 0

		for _, e := range fleet.Journal().Entries() {
			if talosemu.MatchEvent("c1-w-1", talosemu.EventRebootUp)(e) {
				n++
			}
		}

		return n
	}

	sysctl := patched("machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"\n")
	if _, err := apply(sysctl, machine.ApplyConfigurationRequest_NO_REBOOT, false); err != nil {
		t.Fatalf("a sysctl change needs no reboot: %v", err)
	}

	if got := node.Config().RawV1Alpha1().MachineConfig.MachineSysctls["net.core.somaxconn"]; got != "65535" || reboots() != 0 {
		t.Fatalf("sysctl applied live: got %q after %d reboots", got, reboots())
	}

	env := patched("machine:\n  env:\n    https_proxy: http://proxy.example:3128\n")
	for _, dryRun := range []bool{true, false} {
		if _, err := apply(env, machine.ApplyConfigurationRequest_NO_REBOOT, dryRun); status.Code(err) != codes.InvalidArgument ||
			!strings.Contains(err.Error(), "can't be applied in immediate mode") {
			t.Fatalf("NO_REBOOT of a machine.env change (dry run %v): want Talos' immediate-mode refusal, got %v", dryRun, err)
		}
	}

	resp, err := apply(env, machine.ApplyConfigurationRequest_AUTO, true)
	if err != nil || resp.GetMessages()[0].GetMode() != machine.ApplyConfigurationRequest_REBOOT {
		t.Fatalf("AUTO dry run of a machine.env change: want mode REBOOT, got %v, %v", resp, err)
	}

	if _, err = apply(env, machine.ApplyConfigurationRequest_REBOOT, false); err != nil {
		t.Fatal(err)
	}

	waitEvent(ctx, t, fleet, "c1-w-1", talosemu.EventRebootUp)

	if got := node.Config().RawV1Alpha1().MachineConfig.MachineEnv["https_proxy"]; got != "http://proxy.example:3128" {
		t.Fatalf("after the reboot the node runs https_proxy %q", got)
	}
}
