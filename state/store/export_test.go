package store

import (
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"go.etcd.io/bbolt"
)

// BuildLog writes a state file directly, bypassing the durable path, for benchmarks that need a large history:
// resources resources created and then updated round-robin until the log holds events events. newResource
// returns resource i (its ID must sort by i) at a version; txSize bounds each bbolt transaction.
func BuildLog(path string, resources, events int, newResource func(i int, version uint64) resource.Resource) error {
	s, err := Open(path)
	if err != nil {
		return err
	}

	if err = s.Close(); err != nil {
		return err
	}

	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, NoSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return err
	}

	defer db.Close() //nolint:errcheck

	const txSize = 100_000

	keys := make([][]byte, resources)
	now := time.Now()

	for start := 0; start < events; start += txSize {
		err = db.Update(func(tx *bbolt.Tx) error {
			logB, stateB := tx.Bucket(bucketLog), tx.Bucket(bucketState)
			logB.FillPercent = 1

			for j := start; j < min(start+txSize, events); j++ {
				i, version := j%resources, uint64(j/resources)+1
				res := newResource(i, version)

				data, err := marshaler.MarshalResource(res)
				if err != nil {
					return err
				}

				md := res.Metadata()
				if keys[i] == nil {
					keys[i] = resourceKey(md.Namespace(), md.Type(), md.ID())
				}

				rec := &record{kind: KindUpdated, time: now, version: version, writer: []byte("bench"), key: keys[i], data: data}
				if version == 1 {
					rec.kind = KindCreated
				}

				if err = logB.Put(seqKey(uint64(j)+1), encodeRecord(rec)); err != nil {
					return err
				}

				if err = stateB.Put(keys[i], data); err != nil {
					return err
				}
			}

			return nil
		})
		if err != nil {
			return fmt.Errorf("building log: %w", err)
		}
	}

	// The index in key order: resource i's events are at seq i+1, i+1+resources, ...
	for start := 0; start < resources; start += txSize / 10 {
		err = db.Update(func(tx *bbolt.Tx) error {
			indexB := tx.Bucket(bucketIndex)
			indexB.FillPercent = 1

			for i := start; i < min(start+txSize/10, resources); i++ {
				for seq := uint64(i) + 1; seq <= uint64(events); seq += uint64(resources) {
					if err := indexB.Put(indexKey(keys[i], seq), nil); err != nil {
						return err
					}
				}
			}

			return nil
		})
		if err != nil {
			return fmt.Errorf("building index: %w", err)
		}
	}

	return db.Sync()
}
