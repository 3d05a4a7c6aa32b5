package outbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
)

func sampleEntries() []Entry {
	at := time.UnixMilli(1_900_000_000_123)
	return []Entry{
		{Op: OpObject, Key: casKey("deadbeef"), Version: storage.MakeVersion(1_900_000_000_000, 7), EnqueuedAt: at},
		{Op: OpObject, Key: storage.Key{Tenant: "t", Namespace: "ns", Kind: storage.KindKeyValue, Name: strings.Repeat("é", 512)}, Version: 1, EnqueuedAt: at},
		{Op: OpTombstone, Tombstone: storage.Tombstone{Tenant: "acme", Namespace: "app", Version: 99}, Version: 99, EnqueuedAt: at},
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for _, e := range sampleEntries() {
		b, err := AppendEntry([]byte("prefix"), e)
		if err != nil {
			t.Fatalf("encode %s: %v", e.describe(), err)
		}
		if !bytes.HasPrefix(b, []byte("prefix")) {
			t.Fatalf("AppendEntry lost the prefix")
		}
		got, err := DecodeEntry(b[len("prefix"):])
		if err != nil {
			t.Fatalf("decode %s: %v", e.describe(), err)
		}
		if got.Op != e.Op || got.Key != e.Key || got.Tombstone != e.Tombstone || got.Version != e.Version || !got.EnqueuedAt.Equal(e.EnqueuedAt) {
			t.Fatalf("round trip: got %+v, want %+v", got, e)
		}
	}
	typical := Entry{Op: OpObject, Key: casKey(strings.Repeat("f", 64)), Version: storage.MakeVersion(time.Now().UnixMilli(), 0), EnqueuedAt: time.Now()}
	b, err := AppendEntry(nil, typical)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("an object entry with a 64-character name encodes to %d bytes", len(b))
}

func TestEntryRejectsDamage(t *testing.T) {
	good, err := AppendEntry(nil, sampleEntries()[0])
	if err != nil {
		t.Fatal(err)
	}
	// Every single-bit flip is caught (by the CRC, whatever field it hits).
	for i := range len(good) * 8 {
		b := bytes.Clone(good)
		b[i/8] ^= 1 << (i % 8)
		if _, err := DecodeEntry(b); !errors.Is(err, ErrBadEntry) {
			t.Fatalf("bit %d flipped: err = %v, want ErrBadEntry", i, err)
		}
	}
	for n := range len(good) {
		if _, err := DecodeEntry(good[:n]); !errors.Is(err, ErrBadEntry) {
			t.Fatalf("truncated to %d bytes: err = %v", n, err)
		}
	}
	// A well-formed frame around a bad payload: unknown format, unknown op, trailing bytes.
	reseal := func(body []byte) []byte {
		return append(body, crcLE(body)...)
	}
	body := good[:len(good)-4]
	for name, b := range map[string][]byte{
		"format":   reseal(append([]byte{9}, body[1:]...)),
		"op":       reseal(append([]byte{body[0], 7}, body[2:]...)),
		"trailing": reseal(append(bytes.Clone(body), 0)),
	} {
		if _, err := DecodeEntry(b); !errors.Is(err, ErrBadEntry) {
			t.Fatalf("%s: err = %v, want ErrBadEntry", name, err)
		}
	}
}

func TestEntryValidation(t *testing.T) {
	for name, e := range map[string]Entry{
		"unknown op":        {Op: 0, Key: casKey("a")},
		"empty key":         {Op: OpObject, Key: storage.Key{Tenant: "a", Namespace: "b", Kind: storage.KindCAS}},
		"unknown kind":      {Op: OpObject, Key: storage.Key{Tenant: "a", Namespace: "b", Kind: "nope", Name: "c"}},
		"NUL in tombstone":  {Op: OpTombstone, Tombstone: storage.Tombstone{Tenant: "a\x00", Namespace: "b"}},
		"version disagrees": {Op: OpTombstone, Tombstone: storage.Tombstone{Tenant: "a", Namespace: "b", Version: 1}, Version: 2},
	} {
		if _, err := AppendEntry(nil, e); err == nil {
			t.Errorf("%s: encoded without error", name)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	for _, e := range sampleEntries() {
		b, _ := AppendEntry(nil, e)
		f.Add(b)
		e.Trace = commitSpan
		b, _ = AppendEntry(nil, e)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEntry(b)
		if err != nil {
			if !errors.Is(err, ErrBadEntry) {
				t.Fatalf("error does not wrap ErrBadEntry: %v", err)
			}
			return
		}
		// Whatever decodes is valid and survives another round trip unchanged.
		again, err := AppendEntry(nil, e)
		if err != nil {
			t.Fatalf("decoded entry does not encode: %v", err)
		}
		e2, err := DecodeEntry(again)
		if err != nil || e2.Op != e.Op || e2.Key != e.Key || e2.Tombstone != e.Tombstone || e2.Version != e.Version || !e2.EnqueuedAt.Equal(e.EnqueuedAt) ||
			!e2.Trace.Equal(e.Trace) || !bytes.Equal(again, b) {
			t.Fatalf("second round trip: %+v, %v; want %+v", e2, err, e)
		}
	})
}

func crcLE(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(nil, crc32.Checksum(b, castagnoli))
}
