package segment

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/fdpool"
)

// roomCheckBytes: a spilling body re-checks the free space (CheckRoom) every time this many
// more bytes have arrived, so a long upload stops before it eats the reserve rather than
// after.
const roomCheckBytes = 4 << 20

type stagedState int

const (
	stagedOpen stagedState = iota
	stagedCommitted
	stagedAborted
)

// Staged is a record being written. It is used by one goroutine at a time: Write the body,
// then Commit (or Abort). It hashes and checksums every byte as it arrives, in one pass,
// so Commit never re-reads the body.
type Staged struct {
	m    *Manager
	ctx  context.Context // bounds the wait for a staging file's descriptor
	name []byte

	sha  hash.Hash
	crcs crcTable
	size int64

	buf []byte // the body while it fits in memory (reserved room for CRC table and footer)

	f         *fdpool.File // the staging file once the body spilled (holds a pool slot)
	w         *stageWriter
	nextCheck int64 // body size at which the spill re-checks the free space

	state stagedState
	err   error // sticky: the first failed write
}

// Stage starts a record named name. The name is stored in the record's footer and every read
// must present the same name, which catches metadata that points at the wrong bytes. ctx
// bounds the wait for a descriptor if the body spills to a staging file.
func (m *Manager) Stage(ctx context.Context, name []byte) (*Staged, error) {
	if m.closed.Load() {
		return nil, fmt.Errorf("stage record: %w", ErrClosed)
	}
	if len(name) > MaxNameBytes {
		return nil, fmt.Errorf("stage record: name is %d bytes, longer than %d", len(name), MaxNameBytes)
	}
	return &Staged{m: m, ctx: ctx, name: append([]byte(nil), name...), sha: sha256.New()}, nil
}

// tailReserve is what Commit appends after an in-memory body: the CRC table and the footer.
func (s *Staged) tailReserve(bodySize int64) int {
	return int(blockCount(bodySize))*crcEntryLen + int(footerLen(len(s.name)))
}

// Write appends p to the body. After an error the record is dead: every later Write and the
// Commit return that error, and the caller should Abort.
func (s *Staged) Write(p []byte) (int, error) {
	if s.state != stagedOpen {
		return 0, errors.New("write to staged record: already committed or aborted")
	}
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	s.sha.Write(p)
	s.crcs.write(p)
	newSize := s.size + int64(len(p))
	if s.f == nil && newSize <= s.m.opts.SpillThreshold {
		s.grow(newSize)
		s.buf = append(s.buf, p...)
		s.size = newSize
		return len(p), nil
	}
	if s.f == nil {
		if err := s.spill(); err != nil {
			s.err = err
			return 0, err
		}
	}
	if newSize >= s.nextCheck {
		if err := s.m.CheckRoom(newSize - s.size + roomCheckBytes); err != nil {
			s.err = fmt.Errorf("stage record: %w", err)
			return 0, s.err
		}
		s.nextCheck = newSize + roomCheckBytes
	}
	if _, err := s.w.Write(p); err != nil {
		s.err = ioError("write staging file", s.f.Name(), err)
		return 0, s.err
	}
	s.size = newSize
	return len(p), nil
}

// inMemoryReadBytes is the most ReadInMemory asks of one Read, so a body of unknown size
// grows its buffer in steps rather than to the spill threshold at once.
const inMemoryReadBytes = 256 << 10

// ReadInMemory reads the body from r straight into the record's memory buffer for as long as
// it fits in memory (SpillThreshold), sparing the caller's copy through a buffer of its
// own. sizeHint (the declared size, or < 0) sizes the buffer once. It returns the bytes
// read and whether r ended; if it did not (the body reached the threshold, or the record
// already spilled) the caller goes on with Write. A read error is returned as it is.
func (s *Staged) ReadInMemory(r io.Reader, sizeHint int64) (int64, bool, error) {
	limit := s.m.opts.SpillThreshold
	if s.state != stagedOpen || s.err != nil || s.f != nil {
		return 0, false, nil
	}
	if sizeHint > s.size {
		s.grow(min(sizeHint, limit))
	}
	var n int64
	for s.size < limit {
		want := min(limit-s.size, inMemoryReadBytes)
		s.grow(s.size + want)
		p := s.buf[len(s.buf) : len(s.buf)+int(want)]
		got, err := r.Read(p)
		if got > 0 {
			s.sha.Write(p[:got])
			s.crcs.write(p[:got])
			s.buf = s.buf[:len(s.buf)+got]
			s.size += int64(got)
			n += int64(got)
		}
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}

// grow makes room for a body of newSize bytes plus the record tail, doubling like append but
// never past what the spill threshold allows, so an in-memory record costs at most
// SpillThreshold plus its tail.
func (s *Staged) grow(newSize int64) {
	need := int(newSize) + s.tailReserve(newSize)
	if need <= cap(s.buf) {
		return
	}
	limit := s.fullBufCap()
	var nb []byte
	if c := bufCap(max(need, 2*cap(s.buf)), limit); c == limit {
		nb = append(s.m.getFullBuf(limit), s.buf...)
	} else {
		nb = append(getBuf(c), s.buf...)
	}
	s.putBuf()
	s.buf = nb
}

// fullBufCap is the largest in-memory record: SpillThreshold bytes of body and their tail.
func (s *Staged) fullBufCap() int {
	return int(s.m.opts.SpillThreshold) + s.tailReserve(s.m.opts.SpillThreshold)
}

// putBuf recycles the in-memory buffer, if any.
func (s *Staged) putBuf() {
	switch {
	case s.buf == nil:
	case cap(s.buf) == s.fullBufCap():
		b := s.buf[:0]
		s.m.fullBufs.Put(&b)
	default:
		putBuf(s.buf)
	}
	s.buf = nil
}

// getFullBuf returns an empty buffer of capacity c, the full in-memory record size.
func (m *Manager) getFullBuf(c int) []byte {
	if b, ok := m.fullBufs.Get().(*[]byte); ok && cap(*b) == c {
		return (*b)[:0]
	}
	return make([]byte, 0, c)
}

// spill moves the in-memory body to a new staging file; from here on the body streams to disk.
func (s *Staged) spill() error {
	if err := s.m.CheckRoom(s.size + roomCheckBytes); err != nil {
		return fmt.Errorf("stage record: %w", err)
	}
	f, err := s.m.pool.CreateTemp(s.ctx, s.m.opts.TmpDir, stagePrefix+"*"+stageSuffix)
	if err != nil {
		if errors.Is(err, storage.ErrBusy) || s.ctx.Err() != nil {
			return fmt.Errorf("create staging file: %w", err)
		}
		return ioError("create staging file in", s.m.opts.TmpDir, err)
	}
	s.f = f
	s.nextCheck = s.size + roomCheckBytes
	s.w = newStageWriter(f.File, &s.m.ops)
	_, err = s.w.Write(s.buf)
	s.putBuf()
	if err != nil {
		return ioError("write staging file", f.Name(), err)
	}
	return nil
}

// releaseBuffers returns the staging buffers to their pools once the record is done with them.
func (s *Staged) releaseBuffers() {
	s.putBuf()
	if s.w != nil {
		s.w.release()
		s.w = nil
	}
}

// opsWriter routes staging-file writes through the Manager's fileOps (fault injection).
type opsWriter struct {
	f   *os.File
	ops *fileOps
}

func (w opsWriter) Write(p []byte) (int, error) { return w.ops.write(w.f, p) }

// Size is the number of body bytes written so far.
func (s *Staged) Size() int64 { return s.size }

// SHA256 is the digest of the body written so far.
func (s *Staged) SHA256() [32]byte {
	var d [32]byte
	s.sha.Sum(d[:0])
	return d
}

// Commit makes the record durable and returns where it is. A body that stayed in memory is
// appended to the shared active segment and shares an fdatasync with concurrent commits. A
// spilled body gets its CRC table and footer appended to the staging file, which is synced and
// renamed into Dir as a segment of its own (copied when TmpDir is on another filesystem), and
// the directory is synced. After a nil error the record survives kill -9 and power loss; after
// an error nothing has to be cleaned up and the returned Location must not be used. Commit
// ends the Staged either way. ctx is honoured before anything is written and while waiting
// for a shared sync; a spilled record's own fsync and rename are not interruptible.
func (s *Staged) Commit(ctx context.Context) (Location, error) {
	if s.state != stagedOpen {
		return Location{}, errors.New("commit staged record: already committed or aborted")
	}
	if s.err != nil {
		err := s.err
		s.Abort()
		return Location{}, err
	}
	if err := s.m.enter(); err != nil {
		s.Abort()
		return Location{}, fmt.Errorf("commit record: %w", err)
	}
	defer s.m.inflight.Done()
	if err := ctx.Err(); err != nil {
		s.Abort()
		return Location{}, fmt.Errorf("commit record: %w", context.Cause(ctx))
	}
	ft := footer{name: s.name, bodySize: s.size, sha256: s.SHA256()}
	if s.f == nil {
		// grow reserved room for the tail, so these appends never reallocate.
		rec := s.crcs.appendTo(s.buf)
		rec = appendFooter(rec, ft)
		s.buf = rec
		s.state = stagedCommitted
		loc, err := s.m.appendRecord(ctx, rec, s.size)
		// appendRecord's pwrite has completed either way: the buffer is free.
		s.releaseBuffers()
		return loc, err
	}
	loc, err := s.commitSpilled(ft)
	if err != nil {
		s.Abort()
		return Location{}, err
	}
	s.state = stagedCommitted
	s.releaseBuffers()
	return loc, nil
}

// commitSpilled turns the staging file into a segment of its own.
func (s *Staged) commitSpilled(ft footer) (Location, error) {
	m := s.m
	tail := s.crcs.appendTo(make([]byte, 0, s.crcs.encodedLen()+int(footerLen(len(ft.name)))))
	tail = appendFooter(tail, ft)
	if _, err := s.w.Write(tail); err != nil {
		return Location{}, ioError("write staging file", s.f.Name(), err)
	}
	if err := s.w.Finish(); err != nil {
		return Location{}, ioError("write staging file", s.f.Name(), err)
	}
	if err := m.ops.datasync(s.f.File); err != nil {
		return Location{}, ioError("sync staging file", s.f.Name(), err)
	}
	recordSize := s.size + int64(len(tail))

	m.mu.Lock()
	id := m.nextID
	m.nextID++
	m.mu.Unlock()
	dst := m.segPath(id)
	if err := m.ops.rename(s.f.Name(), dst); err != nil {
		if !errors.Is(err, syscall.EXDEV) {
			return Location{}, ioError("move staged record into", dst, err)
		}
		if err := s.copyInto(dst); err != nil {
			return Location{}, err
		}
	}
	// From here the staging file is either renamed or copied; Abort must not touch dst.
	if err := s.f.Close(); err != nil {
		m.log.Warn("close staging file", "path", s.f.Name(), "error", err)
	}
	if err := m.removeFile(s.f.Name()); err != nil {
		m.log.Warn("remove copied staging file", "path", s.f.Name(), "error", err)
	}
	s.f = nil
	if err := m.syncDir(); err != nil {
		// Unacknowledged, so the file is garbage; drop it rather than leave it unaccounted.
		if rerr := m.removeFile(dst); rerr != nil {
			// It stays on disk (a disk that fails a directory fsync may fail the unlink too):
			// list it, so its bytes count against the budget and eviction retires it like
			// any old segment, instead of space nobody sees until the next Open.
			m.log.Warn("cannot remove unacknowledged staged record; keeping it as a segment", "path", dst, "error", rerr)
			m.mu.Lock()
			m.insertLocked(&segEntry{id: id, size: recordSize})
			m.mu.Unlock()
		}
		return Location{}, err
	}
	m.mu.Lock()
	m.insertLocked(&segEntry{id: id, size: recordSize})
	m.mu.Unlock()
	m.spills.Add(1)
	return Location{Segment: id, Offset: 0, BodySize: s.size, RecordSize: recordSize}, nil
}

// copyInto copies the staging file to dst when a rename cannot cross filesystems. The copy
// is built under a ".partial" name (removed by Open if we crash) and renamed once synced, so
// Dir never holds a torn segment under a real segment name.
func (s *Staged) copyInto(dst string) error {
	m := s.m
	partial := dst[:len(dst)-len(segSuffix)] + partialSuffix
	if err := m.CheckRoom(s.size); err != nil {
		return fmt.Errorf("copy staged record: %w", err)
	}
	// A second descriptor while the staging file is held: the copy waits for it like any
	// checkout (the context ended or not, a cross-filesystem copy is rare enough).
	out, err := m.pool.OpenFile(context.WithoutCancel(s.ctx), partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, storage.ErrBusy) {
			return fmt.Errorf("create segment copy %s: %w", partial, err)
		}
		return ioError("create segment copy", partial, err)
	}
	fail := func(err error) error {
		_ = out.Close()
		_ = m.removeFile(partial)
		return err
	}
	if _, err := s.f.Seek(0, 0); err != nil {
		return fail(ioError("rewind staging file", s.f.Name(), err))
	}
	buf := make([]byte, stageBufferBytes)
	// The struct hides (*os.File).WriteTo so the copy goes through buf and fileOps.
	if _, err := io.CopyBuffer(opsWriter{f: out.File, ops: &m.ops}, struct{ io.Reader }{s.f.File}, buf); err != nil {
		return fail(ioError("copy staged record to", partial, err))
	}
	if err := m.ops.datasync(out.File); err != nil {
		return fail(ioError("sync segment copy", partial, err))
	}
	if err := out.Close(); err != nil {
		_ = m.removeFile(partial)
		return ioError("close segment copy", partial, err)
	}
	if err := m.ops.rename(partial, dst); err != nil {
		_ = m.removeFile(partial)
		return ioError("rename segment copy to", dst, err)
	}
	m.log.Debug("staged record copied across filesystems", "from", s.f.Name(), "to", filepath.Base(dst))
	return nil
}

// Abort discards the record and removes its staging file. It is safe after Commit (a no-op)
// and when called twice.
func (s *Staged) Abort() {
	if s.state == stagedCommitted || s.state == stagedAborted {
		return
	}
	s.state = stagedAborted
	s.releaseBuffers()
	if s.f != nil {
		name := s.f.Name()
		_ = s.f.Close()
		if err := s.m.removeFile(name); err != nil {
			s.m.log.Warn("remove staging file", "path", name, "error", err)
		}
		s.f = nil
	}
}
