package segment

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/kuracache/kura/storage"
)

// FuzzReadDamagedRecord damages one byte of a stored record (its body, CRC table or footer:
// whatever a disk, a stray process or an attacker with access to the data directory could
// change) and reads a range of it back. The reader decodes untrusted bytes from disk; the
// invariant is the store's first promise: it never serves a byte that differs from what was
// written. It may refuse (storage.ErrCorrupt), never misread, never panic.
func FuzzReadDamagedRecord(f *testing.F) {
	f.Add(uint32(100), uint32(3), byte(0x01), uint32(0), uint32(100))
	f.Add(uint32(BlockSize+10), uint32(BlockSize+2), byte(0x80), uint32(BlockSize), uint32(10))
	f.Add(uint32(200<<10), uint32(200<<10+5), byte(0xff), uint32(0), uint32(1<<20)) // a streamed record, footer hit
	f.Add(uint32(0), uint32(1), byte(0x10), uint32(0), uint32(0))
	f.Add(uint32(3*BlockSize), uint32(3*BlockSize+4), byte(0x04), uint32(BlockSize), uint32(BlockSize)) // CRC table
	f.Fuzz(func(t *testing.T, size, pos uint32, xor byte, off, length uint32) {
		bodySize := int(size % (300 << 10)) // both the whole-record and the streamed read paths
		m := openManager(t, Options{})
		name := "acme\x00ios\x00cas\x00fuzzed"
		body := testBody(uint64(size), bodySize)
		loc := commit(t, m, name, body)

		damaged := int64(pos) % loc.RecordSize
		if xor != 0 {
			file, err := os.OpenFile(m.segPath(loc.Segment), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := file.ReadAt(b, loc.Offset+damaged); err != nil {
				t.Fatal(err)
			}
			b[0] ^= xor
			if _, err := file.WriteAt(b, loc.Offset+damaged); err != nil {
				t.Fatal(err)
			}
			if err := file.Close(); err != nil {
				t.Fatal(err)
			}
		}

		start := int64(off) % (int64(bodySize) + 1)
		n := int64(length) % (int64(bodySize) - start + 1)
		got, err := readRecord(m, loc, name, start, n)
		if err != nil {
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("damaged byte %d of %d (xor %#x): read [%d,+%d) failed with %v, want an error wrapping storage.ErrCorrupt",
					damaged, loc.RecordSize, xor, start, n, err)
			}
			if xor == 0 {
				t.Fatalf("an undamaged record was refused: %v", err)
			}
			return
		}
		if want := body[start : start+n]; !bytes.Equal(got, want) {
			t.Fatalf("damaged byte %d of %d (xor %#x): read [%d,+%d) served %d bytes that differ from the %d written",
				damaged, loc.RecordSize, xor, start, n, len(got), len(want))
		}
	})
}
