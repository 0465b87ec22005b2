package store

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdCompactionChunk is how many log records one compaction transaction folds: each costs at most two operations
// (its delete and its resource's snapshot), under etcd's default limit of 128 operations per transaction.
const etcdCompactionChunk = 60

// RunRetention compacts the log in etcd by the store's retention (WithRetention), by the rule of the bbolt store
// (the oldest records beyond the count or older than the age are folded into each resource's snapshot), until ctx
// ends: at once, then every compaction interval. Only the leader runs it, with its fence in ctx (WithFence), so
// two replicas never compact at once and a replica that lost its term stops compacting. Errors are logged; the
// next round tries again.
func (s *EtcdStore) RunRetention(ctx context.Context) {
	if !s.opts.retention.enabled() {
		return
	}

	for {
		if err := s.compact(ctx); err != nil && ctx.Err() == nil {
			s.opts.logger.Warn("compacting the event log in etcd", zap.Error(err))
		}

		select {
		case <-ctx.Done():
			return
		case <-time.After(s.opts.compactionInterval):
		}
	}
}

// compact folds chunks until nothing is beyond the retention.
func (s *EtcdStore) compact(ctx context.Context) error {
	for {
		n, err := s.compactChunk(ctx)
		if err != nil || n == 0 {
			return err
		}
	}
}

func (s *EtcdStore) retainedKey() string { return s.prefix + "/meta/retained" }

func (s *EtcdStore) snapshotKey(resKey []byte) string {
	return s.prefix + "/snapshot/" + hex.EncodeToString(resKey)
}

// compactChunk folds the oldest records beyond the retention, at most etcdCompactionChunk of them, in one
// transaction: each resource's newest folded state becomes its snapshot (a destroyed one has none), the records go,
// and where the log now begins is recorded. The transaction commits only if every record is still there and the
// fence holds.
func (s *EtcdStore) compactChunk(ctx context.Context) (int, error) {
	logPrefix := s.prefix + "/log/"

	count, err := s.cli.Get(ctx, logPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("counting the log: %w", err)
	}

	var excess int64
	if r := s.opts.retention; r.MaxEvents > 0 && uint64(count.Count) > r.MaxEvents {
		excess = count.Count - int64(r.MaxEvents)
	}

	oldest, err := s.cli.Get(ctx, logPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend),
		clientv3.WithLimit(etcdCompactionChunk))
	if err != nil {
		return 0, fmt.Errorf("reading the oldest log records: %w", err)
	}

	cutoff := time.Now().Add(-s.opts.retention.MaxAge)

	var (
		cmps     []clientv3.Cmp
		ops      []clientv3.Op
		last     *mvccpb.KeyValue
		lastTime time.Time
		folded   int
		newest   = map[string][]byte{} // snapshot key -> the newest folded record; nil for a destroy
	)

	for i, kv := range oldest.Kvs {
		rec, err := decodeRecord(kv.Value)
		if err != nil {
			return 0, fmt.Errorf("%w: log record %s: %w", ErrCorrupt, kv.Key, err)
		}

		if int64(i) >= excess && (s.opts.retention.MaxAge == 0 || !rec.time.Before(cutoff)) {
			break
		}

		if rec.kind == KindDestroyed {
			newest[s.snapshotKey(rec.key)] = nil
		} else {
			newest[s.snapshotKey(rec.key)] = kv.Value // the record: the state and the version it has
		}

		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
		ops = append(ops, clientv3.OpDelete(string(kv.Key)))
		last, lastTime = kv, rec.time
		folded++
	}

	if last == nil {
		return 0, nil
	}

	for key, data := range newest {
		if data == nil {
			ops = append(ops, clientv3.OpDelete(key))
		} else {
			ops = append(ops, clientv3.OpPut(key, string(data)))
		}
	}

	retained := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, uint64(last.ModRevision)), uint64(lastTime.UnixNano()))
	ops = append(ops, clientv3.OpPut(s.retainedKey(), string(retained)))

	if f, ok := ctx.Value(fenceKey{}).(Fence); ok {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Revision))
	}

	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("folding %d log records: %w", len(cmps), err)
	}

	if !resp.Succeeded {
		return 0, fmt.Errorf("folding log records: %w, or another compaction ran", ErrNotLeader)
	}

	return folded, nil
}

// retained reads where the retained log begins: the first revision still in it, and the time of the newest folded
// record (zero when nothing was folded).
func (s *EtcdStore) retained(ctx context.Context) (uint64, time.Time, error) {
	resp, err := s.cli.Get(ctx, s.retainedKey())
	if err != nil {
		return 0, time.Time{}, err
	}

	if len(resp.Kvs) == 0 {
		return 1, time.Time{}, nil
	}

	v := resp.Kvs[0].Value
	if len(v) != 16 {
		return 0, time.Time{}, fmt.Errorf("%w: %s", ErrCorrupt, s.retainedKey())
	}

	return binary.BigEndian.Uint64(v[:8]) + 1, time.Unix(0, int64(binary.BigEndian.Uint64(v[8:]))), nil
}
