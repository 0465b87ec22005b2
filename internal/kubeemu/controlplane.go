package kubeemu

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/upshift-io/upshift/internal/loopback"
)

// Component binary names, as `make kube-bins` writes them.
const (
	APIServerBinary         = "kube-apiserver"
	ControllerManagerBinary = "kube-controller-manager"
	SchedulerBinary         = "kube-scheduler"
)

// DefaultControllers are the kube-controller-manager controllers a control plane runs unless configured otherwise:
// what drain, PodDisruptionBudgets, DaemonSets, Deployments and namespace or owner cleanup need to behave as in a
// real cluster, and the node lifecycle controller, which lifts the not-ready taint every new Node gets and puts it
// back while a node is down. Service account and certificate controllers are left out: clients authenticate with
// certificates and pods need no tokens.
var DefaultControllers = []string{
	"node-lifecycle-controller",
	"disruption-controller",
	"daemonset-controller",
	"deployment-controller",
	"replicaset-controller",
	"statefulset-controller",
	"garbage-collector-controller",
	"namespace-controller",
}

const (
	// defaultStartTimeout bounds StartControlPlane when ctx has no deadline. The apiserver is ready in about
	// 3 s on an idle machine; the margin is for a machine busy compiling.
	defaultStartTimeout = 2 * time.Minute
	// healthPollInterval is how often a starting component's health endpoint is polled.
	healthPollInterval = 100 * time.Millisecond
	// portAttempts is how many times a component is restarted on a fresh port when its port was taken.
	portAttempts = 3
	// clientQPS and clientBurst lift client-go's defaults (5/10), which throttle a fleet of emulated kubelets.
	clientQPS   = 50
	clientBurst = 100
)

// ControlPlaneConfig says where a control plane keeps its files and which etcd it stores into.
type ControlPlaneConfig struct {
	// Dir receives the PKI, the admin kubeconfig of the API endpoint ("kubeconfig"), the direct one the components
	// use ("components.kubeconfig") and one log file per component ("kube-apiserver.log", ...). It is created if
	// missing.
	Dir string
	// EtcdEndpoints are the plain-http etcd client URLs (http://127.0.0.1:port) kube-apiserver stores into.
	EtcdEndpoints []string
	// EtcdPrefix is the key prefix of this cluster in etcd, so several clusters can share members.
	// Empty means kube-apiserver's default, "/registry".
	EtcdPrefix string
	// ClusterName names the cluster in the kubeconfig; empty means "kubernetes".
	ClusterName string
	// Controllers replaces DefaultControllers when not empty.
	Controllers []string
	// BinDir is where the binaries are; empty means $UPSHIFT_KUBE_BIN_DIR.
	BinDir string
	// Logger receives start and stop events; nil discards them.
	Logger *zap.Logger
}

// ControlPlane is a running kube-apiserver, kube-controller-manager and kube-scheduler. Stop it when done; if the
// process that started it dies first, the kernel kills the components.
type ControlPlane struct {
	logger     *zap.Logger
	kubeconfig []byte
	restConfig *rest.Config
	endpoint   *endpoint

	// apiServer is what StartAPIServer needs to start kube-apiserver again as it was: same flags, so the same port,
	// certificates and etcd.
	apiServer struct {
		binary, dir string
		args        []string
		caPool      *x509.CertPool
	}

	mu        sync.Mutex // guards processes against StopAPIServer and StartAPIServer
	processes []*process // in start order; kube-apiserver first

	stopOnce sync.Once
	stopErr  error
}

// StartControlPlane starts a real kube-apiserver on cfg.EtcdEndpoints, then kube-controller-manager and
// kube-scheduler against it, each as a child process bound to 127.0.0.1 on a free port and logging to cfg.Dir.
// It returns once every component reports healthy. ctx bounds the start only; the components run until Stop.
// A missing binary is an error wrapping ErrBinaryMissing that names $UPSHIFT_KUBE_BIN_DIR and `make kube-bins`.
func StartControlPlane(ctx context.Context, cfg ControlPlaneConfig) (*ControlPlane, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("invalid control plane config: %w", err)
	}

	binaries := map[string]string{}

	for _, name := range []string{APIServerBinary, ControllerManagerBinary, SchedulerBinary} {
		path, err := findBinary(cfg.BinDir, name)
		if err != nil {
			return nil, err
		}

		binaries[name] = path
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc

		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}

	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the control plane directory: %w", err)
	}

	certs, err := newPKI(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("creating the control plane PKI: %w", err)
	}

	cp := &ControlPlane{logger: cfg.Logger}
	if cp.logger == nil {
		cp.logger = zap.NewNop()
	}

	if err := cp.start(ctx, cfg, binaries, certs); err != nil {
		return nil, errors.Join(err, cp.Stop())
	}

	return cp, nil
}

func (cfg *ControlPlaneConfig) validate() error {
	if cfg.Dir == "" {
		return errors.New("Dir is empty")
	}

	if len(cfg.EtcdEndpoints) == 0 {
		return errors.New("no etcd endpoints")
	}

	for _, endpoint := range cfg.EtcdEndpoints {
		u, err := url.Parse(endpoint)
		// No etcd TLS flags are passed, so only plain-http members (the emulator's embedded ones) can work.
		if err != nil || u.Host == "" || u.Scheme != "http" {
			return fmt.Errorf("etcd endpoint %q is not an http:// URL", endpoint)
		}
	}

	if cfg.EtcdPrefix != "" && !strings.HasPrefix(cfg.EtcdPrefix, "/") {
		return fmt.Errorf("etcd prefix %q does not start with /", cfg.EtcdPrefix)
	}

	return nil
}

// start brings the components up in dependency order; the caller stops whatever started if it fails.
func (cp *ControlPlane) start(ctx context.Context, cfg ControlPlaneConfig, binaries map[string]string, certs *pki) error {
	caPool := x509.NewCertPool()
	caPool.AddCert(certs.CA.cert)

	probe := newProbe(caPool)
	defer probe.CloseIdleConnections()

	apiPort, err := cp.startComponent(ctx, probe, binaries[APIServerBinary], cfg.Dir, APIServerBinary, "/readyz",
		func(port int) []string { return apiServerArgs(cfg, certs.Files, port) })
	if err != nil {
		return err
	}

	cp.apiServer.binary, cp.apiServer.dir, cp.apiServer.caPool = binaries[APIServerBinary], cfg.Dir, caPool
	cp.apiServer.args = apiServerArgs(cfg, certs.Files, apiPort)

	host := "https://127.0.0.1:" + strconv.Itoa(apiPort)

	if cp.endpoint, err = newEndpoint("127.0.0.1:" + strconv.Itoa(apiPort)); err != nil {
		return err
	}

	cp.restConfig = &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   certs.CA.CertPEM,
			CertData: certs.Admin.CertPEM,
			KeyData:  certs.Admin.KeyPEM,
		},
		QPS:   clientQPS,
		Burst: clientBurst,
	}

	cp.kubeconfig, err = adminKubeconfig(cfg.ClusterName, "https://"+cp.endpoint.addr(), certs)
	if err != nil {
		return err
	}

	if err := os.WriteFile(filepath.Join(cfg.Dir, "kubeconfig"), cp.kubeconfig, 0o600); err != nil {
		return fmt.Errorf("writing the kubeconfig: %w", err)
	}

	// The other components reach kube-apiserver directly, as they reach their own node's API server on Talos, so an
	// interruption of the endpoint does not stop them.
	componentKubeconfig, err := adminKubeconfig(cfg.ClusterName, host, certs)
	if err != nil {
		return err
	}

	kubeconfigPath := filepath.Join(cfg.Dir, "components.kubeconfig")
	if err := os.WriteFile(kubeconfigPath, componentKubeconfig, 0o600); err != nil {
		return fmt.Errorf("writing the components' kubeconfig: %w", err)
	}

	controllers := cfg.Controllers
	if len(controllers) == 0 {
		controllers = DefaultControllers
	}

	if _, err := cp.startComponent(ctx, probe, binaries[ControllerManagerBinary], cfg.Dir, ControllerManagerBinary,
		"/healthz", func(port int) []string {
			return append(clientComponentArgs(kubeconfigPath, certs.Files, port),
				"--controllers="+strings.Join(controllers, ","),
				"--use-service-account-credentials=false",
			)
		}); err != nil {
		return err
	}

	if _, err := cp.startComponent(ctx, probe, binaries[SchedulerBinary], cfg.Dir, SchedulerBinary, "/healthz",
		func(port int) []string { return clientComponentArgs(kubeconfigPath, certs.Files, port) }); err != nil {
		return err
	}

	return nil
}

// newProbe returns the client of health probes. They go anonymous: /readyz and /healthz are open to everyone on all
// three components.
func newProbe(caPool *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool, MinVersion: tls.VersionTLS12}},
	}
}

// startComponent starts one component on a free port and waits until healthPath answers 200, starting it again on
// another port if the first was taken meanwhile. It returns the port.
func (cp *ControlPlane) startComponent(ctx context.Context, probe *http.Client, binary, dir, name, healthPath string,
	args func(port int) []string,
) (int, error) {
	for attempt := 1; ; attempt++ {
		port, err := loopback.Port()
		if err != nil {
			return 0, err
		}

		started := time.Now()

		p, err := startProcess(binary, dir, name, args(port))
		if err != nil {
			return 0, err
		}

		cp.mu.Lock()
		cp.processes = append(cp.processes, p)
		cp.mu.Unlock()

		err = waitHealthy(ctx, probe, p, fmt.Sprintf("https://127.0.0.1:%d%s", port, healthPath))
		if err == nil {
			cp.logger.Info("component ready", zap.String("component", name), zap.Int("port", port),
				zap.Duration("took", time.Since(started)))

			return port, nil
		}

		if !errors.Is(err, errExited) || !p.portInUse() || attempt == portAttempts {
			return 0, fmt.Errorf("starting %s: %w", name, err)
		}

		cp.logger.Info("component port taken, retrying", zap.String("component", name), zap.Int("port", port))
	}
}

// errExited marks a component that exited before it became healthy.
var errExited = errors.New("exited before becoming healthy")

// waitHealthy polls healthURL until it answers 200, the process exits, or ctx ends.
func waitHealthy(ctx context.Context, probe *http.Client, p *process, healthURL string) error {
	ticker := time.NewTicker(healthPollInterval)
	defer ticker.Stop()

	var lastErr error

	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, healthURL, nil)
		if err != nil {
			return err
		}

		resp, err := probe.Do(req)
		if err == nil {
			resp.Body.Close() //nolint:errcheck

			if resp.StatusCode == http.StatusOK {
				return nil
			}

			err = fmt.Errorf("%s answered %s", healthURL, resp.Status)
		}

		lastErr = err

		select {
		case <-p.done:
			return fmt.Errorf("%w: %w", errExited, p.exitError())
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (last: %v; log: %s): %w", healthURL, lastErr, p.logPath, ctx.Err())
		case <-ticker.C:
		}
	}
}

// apiServerArgs are the kube-apiserver flags: loopback only, client certificates against our CA, RBAC, and no
// ServiceAccount admission (no token controller runs, so pods would be refused for want of a "default" account).
func apiServerArgs(cfg ControlPlaneConfig, files pkiFiles, port int) []string {
	args := []string{
		"--etcd-servers=" + strings.Join(cfg.EtcdEndpoints, ","),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + files.ServerCert,
		"--tls-private-key-file=" + files.ServerKey,
		"--client-ca-file=" + files.CACert,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + files.SAPub,
		"--service-account-signing-key-file=" + files.SAKey,
		"--service-cluster-ip-range=10.96.0.0/12",
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
	}

	if cfg.EtcdPrefix != "" {
		args = append(args, "--etcd-prefix="+cfg.EtcdPrefix)
	}

	return args
}

// clientComponentArgs are the flags kube-controller-manager and kube-scheduler share: the admin kubeconfig, no leader
// election (one instance per cluster), and a loopback health endpoint served with the apiserver's certificate.
func clientComponentArgs(kubeconfigPath string, files pkiFiles, port int) []string {
	return []string{
		"--kubeconfig=" + kubeconfigPath,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + files.ServerCert,
		"--tls-private-key-file=" + files.ServerKey,
	}
}

// adminKubeconfig renders a kubeconfig with the admin client certificate embedded, usable as is by kubectl and
// client-go.
func adminKubeconfig(clusterName, host string, certs *pki) ([]byte, error) {
	if clusterName == "" {
		clusterName = "kubernetes"
	}

	user := "admin@" + clusterName

	config := clientcmdapi.NewConfig()
	config.Clusters[clusterName] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: certs.CA.CertPEM}
	config.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: certs.Admin.CertPEM,
		ClientKeyData:         certs.Admin.KeyPEM,
	}
	config.Contexts[user] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: user}
	config.CurrentContext = user

	data, err := clientcmd.Write(*config)
	if err != nil {
		return nil, fmt.Errorf("encoding the kubeconfig: %w", err)
	}

	return data, nil
}

// Kubeconfig returns an admin kubeconfig (client certificate in system:masters) for the cluster's API endpoint,
// which InterruptAPIServer interrupts.
func (cp *ControlPlane) Kubeconfig() []byte {
	return append([]byte(nil), cp.kubeconfig...)
}

// RESTConfig returns a fresh admin client config that reaches the apiserver directly, as the components of a node
// (kubelet, controller manager) reach their own API server: InterruptAPIServer does not affect it. Callers may
// change their copy.
func (cp *ControlPlane) RESTConfig() *rest.Config {
	return rest.CopyConfig(cp.restConfig)
}

// InterruptAPIServer shows the clients of the cluster's API endpoint a kube-apiserver restart: every connection is
// cut and new ones are refused for d (an interruption under way is extended). It returns once the endpoint serves
// again, or when ctx ends.
func (cp *ControlPlane) InterruptAPIServer(ctx context.Context, d time.Duration) error {
	return cp.endpoint.interrupt(ctx, d)
}

// StopAPIServer stops the kube-apiserver process (SIGTERM, then SIGKILL after a grace period), leaving etcd, the
// other components and the API endpoint as they are, so a test can hold a real API server outage as long as it
// needs to observe what its clients do meanwhile; StartAPIServer ends it. Unlike InterruptAPIServer, the components
// that reach the apiserver directly (controller manager, scheduler, kubelets) lose it too.
func (cp *ControlPlane) StopAPIServer() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()

	if err := cp.processes[0].stop(); err != nil {
		return fmt.Errorf("stopping the API server: %w", err)
	}

	cp.logger.Info("component stopped", zap.String("component", APIServerBinary))

	return nil
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, with the flags it first ran with: the same port,
// certificates and etcd, so every client config handed out stays valid, as after a real restart. It returns once
// the apiserver is ready, or fails if the port was taken meanwhile (a new port would break those configs).
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()

	select {
	case <-cp.processes[0].done:
	default:
		return errors.New("starting the API server: it is running; stop it first")
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc

		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}

	started := time.Now()

	p, err := startProcess(cp.apiServer.binary, cp.apiServer.dir, APIServerBinary, cp.apiServer.args)
	if err != nil {
		return fmt.Errorf("starting the API server again: %w", err)
	}

	cp.processes[0] = p

	probe := newProbe(cp.apiServer.caPool)
	defer probe.CloseIdleConnections()

	if err := waitHealthy(ctx, probe, p, cp.restConfig.Host+"/readyz"); err != nil {
		return fmt.Errorf("starting the API server again: %w", err)
	}

	cp.logger.Info("component ready again", zap.String("component", APIServerBinary), zap.Duration("took", time.Since(started)))

	return nil
}

// Stop stops the components in reverse start order (SIGTERM, then SIGKILL after a grace period). It is safe to call
// more than once; later calls return the first result.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		if cp.endpoint != nil {
			cp.endpoint.close()
		}

		var errs []error

		cp.mu.Lock()
		defer cp.mu.Unlock()

		for i := len(cp.processes) - 1; i >= 0; i-- {
			errs = append(errs, cp.processes[i].stop())
		}

		cp.stopErr = errors.Join(errs...)
		cp.logger.Info("control plane stopped", zap.Error(cp.stopErr))
	})

	return cp.stopErr
}
