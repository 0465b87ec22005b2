package kubeemu_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/upshift-io/upshift/internal/kubeemu"
)

// testCluster is a real control plane on an embedded etcd member, with one emulated kubelet per node.
type testCluster struct {
	cp       *kubeemu.ControlPlane
	client   kubernetes.Interface
	kubelets map[string]*kubeemu.Kubelet
}

// startEtcd starts a single embedded etcd member on free loopback ports and returns its client URL.
func startEtcd(t testing.TB) string {
	t.Helper()

	cfg := embed.NewConfig()
	cfg.Name = "m0"
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(t.TempDir(), "etcd.log")}
	cfg.UnsafeNoFsync = true

	clientURL, peerURL := loopbackURL(t), loopbackURL(t)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()

	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("starting etcd: %v", err)
	}

	t.Cleanup(etcd.Close)

	select {
	case <-etcd.Server.ReadyNotify():
	case err := <-etcd.Err():
		t.Fatalf("etcd failed: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("etcd was not ready within a minute")
	}

	return clientURL.String()
}

func loopbackURL(t testing.TB) url.URL {
	t.Helper()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	defer l.Close() //nolint:errcheck

	return url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)}
}

// startCluster starts etcd, the control plane and a kubelet per node. A missing binary fails the test: CI must
// build them (`make kube-bins`).
func startCluster(t testing.TB, nodes ...kubeemu.NodeConfig) *testCluster {
	t.Helper()

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	logger := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	dir := t.TempDir()

	started := time.Now()

	cp, err := kubeemu.StartControlPlane(ctx, kubeemu.ControlPlaneConfig{
		Dir:           dir,
		EtcdEndpoints: []string{startEtcd(t)},
		Logger:        logger,
	})
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}

	t.Logf("control plane ready in %s", time.Since(started))

	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})

	// The handed-out kubeconfig is what clients use; the test goes through it rather than the in-memory config.
	restConfig, err := clientcmd.RESTConfigFromKubeConfig(cp.Kubeconfig())
	if err != nil {
		t.Fatalf("loading the kubeconfig: %v", err)
	}

	onDisk, err := os.ReadFile(filepath.Join(dir, "kubeconfig"))
	if err != nil || string(onDisk) != string(cp.Kubeconfig()) {
		t.Fatalf("the kubeconfig file in Dir differs from Kubeconfig() (read error: %v)", err)
	}

	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		t.Fatal(err)
	}

	c := &testCluster{cp: cp, client: client, kubelets: map[string]*kubeemu.Kubelet{}}

	for _, node := range nodes {
		kubelet := kubeemu.NewKubelet(cp.RESTConfig(), node, logger, kubeemu.WithHeartbeatInterval(time.Second))
		c.kubelets[node.Name] = kubelet

		done := make(chan error, 1)

		go func() { done <- kubelet.Run(ctx) }()

		t.Cleanup(func() {
			cancel()

			if err := <-done; err != nil {
				t.Errorf("kubelet %s: %v", node.Name, err)
			}
		})
	}

	return c
}

// eventually polls cond until it returns true or the timeout passes; the last error explains a failure.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()

	var lastErr error

	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) {
			ok, err := cond()
			lastErr = err

			return ok, nil
		})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %v)", what, err, lastErr)
	}
}
