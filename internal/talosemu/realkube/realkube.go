// Package realkube runs the Kubernetes half of emulated Talos clusters with internal/kubeemu: a real kube-apiserver,
// kube-controller-manager and kube-scheduler on each cluster's etcd members, and one emulated kubelet per node.
//
// It is a separate package so that talosemu itself (and lite fleets) do not depend on client-go and the Kubernetes
// binaries.
package realkube

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/kubeemu"
	"github.com/upshift-io/upshift/internal/talosemu"
)

// Runner starts real Kubernetes control planes for an emulated fleet (talosemu.WithKubernetes).
type Runner struct {
	// BinDir is where kube-apiserver and friends are; empty means $UPSHIFT_KUBE_BIN_DIR.
	BinDir string
	// KubeletOptions tune the emulated kubelets (e.g. a shorter heartbeat in tests).
	KubeletOptions []kubeemu.KubeletOption
}

// StartControlPlane implements talosemu.KubernetesRunner.
func (r Runner) StartControlPlane(ctx context.Context, cfg talosemu.KubernetesControlPlaneConfig) (talosemu.KubernetesControlPlane, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = zap.NewNop()
	}

	cp, err := kubeemu.StartControlPlane(ctx, kubeemu.ControlPlaneConfig{
		Dir:           cfg.Dir,
		EtcdEndpoints: cfg.EtcdEndpoints,
		ClusterName:   cfg.Cluster,
		BinDir:        r.BinDir,
		Logger:        logger,
	})
	if err != nil {
		return nil, fmt.Errorf("starting the control plane of cluster %q: %w", cfg.Cluster, err)
	}

	return &controlPlane{cp: cp, logger: logger, kubeletOptions: r.KubeletOptions}, nil
}

type controlPlane struct {
	cp             *kubeemu.ControlPlane
	logger         *zap.Logger
	kubeletOptions []kubeemu.KubeletOption
	kubelets       sync.WaitGroup
}

func (c *controlPlane) Kubeconfig() []byte { return c.cp.Kubeconfig() }

// StartKubelet runs a kubelet until ctx ends; Stop waits for it before stopping the API server it talks to.
func (c *controlPlane) StartKubelet(ctx context.Context, node talosemu.KubeletConfig) (talosemu.Kubelet, error) {
	k := kubeemu.NewKubelet(c.cp.RESTConfig(), nodeConfig(node), c.logger.With(zap.String("node", node.Name)), c.kubeletOptions...)

	c.kubelets.Go(func() {
		if err := k.Run(ctx); err != nil && ctx.Err() == nil {
			c.logger.Error("kubelet stopped", zap.String("node", node.Name), zap.Error(err))
		}
	})

	return kubelet{k}, nil
}

func (c *controlPlane) ApplyManifests(ctx context.Context, objects []map[string]any) error {
	return c.cp.ApplyManifests(ctx, objects)
}

func (c *controlPlane) InterruptAPIServer(ctx context.Context, d time.Duration) error {
	return c.cp.InterruptAPIServer(ctx, d)
}

func (c *controlPlane) StopAPIServer() error { return c.cp.StopAPIServer() }

func (c *controlPlane) StartAPIServer(ctx context.Context) error { return c.cp.StartAPIServer(ctx) }

func (c *controlPlane) Stop() error {
	c.kubelets.Wait()

	return c.cp.Stop()
}

type kubelet struct{ k *kubeemu.Kubelet }

func (k kubelet) SetReady(ready bool) { k.k.SetReady(ready) }

func (k kubelet) Update(node talosemu.KubeletConfig) { k.k.Update(nodeConfig(node)) }

func nodeConfig(node talosemu.KubeletConfig) kubeemu.NodeConfig {
	pods := make([]kubeemu.StaticPod, 0, len(node.StaticPods))
	for _, pod := range node.StaticPods {
		pods = append(pods, kubeemu.StaticPod{Name: pod.Name, Image: pod.Image, Annotations: pod.Annotations})
	}

	return kubeemu.NodeConfig{
		Name:             node.Name,
		KubeletVersion:   node.KubeletVersion,
		ControlPlane:     node.ControlPlane,
		StaticPods:       pods,
		OSImage:          node.OSImage,
		StaticPodRestart: node.StaticPodRestart,
	}
}
