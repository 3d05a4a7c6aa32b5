package meta

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/kuracache/kura/storage"
)

// goldenSum is the digest used by the golden manifests below: bytes 0..31.
func goldenSum() (sum [32]byte) {
	for i := range sum {
		sum[i] = byte(i)
	}
	return sum
}

// Manifests as the codec wrote them before attributes existed (commit a76dfe7), in hex. They
// must keep decoding, and a manifest without attributes must still encode to these bytes, so
// an upgraded node reads its old data directory and writes what an older node reads.
var goldenManifests = []struct {
	hex string
	m   Manifest
}{
	{
		"0100808080c0d6fcf3c50105000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f186170706c69636174696f6e2f6f637465742d73747265616d07802005409fc5d2d0",
		Manifest{Location: Location{Segment: 7, Offset: 4096, BodySize: 5, RecordSize: 64}, Size: 5, ContentType: "application/octet-stream",
			SHA256: goldenSum(), Version: storage.Version(1700000000000 << 16)},
	},
	{
		"01022a05000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f03612f62581d4582",
		Manifest{Evicted: true, Size: 5, ContentType: "a/b", SHA256: goldenSum(), Version: 42},
	},
	{
		"01012b02000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f106170706c69636174696f6e2f6a736f6e027b7d80c11f48",
		Manifest{Inline: true, Body: []byte("{}"), Size: 2, ContentType: "application/json", SHA256: goldenSum(), Version: 43},
	},
}

func sameManifest(a, b Manifest) bool {
	return a.Inline == b.Inline && a.Evicted == b.Evicted && a.Location == b.Location && bytes.Equal(a.Body, b.Body) &&
		a.Size == b.Size && a.ContentType == b.ContentType && a.SHA256 == b.SHA256 && a.Version == b.Version &&
		a.Attributes == b.Attributes
}

func TestManifestOldFormatDecodes(t *testing.T) {
	for i, g := range goldenManifests {
		v, err := hex.DecodeString(g.hex)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeManifest(v)
		if err != nil {
			t.Fatalf("golden %d: %v", i, err)
		}
		if !sameManifest(got, g.m) || !got.Attributes.IsZero() {
			t.Fatalf("golden %d: got %+v want %+v", i, got, g.m)
		}
		enc, err := EncodeManifest(g.m)
		if err != nil || !bytes.Equal(enc, v) {
			t.Fatalf("golden %d: a manifest without attributes encodes to %x, want the old bytes %x (%v)", i, enc, v, err)
		}
	}
}

func TestManifestAttributesRoundTrip(t *testing.T) {
	attrs, err := storage.NewAttributes(map[string]string{"turbo.duration-ms": "1234", "turbo.tag": "c2lnbmF0dXJl"})
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range goldenManifests {
		m := g.m
		m.Attributes = attrs
		v, err := EncodeManifest(m)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		got, err := DecodeManifest(v)
		if err != nil || !sameManifest(got, m) {
			t.Fatalf("case %d: got %+v, %v; want %+v", i, got, err, m)
		}
		if got.Info(key("ns", storage.KindTurbo, "h")).Attributes != attrs || got.Stub().Attributes != attrs {
			t.Fatalf("case %d: Info or Stub dropped the attributes", i)
		}
		for pos := range v {
			bad := bytes.Clone(v)
			bad[pos] ^= 0x10
			if _, err := DecodeManifest(bad); !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("case %d: flipping byte %d gave %v, want ErrCorrupt", i, pos, err)
			}
		}
	}
}

func TestManifestAttributesFlagWithoutAttributesIsCorrupt(t *testing.T) {
	// A sealed value whose flag promises attributes but carries an empty encoding: the CRC
	// is right, so only the decoder's own check can refuse it.
	m := goldenManifests[1].m
	v, _ := EncodeManifest(m)
	p := bytes.Clone(v[:len(v)-4])
	p[1] |= flagAttributes
	p = append(p, 0) // a zero-length attributes field
	if _, err := DecodeManifest(seal(p)); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("got %v, want ErrCorrupt", err)
	}
}

func TestManifestAttributesPersist(t *testing.T) {
	dir := t.TempDir()
	db := openTestDB(t, dir)
	attrs, _ := storage.NewAttributes(map[string]string{"turbo.duration-ms": "7"})
	k := key("ns", storage.KindTurbo, "abc")
	m := segManifest(1, 0, "body", 10)
	m.Attributes = attrs
	commit(t, db, func(b *Batch) error { return b.PutManifest(k, m, nil) })
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := openTestDB(t, dir).GetManifest(k)
	if err != nil || got.Attributes != attrs {
		t.Fatalf("GetManifest = %+v, %v", got, err)
	}
}
