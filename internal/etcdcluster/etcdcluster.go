// Package etcdcluster runs a real etcd cluster of embedded members on loopback, for the engine's state in tests and
// benchmarks (several replicas on etcd): members can be stopped and started again on their data, to take quorum
// away and give it back.
package etcdcluster

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/upshift-io/upshift/internal/loopback"
)

// readyTimeout bounds how long a member may take to be ready.
const readyTimeout = time.Minute

// Cluster is an etcd cluster of embedded members.
type Cluster struct {
	logger  *zap.Logger
	dir     string
	members []*member
	fsync   bool
}

// Option configures Start.
type Option func(*Cluster)

// WithFsync makes the members sync their WAL to disk as etcd does in production, for benchmarks of durable
// writes; tests skip it (the members' data is thrown away with the test).
func WithFsync() Option {
	return func(c *Cluster) { c.fsync = true }
}

type member struct {
	name            string
	peerURL, client string
	initialCluster  string

	mu   sync.Mutex
	etcd *embed.Etcd // nil while stopped
}

// Start starts a cluster of n members keeping their data under dir, and waits until every member is ready.
// logger receives etcd's own errors (nil: none).
func Start(dir string, n int, logger *zap.Logger, opts ...Option) (*Cluster, error) {
	if logger == nil {
		logger = zap.NewNop()
	}

	c := &Cluster{logger: logger, dir: dir}
	for _, opt := range opts {
		opt(c)
	}

	var initial []string

	for i := range n {
		peer, err := loopback.Addr()
		if err != nil {
			return nil, err
		}

		client, err := loopback.Addr()
		if err != nil {
			return nil, err
		}

		m := &member{name: fmt.Sprintf("etcd-%d", i), peerURL: "http://" + peer, client: "http://" + client}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL)
	}

	// A new cluster's members wait for each other (quorum) before any is ready: start them all, then wait.
	errs := make([]error, n)

	var wg sync.WaitGroup

	for i, m := range c.members {
		m.initialCluster = strings.Join(initial, ",")

		wg.Go(func() { errs[i] = c.StartMember(i) })
	}

	wg.Wait()

	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(err, c.Close())
	}

	return c, nil
}

// Endpoints are the client URLs of every member, for clientv3 and `upshift serve --etcd-endpoints`.
func (c *Cluster) Endpoints() []string {
	out := make([]string, 0, len(c.members))
	for _, m := range c.members {
		out = append(out, m.client)
	}

	return out
}

// StopMember stops member i, keeping its data: a crash of that machine's etcd.
func (c *Cluster) StopMember(i int) {
	m := c.members[i]

	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()

	if e != nil {
		e.Close()
	}
}

// StartMember starts member i on its data (again) and waits until it is ready; a member of a cluster without
// quorum is ready only once quorum returns, so starting the second of three stopped members waits for it.
func (c *Cluster) StartMember(i int) error {
	m := c.members[i]

	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = filepath.Join(c.dir, m.name)
	cfg.InitialClusterToken = "upshift-test"
	cfg.InitialCluster = m.initialCluster
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.UnsafeNoFsync = !c.fsync
	// etcd logs errors on every shutdown (closed listeners); its real failures reach callers as errors anyway.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.logger.Named(m.name).WithOptions(zap.IncreaseLevel(zapcore.DPanicLevel)))

	peer, err := url.Parse(m.peerURL)
	if err != nil {
		return err
	}

	client, err := url.Parse(m.client)
	if err != nil {
		return err
	}

	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}

	e, err := StartEmbedded(context.Background(), cfg, readyTimeout)
	if err != nil {
		return err
	}

	m.mu.Lock()
	m.etcd = e
	m.mu.Unlock()

	return nil
}

// Close stops every member.
func (c *Cluster) Close() error {
	for i := range c.members {
		c.StopMember(i)
	}

	return nil
}

// StartEmbedded starts an embedded etcd member from cfg and waits until it is ready (it has joined a quorum), at
// most timeout or until ctx ends; a member that is not ready is closed again.
func StartEmbedded(ctx context.Context, cfg *embed.Config, timeout time.Duration) (*embed.Etcd, error) {
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting etcd member %q: %w", cfg.Name, err)
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()

	select {
	case <-e.Server.ReadyNotify():
	case err = <-e.Err():
	case <-timer.C:
		err = fmt.Errorf("not ready within %s", timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}

	if err != nil {
		e.Close()

		return nil, fmt.Errorf("waiting for etcd member %q: %w", cfg.Name, err)
	}

	return e, nil
}
