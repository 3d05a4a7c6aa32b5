package segment

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"sync"

	"github.com/kuracache/kura/storage"
)

// wholeRecordBytes: records up to this size are read with a single pread (body, CRC table
// and footer together) and served from memory, which for the typical small artifact saves
// two syscalls and keeps no descriptor open while the caller consumes the body.
const wholeRecordBytes = 128 << 10

var blockPool = sync.Pool{New: func() any { b := make([]byte, BlockSize); return &b }}

func corruptError(loc Location, format string, args ...any) error {
	return fmt.Errorf("read record at segment %s offset %d: %w: %s",
		loc.Segment, loc.Offset, storage.ErrCorrupt, fmt.Sprintf(format, args...))
}

// OpenRecord returns a reader over body bytes [offset, offset+length) of the record at loc
// (length < 0: to the end; an offset at or past the end gives an empty reader). The footer is
// checked first: magic, CRC, version, name == name, body size == loc.BodySize; then the
// range's first block (unless the record is in the verified set), so a record damaged there
// fails here and not on the first Read. Each 64 KiB block is verified against its CRC before
// any byte of it is returned; a mismatch, a torn or short file, or a missing segment file is
// an error wrapping storage.ErrCorrupt (the metadata points at bytes that are not what was
// written). The caller must Close the reader.
//
// Reads go through the segment's shared read handle from the handle cache (opened through the
// FD pool on a miss: when no descriptor frees up within the acquire timeout the error wraps
// storage.ErrBusy; ctx bounds that wait). The reader keeps its reference to the handle until
// Close, so removing the segment afterwards does not disturb it, and it never takes the append
// lock. A small record is read whole with one pread and the handle given back at once.
func (m *Manager) OpenRecord(ctx context.Context, loc Location, name []byte, offset, length int64) (io.ReadCloser, error) {
	if m.closed.Load() {
		return nil, fmt.Errorf("open record: %w", ErrClosed)
	}
	if offset < 0 {
		return nil, fmt.Errorf("open record at segment %s offset %d: negative range offset %d", loc.Segment, loc.Offset, offset)
	}
	if loc.Offset < 0 || loc.BodySize < 0 || len(name) > MaxNameBytes || loc.RecordSize != RecordSize(loc.BodySize, len(name)) {
		return nil, corruptError(loc, "location does not describe a record with a %d-byte name", len(name))
	}
	start := min(offset, loc.BodySize)
	end := loc.BodySize
	if length >= 0 && length < end-start {
		end = start + length
	}

	path := m.segPath(loc.Segment)
	h, err := m.handles.acquire(ctx, loc.Segment, path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", corruptError(loc, "segment file is missing"), err)
		}
		if errors.Is(err, storage.ErrBusy) || ctx.Err() != nil {
			return nil, fmt.Errorf("open record in segment %s: %w", loc.Segment, err)
		}
		return nil, ioError("open segment", path, err)
	}
	if loc.RecordSize <= wholeRecordBytes {
		defer m.handles.release(h)
		return readWholeRecord(h.f.File, path, loc, name, start, end)
	}
	r, err := m.openStreamReader(h.f.File, path, loc, name, start, end)
	if err != nil {
		m.handles.release(h)
		return nil, err
	}
	r.h, r.cache = h, m.handles
	return r, nil
}

// readAt reads exactly len(p) bytes at off; a short read means the file is shorter than the
// metadata says (torn by a crash, truncated or the wrong file) and is reported as corruption.
func readAt(f *os.File, path string, loc Location, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return corruptError(loc, "segment file ends after %d of %d bytes at file offset %d", n, len(p), off)
	}
	return ioError(fmt.Sprintf("read %d bytes at offset %d of segment", len(p), off), path, err)
}

// checkFooter decodes the footer bytes and compares them with what the caller expects.
func checkFooter(loc Location, b, name []byte) error {
	ft, err := decodeFooter(b)
	if err != nil {
		return corruptError(loc, "%v", err)
	}
	if !bytes.Equal(ft.name, name) {
		return corruptError(loc, "record name %q, expected %q", truncateForLog(ft.name), truncateForLog(name))
	}
	if ft.bodySize != loc.BodySize {
		return corruptError(loc, "record body size %d, expected %d", ft.bodySize, loc.BodySize)
	}
	return nil
}

func truncateForLog(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

// blockRange is the first and one-past-last block holding body bytes [start, end).
func blockRange(start, end int64) (first, last int64) {
	if start >= end {
		return 0, 0
	}
	return start / BlockSize, (end + BlockSize - 1) / BlockSize
}

func verifyBlock(loc Location, block int64, data []byte, want uint32) error {
	if got := crc32.Checksum(data, castagnoli); got != want {
		return corruptError(loc, "block %d (body bytes %d..%d) CRC %08x, table says %08x",
			block, block*BlockSize, block*BlockSize+int64(len(data)), got, want)
	}
	return nil
}

func readWholeRecord(f *os.File, path string, loc Location, name []byte, start, end int64) (io.ReadCloser, error) {
	rec := make([]byte, loc.RecordSize)
	if err := readAt(f, path, loc, rec, loc.Offset); err != nil {
		return nil, err
	}
	tableAt := loc.BodySize
	footerAt := tableAt + blockCount(loc.BodySize)*crcEntryLen
	if err := checkFooter(loc, rec[footerAt:], name); err != nil {
		return nil, err
	}
	first, last := blockRange(start, end)
	for b := first; b < last; b++ {
		lo, hi := b*BlockSize, min((b+1)*BlockSize, loc.BodySize)
		want := binary.LittleEndian.Uint32(rec[tableAt+b*crcEntryLen:])
		if err := verifyBlock(loc, b, rec[lo:hi], want); err != nil {
			return nil, err
		}
	}
	return io.NopCloser(bytes.NewReader(rec[start:end])), nil
}

// streamReader serves a large record block by block, verifying each block before copying any
// of it out — unless the whole record was verified recently (see verifiedSet), in which case
// it reads straight into the caller's buffer or, through WriteTo, sends the file to a socket.
type streamReader struct {
	m     *Manager
	f     *os.File // h's descriptor, shared with other readers (pread only)
	h     *handle
	cache *handleCache
	path  string
	loc   Location
	table []byte // CRC entries of blocks [firstBlock, ...); nil when trusted
	first int64  // first block of the range

	// trusted: the record is in the verified set and the file is in state (checked at open).
	trusted bool
	state   fileState
	// checked counts blocks verified by this reader; all of them means the record is marked.
	checked int64

	pos, end int64   // next body offset to return; end of the range
	buf      *[]byte // pooled block buffer
	block    int64   // block held in buf, -1 for none
	blockLen int
	err      error
	closed   bool
}

func (m *Manager) openStreamReader(f *os.File, path string, loc Location, name []byte, start, end int64) (*streamReader, error) {
	ftLen := footerLen(len(name))
	footerBuf := make([]byte, ftLen)
	if err := readAt(f, path, loc, footerBuf, loc.Offset+loc.RecordSize-ftLen); err != nil {
		return nil, err
	}
	if err := checkFooter(loc, footerBuf, name); err != nil {
		return nil, err
	}
	r := &streamReader{m: m, f: f, path: path, loc: loc, pos: start, end: end, block: -1}
	if st, ok := statFile(f); ok {
		r.state = st
		r.trusted = m.verified.trusted(loc, st)
		if r.trusted {
			m.trustedReads.Add(1)
		}
	}
	first, last := blockRange(start, end)
	if last > first && !r.trusted {
		// The footer matched, so the record (and with it this table) lies within the file:
		// the allocation is bounded by what is actually on disk.
		r.table = make([]byte, (last-first)*crcEntryLen)
		if err := readAt(f, path, loc, r.table, loc.Offset+loc.BodySize+first*crcEntryLen); err != nil {
			return nil, err
		}
		// The range's first block is loaded and checked now rather than on the first Read:
		// damage there is then reported by OpenRecord, before the caller has committed to
		// serving the record (sent a 200, started a ByteStream), so storage/local drops it as
		// a miss and the read-through serves a peer's copy in the same request. Damage in a
		// later block can only cut the transfer short.
		r.first = first
		if err := r.load(first); err != nil {
			blockPool.Put(r.buf)
			r.buf = nil
			return nil, err
		}
	}
	r.first = first
	return r, nil
}

// ready reports whether there is something to read (nil) or why not.
func (r *streamReader) ready() error {
	switch {
	case r.closed:
		return os.ErrClosed
	case r.err != nil:
		return r.err
	case r.pos >= r.end:
		return io.EOF
	}
	return nil
}

func (r *streamReader) Read(p []byte) (int, error) {
	if err := r.ready(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.trusted && len(p) >= BlockSize {
		// Verified already and a large buffer: one pread into p, no block buffer, no CRC pass.
		// (A small buffer goes through the block buffer, so it costs one pread per block.)
		n := int(min(int64(len(p)), r.end-r.pos))
		if err := readAt(r.f, r.path, r.loc, p[:n], r.loc.Offset+r.pos); err != nil {
			r.err = err
			return 0, err
		}
		r.pos += int64(n)
		return n, nil
	}
	chunk, err := r.next()
	if err != nil {
		return 0, err
	}
	n := copy(p, chunk)
	r.pos += int64(n)
	return n, nil
}

// next returns the verified bytes from pos to the end of pos's block (or of the range),
// loading the block first if needed. The caller advances pos.
func (r *streamReader) next() ([]byte, error) {
	b := r.pos / BlockSize
	if b != r.block {
		if err := r.load(b); err != nil {
			r.err = err
			return nil, err
		}
	}
	inBlock := r.pos - b*BlockSize
	avail := min(int64(r.blockLen)-inBlock, r.end-r.pos)
	return (*r.buf)[inBlock : inBlock+avail], nil
}

// WriteTo implements io.WriterTo. A trusted record goes to w's ReadFrom as an
// io.LimitedReader over a private descriptor of the segment file (net/http and net.TCPConn
// turn that into sendfile: no copy through user space); otherwise block by block from the
// verified buffer, straight into w.
func (r *streamReader) WriteTo(w io.Writer) (int64, error) {
	if err := r.ready(); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil
		}
		return 0, err
	}
	var total int64
	if rf, ok := w.(io.ReaderFrom); ok && r.trusted {
		n, err, handled := r.sendFile(rf)
		total += n
		if handled || err != nil {
			return total, err
		}
	}
	for r.pos < r.end {
		chunk, err := r.next()
		if err != nil {
			return total, err
		}
		n, err := w.Write(chunk)
		r.pos += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// sendFile hands the rest of the range to rf as an io.LimitedReader over a segment
// descriptor positioned at the range: net.TCPConn turns that into sendfile, which reads from
// the descriptor's file offset. The shared handle's offset is unused by preads, so one sender
// at a time may own it (offsetMu) at no descriptor cost. A concurrent sender opens a private
// descriptor, an extra FD pool slot, only while half of the pool is free and nobody waits for
// a slot, so sendfile never makes another request wait for a descriptor; otherwise, or if
// the file was removed by eviction (the handle keeps it readable) or replaced, handled is
// false, nothing was sent, and the caller falls back to preads.
func (r *streamReader) sendFile(rf io.ReaderFrom) (n int64, err error, handled bool) {
	f := r.f
	if r.h.offsetMu.TryLock() {
		defer r.h.offsetMu.Unlock()
	} else {
		pool := r.m.pool
		if pool.Waiters() > 0 || pool.InUse() >= pool.Capacity()/2 || !pool.TryAcquire() {
			return 0, nil, false
		}
		pf, oerr := os.Open(r.path)
		if oerr != nil {
			pool.Release()
			return 0, nil, false
		}
		defer func() { _ = pool.Adopt(pf).Close() }()
		if st, ok := statFile(pf); !ok || st != r.state {
			return 0, nil, false
		}
		f = pf
	}
	if _, serr := f.Seek(r.loc.Offset+r.pos, io.SeekStart); serr != nil {
		return 0, nil, false
	}
	r.m.sendfiles.Add(1)
	want := r.end - r.pos
	n, err = rf.ReadFrom(&io.LimitedReader{R: f, N: want})
	r.pos += n
	if err == nil && n < want {
		err = corruptError(r.loc, "segment file ends %d bytes early", want-n)
	}
	if err != nil {
		r.err = err
	}
	return n, err, true
}

// load reads block b into the block buffer and, unless the record is trusted, checks it.
func (r *streamReader) load(b int64) error {
	if r.buf == nil {
		r.buf = blockPool.Get().(*[]byte)
	}
	lo := b * BlockSize
	n := int(min(BlockSize, r.loc.BodySize-lo))
	data := (*r.buf)[:n]
	r.block = -1
	if err := readAt(r.f, r.path, r.loc, data, r.loc.Offset+lo); err != nil {
		return err
	}
	if r.trusted {
		r.block, r.blockLen = b, n
		return nil
	}
	want := binary.LittleEndian.Uint32(r.table[(b-r.first)*crcEntryLen:])
	if err := verifyBlock(r.loc, b, data, want); err != nil {
		return err
	}
	r.block, r.blockLen = b, n
	// Blocks are loaded in order, each once, so counting them tells when the reader has
	// checked the whole record (a range read that skips blocks never gets there).
	if r.checked++; r.first == 0 && r.checked == blockCount(r.loc.BodySize) {
		// The file's state is taken after the last check: a write during the reads moves
		// mtime, so the mark will not match (or is not taken at all, being too recent).
		if st, ok := statFile(r.f); ok && st == r.state {
			r.m.verified.mark(r.loc, st)
		}
	}
	return nil
}

func (r *streamReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.buf != nil {
		blockPool.Put(r.buf)
		r.buf = nil
	}
	r.cache.release(r.h)
	r.h, r.f = nil, nil
	return nil
}
