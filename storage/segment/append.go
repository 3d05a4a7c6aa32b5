package segment

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/kuracache/kura/storage/fdpool"
)

// activeSegment is a segment that takes (or, once sealed, took) appends of small records.
type activeSegment struct {
	id    ID
	path  string
	f     *fdpool.File // write handle (holds a pool slot); closed once sealed and no commit waits on it
	entry *segEntry

	// Guarded by Manager.mu.
	size   int64 // tail offset: bytes successfully appended
	refs   int   // commits that appended here and are still waiting for their sync
	sealed bool

	// written mirrors size for the sync leader, which must not take the append lock.
	written atomic.Int64

	// Group commit state, guarded by smu.
	smu       sync.Mutex
	synced    int64      // every byte below this offset is durable
	dirSynced bool       // the file's directory entry is durable
	round     *syncRound // the fdatasync in flight, if any
	failed    error      // a failed sync poisons everything not yet synced
}

// syncRound is one fdatasync shared by every record appended before it started.
type syncRound struct {
	done chan struct{}
}

// newActiveLocked creates the next shared segment with the pool slot the caller checked out
// (the slot is returned if the creation fails). Its directory entry is made durable by the
// first sync round, together with the first records, so the roll itself stays cheap.
func (m *Manager) newActiveLocked() (*activeSegment, error) {
	id := m.nextID
	path := m.segPath(id)
	osf, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		m.pool.Release()
		return nil, ioError("create segment", path, fdpool.Classify(err))
	}
	f := m.pool.Adopt(osf)
	m.nextID++
	seg := &activeSegment{id: id, path: path, f: f, entry: &segEntry{id: id}}
	m.insertLocked(seg.entry)
	m.active = seg
	m.log.Debug("segment started", "segment", id.String())
	return seg, nil
}

// appendRecord writes one complete record (body, CRC table, footer) at the tail of the active
// segment and returns once a sync covering it has completed. Concurrent callers share syncs:
// the first to find no sync running leads one for everybody appended so far.
func (m *Manager) appendRecord(ctx context.Context, rec []byte, bodySize int64) (Location, error) {
	if err := m.CheckRoom(int64(len(rec))); err != nil {
		return Location{}, fmt.Errorf("append %d bytes: %w", len(rec), err)
	}
	// A new active segment needs a descriptor slot. The append lock is never held while
	// waiting for one: the slot is taken before locking, or, when none is free at once, the
	// lock is dropped, the wait done, and the attempt repeated (another committer may have
	// started the segment meanwhile, and the spare slot goes back).
	slot := false
	defer func() {
		if slot {
			m.pool.Release()
		}
	}()
	m.mu.Lock()
	for m.active == nil && !slot {
		if m.pool.TryAcquire() {
			slot = true
			break
		}
		m.mu.Unlock()
		if err := m.pool.Acquire(ctx); err != nil {
			return Location{}, fmt.Errorf("start a segment: %w", err)
		}
		slot = true
		m.mu.Lock()
	}
	seg := m.active
	if seg != nil && slot {
		m.pool.Release() // somebody else started the segment while we waited
		slot = false
	}
	if seg == nil {
		var err error
		slot = false // newActiveLocked owns it now
		if seg, err = m.newActiveLocked(); err != nil {
			m.mu.Unlock()
			return Location{}, err
		}
	}
	off := seg.size
	if n, err := m.ops.writeAt(seg.f.File, rec, off); err != nil {
		m.recoverAppendLocked(seg, off, n, err)
		m.mu.Unlock()
		return Location{}, ioError(fmt.Sprintf("append %d bytes at offset %d to segment", len(rec), off), seg.path, err)
	}
	end := off + int64(len(rec))
	seg.size = end
	seg.entry.size = end
	seg.written.Store(end)
	m.total.Add(int64(len(rec)))
	seg.refs++
	if end >= m.opts.TargetSegmentBytes {
		m.sealLocked(seg, "reached target size")
	}
	m.mu.Unlock()

	err := m.waitDurable(ctx, seg, end)
	m.release(seg)
	if err != nil {
		return Location{}, err
	}
	m.appends.Add(1)
	return Location{Segment: seg.id, Offset: off, BodySize: bodySize, RecordSize: int64(len(rec))}, nil
}

// recoverAppendLocked keeps the segment consistent after a failed (possibly partial) write:
// the tail is cut back so the next record starts where this one did. If that fails too, the
// segment is sealed, because its tail is unknown; the next append starts a fresh segment.
func (m *Manager) recoverAppendLocked(seg *activeSegment, off int64, n int, cause error) {
	if n == 0 && isNoSpace(cause) {
		return
	}
	if err := m.ops.truncate(seg.f.File, off); err != nil {
		m.log.Warn("cannot cut back segment after failed append; rolling",
			"segment", seg.id.String(), "offset", off, "error", err, "cause", cause)
		if fi, serr := seg.f.Stat(); serr == nil && fi.Size() > seg.entry.size {
			m.total.Add(fi.Size() - seg.entry.size)
			seg.entry.size = fi.Size()
		}
		m.sealLocked(seg, "append failed")
		return
	}
	if !isNoSpace(cause) {
		// An I/O error other than a full disk makes the file suspect; stop appending to it.
		m.sealLocked(seg, "append failed")
	}
}

// release drops a commit's reference to seg and closes the write handle of a sealed segment
// once nobody needs it to sync.
func (m *Manager) release(seg *activeSegment) {
	m.mu.Lock()
	seg.refs--
	if seg.sealed && seg.refs == 0 {
		m.closeWriteHandleLocked(seg)
	}
	m.mu.Unlock()
}

// waitDurable returns once every byte of seg below end is durable. It is the group commit:
// if a sync is in flight the caller waits for it and checks again (that sync may have started
// before the caller's write); if none is, the caller leads one covering everything written so
// far. Cancelling ctx stops the wait, not the sync: the record may still become durable, the
// caller just must not reference it.
func (m *Manager) waitDurable(ctx context.Context, seg *activeSegment, end int64) error {
	for {
		seg.smu.Lock()
		if seg.synced >= end {
			seg.smu.Unlock()
			return nil
		}
		if seg.failed != nil {
			err := seg.failed
			seg.smu.Unlock()
			return err
		}
		if r := seg.round; r != nil {
			seg.smu.Unlock()
			select {
			case <-r.done:
				continue
			case <-ctx.Done():
				return fmt.Errorf("wait for sync of segment %s: %w", seg.id, context.Cause(ctx))
			}
		}
		if err := ctx.Err(); err != nil {
			seg.smu.Unlock()
			return fmt.Errorf("wait for sync of segment %s: %w", seg.id, context.Cause(ctx))
		}
		r := &syncRound{done: make(chan struct{})}
		seg.round = r
		needDir := !seg.dirSynced
		seg.smu.Unlock()

		// Everything written before this load is covered by the fdatasync below.
		target := seg.written.Load()
		err := m.ops.datasync(seg.f.File)
		if err != nil {
			err = ioError("sync segment", seg.path, err)
		} else if needDir {
			err = m.syncDir()
		}
		m.syncs.Add(1)

		seg.smu.Lock()
		if err != nil {
			seg.failed = err
		} else {
			seg.synced = max(seg.synced, target)
			seg.dirSynced = true
		}
		seg.round = nil
		close(r.done)
		seg.smu.Unlock()
		if err != nil {
			// After a failed fsync the kernel may have dropped the dirty pages: nothing
			// beyond synced can be trusted, so no further record may go to this file.
			m.log.Error("segment sync failed; sealing", "segment", seg.id.String(), "error", err)
			m.mu.Lock()
			m.sealLocked(seg, "sync failed")
			m.mu.Unlock()
		}
	}
}
