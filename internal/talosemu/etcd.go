package talosemu

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/upshift-io/upshift/internal/etcdcluster"
	"github.com/upshift-io/upshift/internal/loopback"
)

// etcdMember is one control-plane node's etcd member as its Talos API sees it. Two implementations exist: a real
// embedded etcd member, and an in-memory model for lite fleets.
type etcdMember interface {
	// start boots the member (rejoining the cluster as a new member after a wipe).
	start(ctx context.Context) error
	// stop takes the member down, keeping its data (a reboot).
	stop()
	// wipe makes the member leave the cluster and deletes its data; the next start joins as a new member.
	wipe(ctx context.Context) error
	memberList(ctx context.Context, local bool) ([]*machine.EtcdMember, error)
	status(ctx context.Context) (*machine.EtcdMemberStatus, error)
	// forfeitLeadership moves leadership to another member if this one leads, and returns the leader's name.
	forfeitLeadership(ctx context.Context) (string, error)
	removeMember(ctx context.Context, id uint64) error
	// validateForUpgrade mirrors Talos' check before a control-plane upgrade without preserve: enough members to
	// keep quorum, all started and healthy.
	validateForUpgrade(ctx context.Context) error
	// id is the current member ID (0 when it is not a member).
	id() uint64
}

// memberRemoveTimeout bounds the retries of MemberRemove and MemberAdd, which etcd refuses ("unhealthy cluster")
// until peers have been connected for about 5 s.
const memberRemoveTimeout = 30 * time.Second

// memberReadyTimeout bounds the wait for a starting member to be ready; a member that is not is stopped and
// started again, as Talos restarts its etcd service.
const memberReadyTimeout = time.Minute

// etcdCluster is the real etcd cluster of one emulated cluster: one embedded member per control-plane node.
type etcdCluster struct {
	name    string
	logger  *zap.Logger
	mu      sync.Mutex
	members map[string]*realMember
}

func newEtcdCluster(name string, logger *zap.Logger) *etcdCluster {
	return &etcdCluster{name: name, logger: logger, members: map[string]*realMember{}}
}

// addMember registers a node's member with fresh loopback ports; the member starts with the whole cluster.
func (c *etcdCluster) addMember(node, dir string) (*realMember, error) {
	peer, err := loopback.Addr()
	if err != nil {
		return nil, err
	}

	client, err := loopback.Addr()
	if err != nil {
		return nil, err
	}

	m := &realMember{
		cluster:   c,
		name:      node,
		dir:       dir,
		peerURL:   "http://" + peer,
		clientURL: "http://" + client,
	}

	c.mu.Lock()
	c.members[node] = m
	c.mu.Unlock()

	return m, nil
}

// initialCluster is the etcd --initial-cluster value of the cluster as first formed.
func (c *etcdCluster) initialCluster() string {
	c.mu.Lock()
	defer c.mu.Unlock()

	parts := make([]string, 0, len(c.members))
	for _, m := range c.members {
		parts = append(parts, m.name+"="+m.peerURL)
	}

	return strings.Join(parts, ",")
}

// clientURLs lists every member's client URL, for the kube-apiserver and etcd clients.
func (c *etcdCluster) clientURLs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()

	urls := make([]string, 0, len(c.members))
	for _, m := range c.members {
		urls = append(urls, m.clientURL)
	}

	return urls
}

// peerClient returns a client of a running member other than node, to add or remove members through.
func (c *etcdCluster) peerClient(node string) (*clientv3.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()

	for name, m := range c.members {
		if name == node {
			continue
		}

		if cli := m.client(); cli != nil {
			return cli, nil
		}
	}

	return nil, fmt.Errorf("no running etcd member in cluster %q besides %q", c.name, node)
}

// nameOf maps a member ID to its node name.
func (c *etcdCluster) nameOf(id uint64) string {
	c.mu.Lock()
	defer c.mu.Unlock()

	for name, m := range c.members {
		if m.id() == id {
			return name
		}
	}

	return ""
}

// forgetMember marks the member with the given ID as removed from the cluster, so its node rejoins after a wipe.
func (c *etcdCluster) forgetMember(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()

	for _, m := range c.members {
		m.forgetIf(id)
	}
}

// realMember is an embedded etcd member on loopback ports with a data dir per node.
type realMember struct {
	cluster   *etcdCluster
	name      string
	dir       string
	peerURL   string
	clientURL string

	mu        sync.Mutex
	etcd      *embed.Etcd
	cli       *clientv3.Client
	memberID  uint64
	started   bool // the member has been part of the cluster at least once
	mustJoin  bool // the data is gone: join as a new member on the next start
	mustClear bool // the member was removed from outside: delete its data before joining
}

func (m *realMember) client() *clientv3.Client {
	m.mu.Lock()
	defer m.mu.Unlock()

	return m.cli
}

func (m *realMember) id() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()

	return m.memberID
}

func (m *realMember) forgetIf(id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if m.memberID == id {
		m.memberID = 0
		m.mustJoin = true
		m.mustClear = true
	}
}

func (m *realMember) config() (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.InitialClusterToken = m.cluster.name
	cfg.UnsafeNoFsync = true
	// etcd logs errors on every shutdown (closed listeners); its real failures reach callers as errors anyway.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(m.cluster.logger.Named("etcd").Named(m.name).WithOptions(zap.IncreaseLevel(zapcore.DPanicLevel)))

	peer, err := url.Parse(m.peerURL)
	if err != nil {
		return nil, err
	}

	client, err := url.Parse(m.clientURL)
	if err != nil {
		return nil, err
	}

	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}

	return cfg, nil
}

func (m *realMember) start(ctx context.Context) error {
	m.mu.Lock()
	mustJoin, mustClear, started := m.mustJoin, m.mustClear, m.started
	m.mu.Unlock()

	if mustClear {
		if err := os.RemoveAll(m.dir); err != nil {
			return fmt.Errorf("clearing etcd data of %q: %w", m.name, err)
		}
	}

	cfg, err := m.config()
	if err != nil {
		return fmt.Errorf("configuring etcd member %q: %w", m.name, err)
	}

	switch {
	case mustJoin:
		if cfg.InitialCluster, err = m.join(ctx); err != nil {
			return err
		}

		cfg.ClusterState = embed.ClusterStateFlagExisting
	case !started:
		cfg.InitialCluster = m.cluster.initialCluster()
		cfg.ClusterState = embed.ClusterStateFlagNew
	default:
		// A restart on the same data dir: the WAL knows the cluster; etcd ignores the initial cluster.
		cfg.InitialCluster = m.name + "=" + m.peerURL
	}

	e, err := etcdcluster.StartEmbedded(ctx, cfg, memberReadyTimeout)
	if err != nil {
		return err
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.clientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.Close()

		return fmt.Errorf("connecting to etcd member %q: %w", m.name, err)
	}

	m.mu.Lock()
	m.etcd, m.cli = e, cli
	m.memberID = uint64(e.Server.MemberID())
	m.started, m.mustJoin, m.mustClear = true, false, false
	m.mu.Unlock()

	return nil
}

// join adds the member to the running cluster through a peer and returns the initial cluster to start it with.
func (m *realMember) join(ctx context.Context) (string, error) {
	peer, err := m.cluster.peerClient(m.name)
	if err != nil {
		// The only member of its cluster: its data is gone, so it forms a new cluster alone.
		m.mu.Lock()
		m.started = false
		m.mu.Unlock()

		return m.name + "=" + m.peerURL, nil
	}

	list, err := peer.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("listing etcd members for %q: %w", m.name, err)
	}

	members, self := list.Members, uint64(0)

	for _, member := range members {
		if !slices.Contains(member.PeerURLs, m.peerURL) {
			continue
		}

		if member.Name == "" {
			self = member.ID // added by an earlier start that did not finish: join as that member

			continue
		}

		// Still listed from before its data was wiped (its leave failed): a member without its raft log cannot
		// come back as itself, so the stale entry goes and the member joins anew.
		err = retryUnhealthy(ctx, func(ctx context.Context) error {
			_, err := peer.MemberRemove(ctx, member.ID)

			return err
		})
		if err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) && !errors.Is(err, rpctypes.ErrGRPCMemberNotFound) {
			return "", fmt.Errorf("removing the stale etcd member %q before it joins again: %w", m.name, err)
		}
	}

	if self == 0 {
		var resp *clientv3.MemberAddResponse

		err = retryUnhealthy(ctx, func(ctx context.Context) error {
			resp, err = peer.MemberAdd(ctx, []string{m.peerURL})

			return err
		})
		if err != nil {
			return "", fmt.Errorf("adding etcd member %q: %w", m.name, err)
		}

		members, self = resp.Members, resp.Member.ID
	}

	parts := make([]string, 0, len(members))

	for _, member := range members {
		name := member.Name
		if member.ID == self {
			name = m.name
		}

		for _, u := range member.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}

	return strings.Join(parts, ","), nil
}

// retryUnhealthy retries a membership change that etcd refuses while its peers have not been connected long enough.
func retryUnhealthy(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, memberRemoveTimeout)
	defer cancel()

	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()

	for {
		err := f(ctx)
		if err == nil || !errors.Is(err, rpctypes.ErrUnhealthy) && !errors.Is(err, rpctypes.ErrGRPCUnhealthy) {
			return err
		}

		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (retried until %w)", err, ctx.Err())
		case <-ticker.C:
		}
	}
}

func (m *realMember) stop() {
	m.mu.Lock()
	e, cli := m.etcd, m.cli
	m.etcd, m.cli = nil, nil
	m.mu.Unlock()

	if cli != nil {
		cli.Close() //nolint:errcheck // closing a client of a member that is going away
	}

	if e != nil {
		e.Close()
	}
}

// wipe is Talos' upgrade without --preserve: the member leaves the cluster, stops, and its data is deleted, so its
// next start joins as a new member. The member stops and its data goes even when leaving failed: the node reboots
// either way, and an embedded etcd left running would keep its ports from the next start. A member still listed
// after a failed leave is joined as that member again (join).
func (m *realMember) wipe(ctx context.Context) error {
	err := m.leave(ctx)

	m.stop()

	m.mu.Lock()
	m.memberID = 0
	m.mustJoin = true
	m.mu.Unlock()

	if rmErr := os.RemoveAll(m.dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("wiping etcd data of %q: %w", m.name, rmErr))
	}

	return err
}

// leave removes the member from its cluster through its own server, when it runs and has peers to leave.
func (m *realMember) leave(ctx context.Context) error {
	cli, id := m.client(), m.id()
	if cli == nil || id == 0 {
		return nil
	}

	if _, err := m.cluster.peerClient(m.name); err != nil {
		return nil //nolint:nilerr // no peer: the only member of its cluster has nobody to leave
	}

	err := retryUnhealthy(ctx, func(ctx context.Context) error {
		_, err := cli.MemberRemove(ctx, id)

		return err
	})

	switch {
	case err == nil,
		errors.Is(err, rpctypes.ErrMemberNotFound), errors.Is(err, rpctypes.ErrGRPCMemberNotFound),
		// The server applied its own removal and stopped before it answered.
		errors.Is(err, rpctypes.ErrStopped), errors.Is(err, rpctypes.ErrGRPCStopped):
		return nil
	default:
		return fmt.Errorf("removing etcd member %q from the cluster: %w", m.name, err)
	}
}

var errEtcdNotRunning = errors.New("etcd is not running on this node")

func (m *realMember) runningClient() (*clientv3.Client, error) {
	cli := m.client()
	if cli == nil {
		return nil, errEtcdNotRunning
	}

	return cli, nil
}

func (m *realMember) memberList(ctx context.Context, local bool) ([]*machine.EtcdMember, error) {
	cli, err := m.runningClient()
	if err != nil {
		return nil, err
	}

	var opts []clientv3.OpOption
	if local {
		opts = append(opts, clientv3.WithSerializable())
	}

	resp, err := cli.MemberList(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("listing etcd members: %w", err)
	}

	members := make([]*machine.EtcdMember, 0, len(resp.Members))
	for _, member := range resp.Members {
		members = append(members, &machine.EtcdMember{
			Id:         member.ID,
			Hostname:   member.Name,
			PeerUrls:   member.PeerURLs,
			ClientUrls: member.ClientURLs,
			IsLearner:  member.IsLearner,
		})
	}

	return members, nil
}

func (m *realMember) status(ctx context.Context) (*machine.EtcdMemberStatus, error) {
	cli, err := m.runningClient()
	if err != nil {
		return nil, err
	}

	resp, err := cli.Status(ctx, m.clientURL)
	if err != nil {
		return nil, fmt.Errorf("getting etcd status: %w", err)
	}

	return &machine.EtcdMemberStatus{
		MemberId:         resp.Header.MemberId,
		ProtocolVersion:  resp.Version,
		StorageVersion:   resp.StorageVersion,
		DbSize:           resp.DbSize,
		DbSizeInUse:      resp.DbSizeInUse,
		Leader:           resp.Leader,
		RaftIndex:        resp.RaftIndex,
		RaftTerm:         resp.RaftTerm,
		RaftAppliedIndex: resp.RaftAppliedIndex,
		Errors:           resp.Errors,
		IsLearner:        resp.IsLearner,
	}, nil
}

func (m *realMember) forfeitLeadership(ctx context.Context) (string, error) {
	cli, err := m.runningClient()
	if err != nil {
		return "", err
	}

	resp, err := cli.Status(ctx, m.clientURL)
	if err != nil {
		return "", fmt.Errorf("getting etcd status: %w", err)
	}

	if resp.Leader != resp.Header.MemberId {
		return m.cluster.nameOf(resp.Leader), nil
	}

	members, err := cli.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("listing etcd members: %w", err)
	}

	for _, member := range members.Members {
		if member.ID == resp.Header.MemberId || member.IsLearner || member.Name == "" {
			continue
		}

		if _, err = cli.MoveLeader(ctx, member.ID); err == nil {
			return member.Name, nil
		}
	}

	return "", fmt.Errorf("moving etcd leadership away from %q: %w", m.name, err)
}

func (m *realMember) removeMember(ctx context.Context, id uint64) error {
	cli, err := m.runningClient()
	if err != nil {
		return err
	}

	err = retryUnhealthy(ctx, func(ctx context.Context) error {
		_, err := cli.MemberRemove(ctx, id)

		return err
	})
	if err != nil {
		return fmt.Errorf("removing etcd member %016x: %w", id, err)
	}

	m.cluster.forgetMember(id)

	return nil
}

func (m *realMember) validateForUpgrade(ctx context.Context) error {
	cli, err := m.runningClient()
	if err != nil {
		return err
	}

	resp, err := cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("listing etcd members: %w", err)
	}

	if len(resp.Members) == 2 {
		return fmt.Errorf("etcd member count(%d) is insufficient to maintain quorum if upgrade commences", len(resp.Members))
	}

	for _, member := range resp.Members {
		if member.Name == "" {
			return fmt.Errorf("etcd member %016x is not started, all members must be running to perform an upgrade", member.ID)
		}

		for _, u := range member.ClientURLs {
			if _, err := cli.Status(ctx, u); err != nil {
				return fmt.Errorf("etcd member %016x is not healthy; all members must be healthy to perform an upgrade: %w", member.ID, err)
			}
		}
	}

	return nil
}
