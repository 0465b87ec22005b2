package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Bucket names of the bbolt file; see the package documentation for what each holds.
var (
	bucketMeta     = []byte("meta")
	bucketState    = []byte("state")
	bucketLog      = []byte("log")
	bucketIndex    = []byte("index")
	bucketSnapshot = []byte("snapshot")

	keyMagic        = []byte("magic")
	keySchema       = []byte("schema")
	keySnapshotSeq  = []byte("snapshot-seq")
	keySnapshotTime = []byte("snapshot-time")

	magic = []byte("upshift-state")
)

// schemaVersion is the layout version written into the meta bucket; Open refuses newer files instead of guessing.
const schemaVersion = 1

// recordFormat is the first byte of every log record, so the record layout can evolve without a schema bump.
const recordFormat = 1

// EventKind says what a logged write did to its resource.
type EventKind uint8

// The kinds of logged writes, mirroring COSI's Created/Updated/Destroyed events.
const (
	KindCreated EventKind = iota + 1
	KindUpdated
	KindDestroyed
)

// String returns the lower-case name used by the CLI's history output.
func (k EventKind) String() string {
	switch k {
	case KindCreated:
		return "created"
	case KindUpdated:
		return "updated"
	case KindDestroyed:
		return "destroyed"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
}

// errMalformed marks a record or key that cannot be decoded; Verify reports it, Open refuses the file.
var errMalformed = errors.New("malformed record")

// record is one log entry. Decoded records alias the buffer they were decoded from (writer, key, data), so
// replaying a million of them allocates nothing per record.
type record struct {
	seq     uint64 // set when enqueued; the log key
	kind    EventKind
	time    time.Time
	version uint64
	writer  []byte
	key     []byte // resourceKey of the written resource
	data    []byte // marshaled resource: the new state, or the last state for a destroy
}

// resourceKey addresses a resource in the state, snapshot and index buckets: length-prefixed namespace, type and
// id, so that keys of one (namespace, type) share a prefix and no separator byte is reserved.
func resourceKey(ns, typ, id string) []byte {
	key := make([]byte, 0, len(ns)+len(typ)+len(id)+3*binary.MaxVarintLen16)

	return appendResourceKey(key, ns, typ, id)
}

func appendResourceKey(dst []byte, ns, typ, id string) []byte {
	dst = appendString(dst, ns)
	dst = appendString(dst, typ)

	return appendString(dst, id)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))

	return append(dst, s...)
}

// readBytes splits one length-prefixed field off b.
func readBytes(b []byte) (field, rest []byte, err error) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return nil, nil, errMalformed
	}

	return b[w : w+int(n)], b[w+int(n):], nil
}

func readString(b []byte) (string, []byte, error) {
	field, rest, err := readBytes(b)

	return string(field), rest, err
}

// parseResourceKey is the inverse of resourceKey.
func parseResourceKey(key []byte) (ns, typ, id string, err error) {
	if ns, key, err = readString(key); err != nil {
		return "", "", "", err
	}

	if typ, key, err = readString(key); err != nil {
		return "", "", "", err
	}

	if id, key, err = readString(key); err != nil {
		return "", "", "", err
	}

	if len(key) != 0 {
		return "", "", "", errMalformed
	}

	return ns, typ, id, nil
}

// seqKey is the log key of a sequence number: big-endian, so bbolt's byte order is the log order.
func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}

func parseSeqKey(key []byte) (uint64, error) {
	if len(key) != 8 {
		return 0, errMalformed
	}

	return binary.BigEndian.Uint64(key), nil
}

// indexKey points from a resource to one of its log entries: the resource key followed by the sequence number.
func indexKey(resKey []byte, seq uint64) []byte {
	key := make([]byte, 0, len(resKey)+8)
	key = append(key, resKey...)

	return binary.BigEndian.AppendUint64(key, seq)
}

// encodeRecord lays out a log record: format, kind, time, version, writer, resource key, then the marshaled
// resource as the remainder.
func encodeRecord(r *record) []byte {
	buf := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(r.writer)+len(r.key)+len(r.data))
	buf = append(buf, recordFormat, byte(r.kind))
	buf = binary.AppendVarint(buf, r.time.UnixNano())
	buf = binary.AppendUvarint(buf, r.version)
	buf = binary.AppendUvarint(buf, uint64(len(r.writer)))
	buf = append(buf, r.writer...)
	buf = binary.AppendUvarint(buf, uint64(len(r.key)))
	buf = append(buf, r.key...)

	return append(buf, r.data...)
}

// decodeRecord parses a log record without copying.
func decodeRecord(b []byte) (record, error) {
	var r record

	if len(b) < 2 || b[0] != recordFormat {
		return r, fmt.Errorf("%w: unknown record format", errMalformed)
	}

	r.kind = EventKind(b[1])
	if r.kind < KindCreated || r.kind > KindDestroyed {
		return r, fmt.Errorf("%w: unknown event kind %d", errMalformed, b[1])
	}

	b = b[2:]

	nanos, w := binary.Varint(b)
	if w <= 0 {
		return r, fmt.Errorf("%w: bad time", errMalformed)
	}

	r.time = time.Unix(0, nanos)
	b = b[w:]

	if r.version, w = binary.Uvarint(b); w <= 0 {
		return r, fmt.Errorf("%w: bad version", errMalformed)
	}

	var err error

	if r.writer, b, err = readBytes(b[w:]); err != nil {
		return r, err
	}

	if r.key, r.data, err = readBytes(b); err != nil {
		return r, err
	}

	return r, nil
}

func encodeUint64(v uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, v)
}

// decodeUint64 reads a meta counter; an absent key reads as zero.
func decodeUint64(b []byte) (uint64, error) {
	if b == nil {
		return 0, nil
	}

	if len(b) != 8 {
		return 0, errMalformed
	}

	return binary.BigEndian.Uint64(b), nil
}
