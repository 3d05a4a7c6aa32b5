package segment

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
)

func TestFooterRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
	}{
		{"", 0},
		{"k", 1},
		{"tenant\x00ns\x00cas\x00" + strings.Repeat("a", 64), 5 << 20},
		{strings.Repeat("n", MaxNameBytes), 1 << 40},
	} {
		in := footer{name: []byte(tc.name), bodySize: tc.size, sha256: sha256.Sum256([]byte(tc.name))}
		b := appendFooter([]byte("prefix"), in)[len("prefix"):]
		if int64(len(b)) != footerLen(len(tc.name)) {
			t.Fatalf("encoded %d bytes, footerLen says %d", len(b), footerLen(len(tc.name)))
		}
		out, err := decodeFooter(b)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !bytes.Equal(out.name, in.name) || out.bodySize != in.bodySize || out.sha256 != in.sha256 {
			t.Fatalf("round trip changed the footer: %+v", out)
		}
	}
}

func TestDecodeFooterRejects(t *testing.T) {
	good := appendFooter(nil, footer{name: []byte("name"), bodySize: 42})
	// reseal recomputes the footer CRC so the test reaches the check after it.
	reseal := func(b []byte) []byte {
		n := len(b) - footerTailLen
		binary.LittleEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
		return b
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "need at least"},
		{"short", good[:footerOverhead-1], "need at least"},
		{"truncated front", good[1:], "footer length field"},
		{"length field", edit(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), "footer length field"},
		{"crc", edit(func(b []byte) []byte { b[len(b)-footerTailLen] ^= 1; return b }), "footer CRC"},
		{"body size bit flip", edit(func(b []byte) []byte { b[12] ^= 1; return b }), "footer CRC"},
		{"name bit flip", edit(func(b []byte) []byte { b[footerHeadLen] ^= 1; return b }), "footer CRC"},
		{"magic", edit(func(b []byte) []byte { b[0] = 'X'; return reseal(b) }), "magic"},
		{"version", edit(func(b []byte) []byte { b[4] = 9; return reseal(b) }), "version"},
		{"reserved", edit(func(b []byte) []byte { b[6] = 1; return reseal(b) }), "reserved"},
		{"name length", edit(func(b []byte) []byte { b[8]++; return reseal(b) }), "name length"},
		{"negative size", edit(func(b []byte) []byte { b[19] = 0xff; return reseal(b) }), "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeFooter(tc.b)
			if !errors.Is(err, errFooter) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decodeFooter = %v, want an errFooter mentioning %q", err, tc.want)
			}
		})
	}
}

func TestRecordSize(t *testing.T) {
	for _, tc := range []struct{ body, want int64 }{
		{0, 0},
		{1, 1 + 4},
		{BlockSize - 1, BlockSize - 1 + 4},
		{BlockSize, BlockSize + 4},
		{BlockSize + 1, BlockSize + 1 + 8},
	} {
		if got := RecordSize(tc.body, 3) - footerLen(3); got != tc.want {
			t.Errorf("RecordSize(%d) without footer = %d, want %d", tc.body, got, tc.want)
		}
	}
}

// FuzzDecodeFooter feeds arbitrary bytes to the footer decoder, which reads whatever is on
// disk: it must never panic, and whatever it accepts must re-encode to the same bytes (so no
// two encodings decode alike and no field is silently ignored).
func FuzzDecodeFooter(f *testing.F) {
	f.Add(appendFooter(nil, footer{}))
	f.Add(appendFooter(nil, footer{name: []byte("t\x00n\x00cas\x00abc"), bodySize: 5 << 20, sha256: sha256.Sum256(nil)}))
	f.Add([]byte("KSEG"))
	f.Add(bytes.Repeat([]byte{0xff}, footerOverhead+3))
	f.Fuzz(func(t *testing.T, b []byte) {
		ft, err := decodeFooter(b)
		if err != nil {
			if !errors.Is(err, errFooter) {
				t.Fatalf("error does not wrap errFooter: %v", err)
			}
			return
		}
		if again := appendFooter(nil, ft); !bytes.Equal(again, b) {
			t.Fatalf("accepted footer re-encodes differently:\n in %x\nout %x", b, again)
		}
	})
}

func TestBufCap(t *testing.T) {
	for _, tc := range []struct{ need, limit, want int }{
		{1, 1 << 20, minPooledBuf},
		{4096, 1 << 20, 4096},
		{4097, 1 << 20, 8192},
		{600 << 10, 1<<20 + 100, 1 << 20},
		{1<<20 + 50, 1<<20 + 100, 1<<20 + 100}, // next power of two exceeds the limit
		{10, 100, 100},
	} {
		if got := bufCap(tc.need, tc.limit); got != tc.want {
			t.Errorf("bufCap(%d, %d) = %d, want %d", tc.need, tc.limit, got, tc.want)
		}
	}
	b := append(getBuf(8192), "x"...)
	putBuf(b)
	if got := getBuf(8192); len(got) != 0 || cap(got) != 8192 {
		t.Fatalf("pooled buffer came back with len %d cap %d", len(got), cap(got))
	}
	if got := getBuf(5000); cap(got) != 5000 {
		t.Fatalf("odd sizes are allocated exactly, got cap %d", cap(got))
	}
}
