package controllers_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
)

// fakeFleet is a double of one cluster's Talos machines and Kubernetes nodes, behind the Connector the
// controllers use. Reboots happen in the background after a delay, like on a real machine; every call is recorded,
// and the safety properties the rollout must keep are tracked as the calls come.
type fakeFleet struct {
	rebootDelay time.Duration

	mu     sync.Mutex
	nodes  map[string]*fakeNode
	calls  []fakeCall
	leader string
	// onCall, when set, runs (unlocked) after a call is recorded, before it takes effect.
	onCall func(fakeCall)
	// clients are the Talos clients dial made, in order.
	clients []*fakeClient

	cpsDown, maxCPsDown         int
	workersBusy, maxWorkersBusy int
	busy                        map[string]bool
	drainBlocks                 map[string]bool
	// findings are what the Kubernetes pre-checks find; kubeProxy is the image of the applied kube-proxy DaemonSet.
	findings  []talos.Finding
	kubeProxy string
}

type fakeNode struct {
	name, version, staged, bootID, stage string
	cp, down, cordoned                   bool
	rollback, noReturn, etcdUnhealthy    bool
	installFails, installBreaks          bool
	// config is the machine config the node runs (nil: the double serves none); stagedConfig the one it runs after
	// its next reboot.
	config, stagedConfig []byte
	memberID             uint64
	// k8s is the node's Kubernetes side (kube_double_test.go); nil means every component on fakeKubernetes.
	k8s *fakeK8s
}

type fakeCall struct {
	Node, Method, Arg string
}

var _ controllers.Connector = (*fakeFleet)(nil)

func newFakeFleet(version string, cps, workers int) *fakeFleet {
	f := &fakeFleet{rebootDelay: 20 * time.Millisecond, nodes: map[string]*fakeNode{}, busy: map[string]bool{}, drainBlocks: map[string]bool{}}

	for i := range cps {
		name := fmt.Sprintf("cp-%d", i+1)
		f.nodes[name] = &fakeNode{name: name, version: version, bootID: newID(), stage: "running", cp: true, memberID: uint64(i + 1)}
	}

	for i := range workers {
		name := fmt.Sprintf("w-%d", i+1)
		f.nodes[name] = &fakeNode{name: name, version: version, bootID: newID(), stage: "running"}
	}

	if cps > 0 {
		f.leader = "cp-1"
	}

	return f
}

func newID() string { return rand.Text() }

func (f *fakeFleet) Talos(context.Context, controllers.ClusterAccess) (talos.API, error) {
	return fakeTalos{f: f}, nil
}

// dial makes Talos clients onto the fleet for a CredentialsConnector; each can be closed, like a real one.
func (f *fakeFleet) dial(context.Context, ...talos.Option) (talos.API, error) {
	c := &fakeClient{}

	f.mu.Lock()
	f.clients = append(f.clients, c)
	f.mu.Unlock()

	return fakeTalos{f: f, client: c}, nil
}

// client is the i-th client dial made.
func (f *fakeFleet) client(i int) *fakeClient {
	f.mu.Lock()
	defer f.mu.Unlock()

	return f.clients[i]
}

// fakeClient is one Talos client dial made.
type fakeClient struct{ closed atomic.Bool }

func (f *fakeFleet) Kubernetes(context.Context, controllers.ClusterAccess) (kube.API, error) {
	return fakeKube{f}, nil
}

// do records a call to node, then runs fn on the node under the fleet's lock, or fails as unreachable when the
// node is down.
func (f *fakeFleet) do(node, method, arg string, fn func(*fakeNode) error) error {
	f.mu.Lock()
	f.calls = append(f.calls, fakeCall{node, method, arg})
	hook := f.onCall
	f.mu.Unlock()

	if hook != nil {
		hook(fakeCall{node, method, arg})
	}

	f.mu.Lock()
	defer f.mu.Unlock()

	n, ok := f.nodes[node]
	if !ok {
		return &talos.Error{Node: node, Op: method, Kind: talos.KindRefused, Err: errors.New("unknown node")}
	}

	if n.down {
		return &talos.Error{Node: node, Op: method, Kind: talos.KindUnreachable, Err: errors.New("connection refused")}
	}

	return fn(n)
}

// hook sets onCall.
func (f *fakeFleet) hook(fn func(fakeCall)) {
	f.mu.Lock()
	defer f.mu.Unlock()

	f.onCall = fn
}

// set changes a node under the lock.
func (f *fakeFleet) set(node string, change func(*fakeNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()

	change(f.nodes[node])
}

func (f *fakeFleet) get(node string) fakeNode {
	f.mu.Lock()
	defer f.mu.Unlock()

	return *f.nodes[node]
}

// markBusy tracks a machine from the start of its upgrade to its uncordon.
func (f *fakeFleet) markBusy(n *fakeNode, busy bool) {
	if f.busy[n.name] == busy || n.cp {
		return
	}

	f.busy[n.name] = busy

	if busy {
		f.workersBusy++
		f.maxWorkersBusy = max(f.maxWorkersBusy, f.workersBusy)
	} else {
		f.workersBusy--
	}
}

// reboot takes the node down now and brings it back after the delay, on its staged version unless it rolls back.
func (f *fakeFleet) reboot(n *fakeNode) {
	n.down, n.stage = true, "rebooting"

	if n.cp {
		f.cpsDown++
		f.maxCPsDown = max(f.maxCPsDown, f.cpsDown)
	}

	time.AfterFunc(f.rebootDelay, func() { f.comeBack(n.name) })
}

func (f *fakeFleet) comeBack(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.nodes[node]
	if n.noReturn {
		time.AfterFunc(f.rebootDelay, func() { f.comeBack(node) })

		return
	}

	if n.staged != "" && !n.rollback {
		n.version = n.staged
	}

	if n.stagedConfig != nil {
		n.config = n.stagedConfig
	}

	n.staged, n.stagedConfig, n.bootID, n.down, n.stage = "", nil, newID(), false, "running"

	if n.cp {
		f.cpsDown--
	}
}

// callsOf lists the methods called on node, in order, leaving out observations.
func (f *fakeFleet) callsOf(node string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()

	var out []string

	for _, c := range f.calls {
		if c.Node == node && c.Method != "MachineStatus" && c.Method != "EtcdMembers" && c.Method != "EtcdMemberStatus" && c.Method != "Node" && c.Method != "MachineConfig" {
			out = append(out, c.Method)
		}
	}

	return out
}

// firstCall is the index in the call log of the first call of method to node, -1 if none.
func (f *fakeFleet) firstCall(node, method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()

	return slices.IndexFunc(f.calls, func(c fakeCall) bool { return c.Node == node && c.Method == method })
}

// firstCallOf is the index in the call log of the first call of method with arg to node, -1 if none.
func (f *fakeFleet) firstCallOf(node, method, arg string) int {
	f.mu.Lock()
	defer f.mu.Unlock()

	return slices.IndexFunc(f.calls, func(c fakeCall) bool { return c.Node == node && c.Method == method && c.Arg == arg })
}

// applies lists the ApplyConfiguration calls to node, in order, by their Arg ("REBOOT dry-run", ...).
func (f *fakeFleet) applies(node string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()

	var out []string

	for _, c := range f.calls {
		if c.Node == node && c.Method == "ApplyConfiguration" {
			out = append(out, c.Arg)
		}
	}

	return out
}

// names lists the fleet's nodes, sorted.
func (f *fakeFleet) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()

	names := make([]string, 0, len(f.nodes))
	for name := range f.nodes {
		names = append(names, name)
	}

	slices.Sort(names)

	return names
}

func (f *fakeFleet) lastCall(node, method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()

	for i := len(f.calls) - 1; i >= 0; i-- {
		if f.calls[i].Node == node && f.calls[i].Method == method {
			return i
		}
	}

	return -1
}

func (f *fakeFleet) count(node, method string) int {
	n := 0

	for _, m := range f.callsOf(node) {
		if m == method {
			n++
		}
	}

	return n
}

func versionOf(image string) string { return image[strings.LastIndex(image, ":")+1:] }

// fakeTalos is a Talos client of the fleet: the fleet's own, which never closes, or one dial made (client).
type fakeTalos struct {
	f      *fakeFleet
	client *fakeClient
}

func (t fakeTalos) Close() error {
	if t.client != nil {
		t.client.closed.Store(true)
	}

	return nil
}

// do is fakeFleet.do through this client: a call whose client closed before the call took effect fails the way
// gRPC fails a call on a closing connection, which the Talos adapter does not take for an unreachable node.
func (t fakeTalos) do(node, method, arg string, fn func(*fakeNode) error) error {
	return t.f.do(node, method, arg, func(n *fakeNode) error {
		if t.client != nil && t.client.closed.Load() {
			return &talos.Error{Node: node, Op: method, Kind: talos.KindFailed, Err: status.Error(codes.Canceled, "grpc: the client connection is closing")}
		}

		return fn(n)
	})
}

func (t fakeTalos) MachineStatus(_ context.Context, node string) (st talos.MachineStatus, err error) {
	err = t.do(node, "MachineStatus", "", func(n *fakeNode) error {
		st = talos.MachineStatus{Version: n.version, Stage: n.stage, Ready: n.stage == "running", BootID: n.bootID, NodeName: n.name}

		return nil
	})

	return st, err
}

func (t fakeTalos) Version(ctx context.Context, node string) (string, error) {
	st, err := t.MachineStatus(ctx, node)

	return st.Version, err
}

func (t fakeTalos) PullImage(_ context.Context, node, image string) (string, error) {
	return image, t.do(node, "PullImage", image, func(n *fakeNode) error {
		t.f.markBusy(n, true)

		return nil
	})
}

func (t fakeTalos) Install(_ context.Context, node, image string) error {
	return t.do(node, "Install", image, func(n *fakeNode) error {
		if n.installFails {
			return &talos.Error{Node: node, Op: "Install", Kind: talos.KindFailed, Err: errors.New("installer exited with code 1")}
		}

		n.staged = versionOf(image)

		if n.installBreaks { // the install happened, but its answer did not arrive
			return &talos.Error{Node: node, Op: "Install", Kind: talos.KindUnreachable, Err: errors.New("stream broke off")}
		}

		return nil
	})
}

func (t fakeTalos) LegacyUpgrade(_ context.Context, node, image string) error {
	return t.do(node, "LegacyUpgrade", image, func(n *fakeNode) error {
		n.staged = versionOf(image)
		t.f.reboot(n)

		return nil
	})
}

// MachineConfig serves the node's config, once a test gave it one (serveConfigs); before, it refuses, and records
// no call, so the upgrade tests' call lists are the upgrades'.
func (t fakeTalos) MachineConfig(_ context.Context, node string) (cfg []byte, err error) {
	t.f.mu.Lock()
	serves := t.f.nodes[node].config != nil
	t.f.mu.Unlock()

	if !serves {
		return nil, &talos.Error{Node: node, Op: "MachineConfig", Kind: talos.KindRefused, Err: errors.New("the double serves no config")}
	}

	err = t.do(node, "MachineConfig", "", func(n *fakeNode) error {
		cfg = slices.Clone(n.config)

		return nil
	})

	return cfg, err
}

// ApplyConfiguration models a change that Talos makes only with a reboot: NO_REBOOT is refused; REBOOT stages the
// config and reboots, and the node runs it once back. The call's Arg is its mode, " dry-run" added for a dry run.
// Without a served config it refuses, like MachineConfig.
func (t fakeTalos) ApplyConfiguration(_ context.Context, node string, cfg []byte, mode machineapi.ApplyConfigurationRequest_Mode, dryRun bool) (string, error) {
	arg := mode.String()
	if dryRun {
		arg += " dry-run"
	}

	return "", t.do(node, "ApplyConfiguration", arg, func(n *fakeNode) error {
		switch {
		case n.config == nil:
			return &talos.Error{Node: node, Op: "ApplyConfiguration", Kind: talos.KindRefused, Err: errors.New("the double serves no config")}
		case mode != machineapi.ApplyConfigurationRequest_REBOOT:
			return &talos.Error{Node: node, Op: "ApplyConfiguration", Kind: talos.KindRefused, Err: errors.New("the change needs a reboot")}
		case !dryRun:
			n.stagedConfig = slices.Clone(cfg)
			t.f.reboot(n)
		}

		return nil
	})
}

func (t fakeTalos) Reboot(_ context.Context, node string) error {
	return t.do(node, "Reboot", "", func(n *fakeNode) error {
		t.f.reboot(n)

		return nil
	})
}

func (t fakeTalos) EtcdMembers(_ context.Context, node string) (out []talos.EtcdMember, err error) {
	err = t.do(node, "EtcdMembers", "", func(*fakeNode) error {
		for _, n := range t.f.nodes {
			if n.cp {
				out = append(out, talos.EtcdMember{ID: n.memberID, Hostname: n.name})
			}
		}

		return nil
	})

	return out, err
}

func (t fakeTalos) EtcdMemberStatus(_ context.Context, node string) (st talos.EtcdMemberStatus, err error) {
	err = t.do(node, "EtcdMemberStatus", "", func(n *fakeNode) error {
		st = talos.EtcdMemberStatus{MemberID: n.memberID, Leader: t.f.nodes[t.f.leader].memberID}
		if n.etcdUnhealthy {
			st.Errors = []string{"etcd member is unhealthy"}
		}

		return nil
	})

	return st, err
}

func (t fakeTalos) EtcdForfeitLeadership(_ context.Context, node string) error {
	return t.do(node, "EtcdForfeitLeadership", "", func(n *fakeNode) error {
		if t.f.leader != n.name {
			return nil
		}

		for _, other := range t.f.nodes {
			if other.cp && other.name != n.name && !other.down {
				t.f.leader = other.name

				return nil
			}
		}

		return nil
	})
}

type fakeKube struct{ f *fakeFleet }

func (k fakeKube) Node(_ context.Context, name string) (kube.Node, error) {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()

	n, ok := k.f.nodes[name]
	if !ok {
		return kube.Node{}, apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, name)
	}

	return kube.Node{Name: name, Ready: n.stage == "running", KubeletVersion: n.kubeletVersion(), Cordoned: n.cordoned}, nil
}

func (k fakeKube) Cordon(_ context.Context, name string) error {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()

	k.f.calls = append(k.f.calls, fakeCall{name, "Cordon", ""})
	k.f.nodes[name].cordoned = true
	k.f.markBusy(k.f.nodes[name], true)

	return nil
}

func (k fakeKube) Drain(ctx context.Context, name string, timeout time.Duration) error {
	k.f.mu.Lock()
	k.f.calls = append(k.f.calls, fakeCall{name, "Drain", ""})
	blocks := k.f.drainBlocks[name]
	hook := k.f.onCall
	k.f.mu.Unlock()

	if hook != nil {
		hook(fakeCall{name, "Drain", ""})
	}

	if !blocks {
		return nil
	}

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return fmt.Errorf("draining node %q: %w after %s", name, kube.ErrDrainTimeout, timeout)
	}
}

func (k fakeKube) Uncordon(_ context.Context, name string) error {
	k.f.mu.Lock()
	defer k.f.mu.Unlock()

	k.f.calls = append(k.f.calls, fakeCall{name, "Uncordon", ""})
	k.f.nodes[name].cordoned = false
	k.f.markBusy(k.f.nodes[name], false)

	return nil
}

const testKubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
users: [{name: u, user: {token: x}}]
`

// createUpgradeFleet creates the Cluster "c1" at version, its Credentials, and a Machine per node of f.
func createUpgradeFleet(ctx context.Context, t *testing.T, st state.State, f *fakeFleet, version string, change func(*cluster.ClusterSpec)) {
	t.Helper()

	c := cluster.NewCluster("c1")
	*c.TypedSpec() = cluster.ClusterSpec{TalosVersion: version, KubernetesVersion: "v1.33.7", DrainTimeout: "10s"}

	if change != nil {
		change(c.TypedSpec())
	}

	require.NoError(t, st.Create(ctx, c))

	creds := cluster.NewCredentials("c1")
	creds.TypedSpec().Kubeconfig = testKubeconfig
	require.NoError(t, st.Create(ctx, creds))

	names := f.names()

	f.mu.Lock()
	roles := map[string]cluster.Role{}

	for name, n := range f.nodes {
		roles[name] = cluster.RoleWorker

		if n.cp {
			roles[name] = cluster.RoleControlPlane
		}
	}
	f.mu.Unlock()

	for _, name := range names {
		m := cluster.NewMachine(name)
		*m.TypedSpec() = cluster.MachineSpec{Cluster: "c1", Role: roles[name], Endpoint: "127.0.0.1:50000"}
		require.NoError(t, st.Create(ctx, m))
	}
}

// fastUpgrades are the rollout options for tests: everything polls and times out quickly.
func fastUpgrades(opts ...controllers.UpgradeOption) []controllers.UpgradeOption {
	return append([]controllers.UpgradeOption{
		controllers.WithPollInterval(10 * time.Millisecond),
		controllers.WithRetryDelay(5 * time.Millisecond),
		controllers.WithObserveTimeout(time.Second),
		controllers.WithStepTimeout(5 * time.Second),
		controllers.WithRebootTimeout(5 * time.Second),
	}, opts...)
}
