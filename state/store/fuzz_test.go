package store

import (
	"bytes"
	"testing"
	"time"
)

// FuzzDecodeRecord feeds arbitrary bytes to the event-log record decoder and to what reads a record back (the
// resource key, the event with its resource, sealed or not): nothing panics, and a record that decodes encodes back
// to one that decodes the same.
func FuzzDecodeRecord(f *testing.F) {
	c, err := newCodec(bytes.Repeat([]byte{9}, KeySize))
	if err != nil {
		f.Fatal(err)
	}

	key := resourceKey("upshift", "Clusters.upshift.dev", "prod")
	f.Add(encodeRecord(&record{kind: KindCreated, time: time.Unix(0, 1), version: 1, writer: []byte("user:alice"), key: key, data: []byte{0x0a, 0x00}}))
	f.Add(encodeRecord(&record{kind: KindDestroyed, time: time.Unix(1e9, 0), version: 7, key: key, data: append([]byte{sealedFormat}, make([]byte, 30)...)}))
	f.Add(encodeRecord(&record{kind: KindUpdated, version: 1 << 62, writer: bytes.Repeat([]byte("w"), 300), key: []byte{0xff}}))
	f.Add([]byte{recordFormat, byte(KindUpdated), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}

		again, err := decodeRecord(encodeRecord(&r))
		if err != nil {
			t.Fatalf("a decoded record does not decode once encoded again: %v", err)
		}

		if again.kind != r.kind || !again.time.Equal(r.time) || again.version != r.version ||
			!bytes.Equal(again.writer, r.writer) || !bytes.Equal(again.key, r.key) || !bytes.Equal(again.data, r.data) {
			t.Fatalf("record changed in a round trip: %+v -> %+v", r, again)
		}

		_ = describeKey(r.key)
		_, _ = c.decodeEvent(seqKey(1), b)       //nolint:errcheck // only panics matter here
		_, _ = codec{}.decodeEvent(seqKey(1), b) //nolint:errcheck
		_, _ = c.unmarshal(r.data)               //nolint:errcheck
	})
}
