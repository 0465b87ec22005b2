// Package leader chooses, among the engine replicas that share a state in etcd, the one that runs the controllers:
// an etcd election (go.etcd.io/etcd/client/v3/concurrency) on a lease that the replica keeps alive. It is the one
// home of when a replica leads, when it stops, and of what `upshift status` says about it.
//
// A term ends when the lease can no longer be kept (etcd unreachable or without quorum for the lease's TTL, the
// replica paused past it, the key deleted): the context given to the term's work ends at once, and every write the
// work makes meanwhile carries the term's store.Fence, so etcd refuses it once another replica may lead.
package leader

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/state/store"
)

// ElectionPrefix is the etcd prefix of the election among replicas.
const ElectionPrefix = store.DefaultEtcdPrefix + "/leader"

// DefaultLeaseTTL is how long a leader that stopped renewing its lease (killed, paused, cut off) keeps the
// leadership: another replica takes over within this time, plus the election's round trip.
const DefaultLeaseTTL = 5 * time.Second

// statusTimeout bounds the etcd read behind Status: etcd without quorum answers no linearizable read.
const statusTimeout = 2 * time.Second

// retryDelay is the pause before a replica that could not campaign (etcd unreachable) tries again.
const retryDelay = time.Second

// Elector campaigns for one replica.
type Elector struct {
	cli     *clientv3.Client
	logger  *zap.Logger
	replica string
	ttl     time.Duration

	mu      sync.Mutex
	leading bool
	problem string // why the replica cannot lead or campaign, "" when nothing is wrong
}

// New returns the elector of the replica named replica (what `upshift status` shows as the leader), with leases of
// ttl (rounded to whole seconds, at least one).
func New(cli *clientv3.Client, replica string, ttl time.Duration, logger *zap.Logger) *Elector {
	return &Elector{cli: cli, logger: logger, replica: replica, ttl: max(ttl, time.Second)}
}

// Run campaigns until ctx ends. Each time the replica wins, it runs lead with a context that ends as soon as the
// lease is lost, and the fence of the term; lead must return once its context ends. On ctx's end the leadership is
// resigned, so another replica takes over without waiting for the lease to expire.
func (e *Elector) Run(ctx context.Context, lead func(context.Context, store.Fence)) {
	for ctx.Err() == nil {
		if err := e.term(ctx, lead); err != nil && ctx.Err() == nil {
			e.setProblem(err.Error())
			e.logger.Error("cannot lead; campaigning again", zap.Error(err), zap.Duration("after", retryDelay))

			select {
			case <-ctx.Done():
			case <-time.After(retryDelay):
			}
		}
	}
}

// term waits to be elected, runs one term and returns why it ended.
func (e *Elector) term(ctx context.Context, lead func(context.Context, store.Fence)) error {
	session, err := concurrency.NewSession(e.cli, concurrency.WithTTL(int((e.ttl+time.Second-1)/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("opening a lease in etcd: %w", err)
	}

	defer session.Close() //nolint:errcheck // revoking the lease is a courtesy: it expires anyway

	election := concurrency.NewElection(session, ElectionPrefix)

	// A campaign outlives a lost lease unless cut short: end it with the session.
	campaignCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	go func() {
		select {
		case <-session.Done():
			cancel()
		case <-campaignCtx.Done():
		}
	}()

	e.logger.Info("campaigning for leadership", zap.String("replica", e.replica))

	if err = election.Campaign(campaignCtx, e.replica); err != nil {
		if ctx.Err() != nil {
			return nil
		}

		return fmt.Errorf("campaigning: %w (lease lost or etcd unreachable)", err)
	}

	fence := store.Fence{Key: election.Key(), Revision: election.Rev()}
	started := time.Now()

	e.setLeading(true)
	e.logger.Info("leading: running the controllers", zap.String("replica", e.replica), zap.String("election_key", fence.Key),
		zap.Int64("revision", fence.Revision))

	lead(campaignCtx, fence)

	e.setLeading(false)

	if ctx.Err() != nil {
		// The engine stops: hand the leadership over now rather than when the lease expires.
		resignCtx, cancelResign := context.WithTimeout(context.WithoutCancel(ctx), statusTimeout)
		defer cancelResign()

		return election.Resign(resignCtx)
	}

	return fmt.Errorf("lost the leadership lease after %s (etcd unreachable, without quorum, or this replica paused past the lease's %s); controllers stopped",
		time.Since(started).Round(time.Millisecond), e.ttl)
}

func (e *Elector) setLeading(leading bool) {
	e.mu.Lock()
	defer e.mu.Unlock()

	e.leading = leading
	if leading {
		e.problem = ""
	}
}

func (e *Elector) setProblem(problem string) {
	e.mu.Lock()
	defer e.mu.Unlock()

	e.problem = problem
}

// Status is what a replica knows of the election.
type Status struct {
	// Replica is this replica's name.
	Replica string
	// Leader is the leading replica's name as etcd has it; "" when none leads or etcd could not say.
	Leader string
	// Problem says why the replica cannot read the leader from etcd or cannot lead ("" when nothing is wrong).
	Problem string
	// Leading is whether this replica runs the controllers.
	Leading bool
	// Unreadable is set when etcd answered no read: the state cannot be read either until it does.
	Unreadable bool
}

// Status reads the leader from etcd (a linearizable read, so without quorum it fails and says so).
func (e *Elector) Status(ctx context.Context) Status {
	e.mu.Lock()
	st := Status{Replica: e.replica, Leading: e.leading, Problem: e.problem}
	e.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()

	resp, err := e.cli.Get(ctx, ElectionPrefix+"/", append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)

	switch {
	case err != nil:
		st.Problem, st.Unreadable = fmt.Sprintf("etcd answers no read (unreachable or without quorum): %v", err), true
	case len(resp.Kvs) > 0:
		st.Leader = string(resp.Kvs[0].Value)
	}

	return st
}
