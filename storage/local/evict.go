package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
)

// Eviction watermarks as fractions of the budget: the background evictor starts above high
// and retires segments until usage is below low, so writes rarely meet a full budget and
// have to evict synchronously.
const (
	highWatermark = 0.95
	lowWatermark  = 0.85
)

// kickEvictor wakes the background evictor when usage crossed the high watermark.
func (s *Store) kickEvictor() {
	budget := s.opts.DiskBudgetBytes
	if budget > 0 && float64(s.segs.TotalBytes()) > highWatermark*float64(budget) {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// ensureRoom makes sure need more segment bytes fit in the budget and on the filesystem
// (leaving the reserve free), retiring old segments synchronously if they do not.
// ErrInsufficientStorage when that cannot be met; reads are unaffected. Concurrent writers may
// each pass the check, so the budget can be exceeded by the bytes of writes in flight; the
// background evictor restores the margin, and the segment layer re-checks the filesystem
// right before it writes.
func (s *Store) ensureRoom(ctx context.Context, need int64) error {
	if err := s.ensureBudget(ctx, need); err != nil {
		return err
	}
	return s.ensureDiskRoom(ctx, need)
}

// ensureDiskRoom makes sure need more bytes can be written while the filesystem keeps the
// reserve (Options.ReservedDiskBytes) free, retiring the oldest segments when it cannot:
// something else may have filled the disk, and the cache gives way to new writes.
// ErrInsufficientStorage when even that is not enough.
func (s *Store) ensureDiskRoom(ctx context.Context, need int64) error {
	err := s.segs.CheckRoom(need)
	if err == nil || !errors.Is(err, storage.ErrInsufficientStorage) {
		return err
	}
	free, ferr := s.segs.FreeBytes()
	if ferr != nil {
		return ferr
	}
	shortfall := s.segs.ReserveBytes() + need - free
	if shortfall > s.segs.TotalBytes() {
		return err // evicting everything would not be enough: keep the cache
	}
	if eerr := s.evictTo(ctx, s.segs.TotalBytes()-shortfall); eerr != nil {
		return errors.Join(err, eerr)
	}
	if err := s.segs.CheckRoom(need); err != nil {
		return fmt.Errorf("%w (after evicting what could be evicted)", err)
	}
	return nil
}

// ensureBudget is ensureRoom for the disk budget alone.
func (s *Store) ensureBudget(ctx context.Context, need int64) error {
	budget := s.opts.DiskBudgetBytes
	if budget == 0 || s.segs.TotalBytes()+need <= budget {
		return nil
	}
	if need > budget {
		return fmt.Errorf("%w: a record of %d bytes exceeds the disk budget of %d bytes", storage.ErrInsufficientStorage, need, budget)
	}
	if err := s.evictTo(ctx, budget-need); err != nil {
		return err
	}
	if s.segs.TotalBytes()+need > budget {
		return fmt.Errorf("%w: disk budget of %d bytes is full (%d in use) and nothing more can be evicted",
			storage.ErrInsufficientStorage, budget, s.segs.TotalBytes())
	}
	return nil
}

// evictTo retires segments, oldest first, until usage is at most target or every segment
// has been tried once in this pass. Only one eviction runs at a time.
func (s *Store) evictTo(ctx context.Context, target int64) error {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	tried := map[segment.ID]bool{}
	for s.segs.TotalBytes() > target {
		id, ok := s.pickVictim(tried)
		if !ok {
			return nil
		}
		tried[id] = true
		if err := s.retire(ctx, id); err != nil {
			return fmt.Errorf("evict: %w", err)
		}
	}
	return nil
}

// pickVictim returns the oldest sealed segment not tried yet; when only the active segment
// is left, it is sealed so that it can be retired too.
func (s *Store) pickVictim(tried map[segment.ID]bool) (segment.ID, bool) {
	segs := s.segs.Segments()
	for _, si := range segs {
		if !si.Active && !tried[si.ID] {
			return si.ID, true
		}
	}
	for _, si := range segs {
		if si.Active && !tried[si.ID] && si.Size > 0 {
			s.segs.Seal()
			return si.ID, true
		}
	}
	return 0, false
}

// retire stops referencing every record of the sealed segment id — moving recently read
// ones forward, dropping the rest — commits that durably, and only then removes the file.
// Metadata never points at missing bytes: a crash before the final synced commit leaves the
// file in place and the old manifests valid.
func (s *Store) retire(ctx context.Context, id segment.ID) error {
	// Records appended before the segment was sealed may still be waiting for their
	// manifest commit; let them finish so the index below is complete.
	s.commits.waitForEarlier()
	var cursor []byte
	var moved, dropped int
	for {
		keys, last, err := s.db.SegmentRecords(ctx, uint64(id), cursor, 256)
		if err != nil {
			return fmt.Errorf("retire segment %s: %w", id, err)
		}
		if len(keys) == 0 {
			break
		}
		for _, key := range keys {
			mv, dr, err := s.evictRecord(ctx, key, id)
			if err != nil {
				return fmt.Errorf("retire segment %s: %w", id, err)
			}
			moved += mv
			dropped += dr
		}
		cursor = last
	}
	// One synced commit makes every unsynced manifest change above durable (the WAL is
	// ordered) before the bytes go away.
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DropSegmentIndex(uint64(id)); err != nil {
		return fmt.Errorf("retire segment %s: %w", id, err)
	}
	if err := b.Commit(); err != nil {
		return fmt.Errorf("retire segment %s: %w", id, err)
	}
	if err := s.segs.Remove(id); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("retire segment %s: %w", id, err)
	}
	s.metrics.retired.Inc()
	s.log.Info("segment retired", "segment", id.String(), "records_moved", moved, "records_dropped", dropped)
	return nil
}

// evictRecord handles one index entry of a retiring segment. It returns how many records it
// moved forward and dropped (0 or 1 each). A dropped record keeps its manifest as an evicted
// stub: same key, size, digest and version, so the anti-entropy digests do not change and
// peers do not push it back, while reads miss.
func (s *Store) evictRecord(ctx context.Context, key storage.Key, id segment.ID) (moved, dropped int, err error) {
	unlock := s.lockKey(key)
	defer unlock()
	m, err := s.db.GetManifest(key)
	if err != nil || !m.InSegment() || segment.ID(m.Location.Segment) != id {
		return 0, 0, nil // gone, damaged (dropped on its next read), a stub or already elsewhere
	}
	name := meta.ManifestKey(key)
	h := s.keyHash(key)
	b := s.db.NewBatch()
	defer b.Close()
	if s.recent.contains(h) {
		loc, err := s.copyForward(ctx, m, name)
		switch {
		case err == nil:
			next := m
			next.Location = toMetaLocation(loc)
			if err := b.PutManifest(key, next, &m); err != nil {
				return 0, 0, err
			}
			if err := b.CommitNoSync(); err != nil {
				s.mcache.invalidate(name)
				return 0, 0, err
			}
			s.mcache.update(name, next)
			// Moved once per read: a record that is not read again is dropped next time,
			// so eviction always makes progress.
			s.recent.forget(h)
			s.metrics.moved.Inc()
			return 1, 0, nil
		case errors.Is(err, storage.ErrCorrupt):
			// It was being evicted anyway: stub it like any other dropped record.
			s.log.Error("dropped corrupt record during eviction", "key", key.String(), "segment", m.Location.Segment,
				"offset", m.Location.Offset, "error", err)
			s.metrics.corrupt.Inc()
		case errors.Is(err, storage.ErrInsufficientStorage), errors.Is(err, storage.ErrBusy):
			// The disk is too full to move it (eviction may be running to make room), or no
			// descriptor is free: drop it instead, so eviction always makes progress.
			s.log.Warn("evicting a recently read record instead of moving it forward", "key", key.String(), "error", err)
		default:
			return 0, 0, err
		}
	}
	stub := m.Stub()
	if err := b.PutManifest(key, stub, &m); err != nil {
		return 0, 0, err
	}
	if err := b.CommitNoSync(); err != nil {
		s.mcache.invalidate(name)
		return 0, 0, err
	}
	s.mcache.update(name, stub)
	s.metrics.dropped.Inc()
	return 0, 1, nil
}

// copyForward re-appends a record's body (verified block by block on the way) as a new
// record and returns its durable location.
func (s *Store) copyForward(ctx context.Context, m meta.Manifest, name []byte) (segment.Location, error) {
	rc, err := s.segs.OpenRecord(ctx, toSegmentLocation(m.Location), name, 0, -1)
	if err != nil {
		return segment.Location{}, err
	}
	defer rc.Close()
	st, err := s.segs.Stage(ctx, name)
	if err != nil {
		return segment.Location{}, err
	}
	defer st.Abort()
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	if _, err := io.CopyBuffer(onlyWriter{st}, onlyReader{rc}, *bufp); err != nil {
		return segment.Location{}, err
	}
	if st.Size() != m.Size || st.SHA256() != m.SHA256 {
		return segment.Location{}, fmt.Errorf("%w: copied %d bytes with a different digest than recorded", storage.ErrCorrupt, st.Size())
	}
	return st.Commit(ctx)
}

// evictLoop is the background evictor, owned by the Store and stopped by Close.
func (s *Store) evictLoop() {
	defer s.bg.Done()
	budget := s.opts.DiskBudgetBytes
	if budget == 0 {
		<-s.bgCtx.Done()
		return
	}
	t := time.NewTicker(s.opts.EvictInterval)
	defer t.Stop()
	for {
		select {
		case <-s.bgCtx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		if float64(s.segs.TotalBytes()) <= highWatermark*float64(budget) {
			continue
		}
		if err := s.evictTo(s.bgCtx, int64(lowWatermark*float64(budget))); err != nil && s.bgCtx.Err() == nil {
			s.log.Error("background eviction failed", "error", err)
		}
	}
}
