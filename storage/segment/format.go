package segment

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// BlockSize is the unit of checksumming: every 64 KiB of a body has its own CRC-32C, so a
// reader verifies what it hands out without reading the whole record first.
const BlockSize = 64 << 10

// MaxNameBytes bounds a record name. storage/local names records by the encoded object key
// (three identifiers of at most 1 KiB each plus the kind), so 64 KiB leaves ample room while
// keeping a corrupt footer from asking for a huge allocation.
const MaxNameBytes = 64 << 10

const (
	footerMagic   = "KSEG"
	formatVersion = 1

	// Footer layout (little endian):
	//   magic [4] | version u8 | reserved [3] (zero) | name length u32 | body size u64 |
	//   SHA-256 [32] | name [n] | CRC-32C of all preceding footer bytes u32 | footer length u32
	footerHeadLen = 4 + 1 + 3 + 4 + 8 + 32
	footerTailLen = 4 + 4
	// footerOverhead is the footer size without the name.
	footerOverhead = footerHeadLen + footerTailLen
	crcEntryLen    = 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errFooter is the cause of every footer decoding failure; OpenRecord wraps it in
// storage.ErrCorrupt together with the record's location.
var errFooter = errors.New("bad record footer")

// footer is the decoded trailer of a record.
type footer struct {
	name     []byte
	bodySize int64
	sha256   [32]byte
}

// blockCount is the number of 64 KiB blocks (and CRC table entries) of a body.
func blockCount(bodySize int64) int64 {
	return (bodySize + BlockSize - 1) / BlockSize
}

// footerLen is the encoded size of the footer for a name of nameLen bytes.
func footerLen(nameLen int) int64 { return int64(footerOverhead + nameLen) }

// RecordSize is the number of bytes a record with this body size and name occupies in a
// segment: body, CRC table and footer.
func RecordSize(bodySize int64, nameLen int) int64 {
	return bodySize + blockCount(bodySize)*crcEntryLen + footerLen(nameLen)
}

// appendFooter appends the encoded footer to dst.
func appendFooter(dst []byte, f footer) []byte {
	start := len(dst)
	dst = append(dst, footerMagic...)
	dst = append(dst, formatVersion, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(f.name)))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(f.bodySize))
	dst = append(dst, f.sha256[:]...)
	dst = append(dst, f.name...)
	dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
	return binary.LittleEndian.AppendUint32(dst, uint32(footerOverhead+len(f.name)))
}

// decodeFooter parses a complete footer (exactly the footer bytes, nothing before or after).
// The returned name aliases b. Every field is checked; any inconsistency is an error wrapping
// errFooter, never a panic, because the bytes come from disk and may be anything.
func decodeFooter(b []byte) (footer, error) {
	if len(b) < footerOverhead {
		return footer{}, fmt.Errorf("%w: %d bytes, need at least %d", errFooter, len(b), footerOverhead)
	}
	tail := b[len(b)-footerTailLen:]
	if declared := binary.LittleEndian.Uint32(tail[4:]); int64(declared) != int64(len(b)) {
		return footer{}, fmt.Errorf("%w: footer length field %d, have %d bytes", errFooter, declared, len(b))
	}
	covered := b[:len(b)-footerTailLen]
	if want, got := binary.LittleEndian.Uint32(tail[:4]), crc32.Checksum(covered, castagnoli); want != got {
		return footer{}, fmt.Errorf("%w: footer CRC %08x, computed %08x", errFooter, want, got)
	}
	if !bytes.Equal(b[:4], []byte(footerMagic)) {
		return footer{}, fmt.Errorf("%w: magic %q", errFooter, b[:4])
	}
	if b[4] != formatVersion {
		return footer{}, fmt.Errorf("%w: unsupported format version %d", errFooter, b[4])
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return footer{}, fmt.Errorf("%w: reserved bytes are not zero", errFooter)
	}
	nameLen := binary.LittleEndian.Uint32(b[8:])
	if int64(nameLen) != int64(len(b)-footerOverhead) || nameLen > MaxNameBytes {
		return footer{}, fmt.Errorf("%w: name length %d does not fit a %d-byte footer", errFooter, nameLen, len(b))
	}
	size := binary.LittleEndian.Uint64(b[12:])
	if size > math.MaxInt64/2 {
		return footer{}, fmt.Errorf("%w: body size %d out of range", errFooter, size)
	}
	var f footer
	f.bodySize = int64(size)
	copy(f.sha256[:], b[20:52])
	f.name = b[footerHeadLen : footerHeadLen+int(nameLen)]
	return f, nil
}

// crcTable accumulates the per-block CRC-32C of a body as it streams in.
type crcTable struct {
	sums []uint32
	cur  uint32 // CRC of the partial block being filled
	fill int    // bytes in the partial block
}

func (t *crcTable) write(p []byte) {
	for len(p) > 0 {
		n := min(len(p), BlockSize-t.fill)
		t.cur = crc32.Update(t.cur, castagnoli, p[:n])
		t.fill += n
		p = p[n:]
		if t.fill == BlockSize {
			t.sums = append(t.sums, t.cur)
			t.cur, t.fill = 0, 0
		}
	}
}

// appendTo appends the finished table (including the trailing partial block) to dst.
func (t *crcTable) appendTo(dst []byte) []byte {
	for _, s := range t.sums {
		dst = binary.LittleEndian.AppendUint32(dst, s)
	}
	if t.fill > 0 {
		dst = binary.LittleEndian.AppendUint32(dst, t.cur)
	}
	return dst
}

// encodedLen is the size appendTo will produce.
func (t *crcTable) encodedLen() int {
	n := len(t.sums)
	if t.fill > 0 {
		n++
	}
	return n * crcEntryLen
}
