package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
)

// DefaultRetentionSweepInterval is how often the retention sweep runs when
// RetentionOptions.SweepInterval is zero. A sweep walks every manifest (about 2–3 s of CPU
// per million objects), so minutes keep its cost small against ages of hours or days.
const DefaultRetentionSweepInterval = 5 * time.Minute

// RetentionOptions turn on retention by age: an object not used here — read (Open),
// vouched for (Refresh) or written — for longer than its namespace's maximum age is removed
// by the retention sweep, which leaves an expired stub (storage/meta). Each node applies the
// rule to its own uses with its own clock; replication never fills an expired stub, so an
// object one node expired is not brought back to it by a peer that still holds it
// (docs/storage-local.md, "Retention by age").
type RetentionOptions struct {
	// MaxAge returns the maximum age since last use of the objects of a namespace; 0 keeps
	// them however old. Required.
	MaxAge func(namespace string) time.Duration
	// SweepInterval is the pause between sweeps (zero: DefaultRetentionSweepInterval). An
	// object is removed between MaxAge and MaxAge+SweepInterval after its last use.
	SweepInterval time.Duration
}

// tracker returns the use tracker retention needs, or nil when it is off.
func (r *RetentionOptions) tracker() *useTracker {
	if r == nil || r.MaxAge == nil {
		return nil
	}
	return newUseTracker()
}

// maxPendingUses is the number of uses held in memory past which a sweep is started early
// to persist them (about 16 bytes each, twice that in the maps' slack).
const maxPendingUses = 1 << 20

// RetentionStats report one sweep.
type RetentionStats struct {
	Scanned          int // manifests walked
	Expired          int // objects removed by the rule
	PersistedUses    int // last-use records written
	SegmentsRetired  int // sealed segments left without a live record, removed
	OrphanUsesPruned int // last-use records whose object is gone
}

// retentionLoop runs the sweep every SweepInterval until Close; it is owned by the Store.
func (s *Store) retentionLoop() {
	defer s.bg.Done()
	if s.uses == nil {
		<-s.bgCtx.Done()
		return
	}
	interval := s.opts.Retention.SweepInterval
	if interval <= 0 {
		interval = DefaultRetentionSweepInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.bgCtx.Done():
			return
		case <-t.C:
		case <-s.sweepKick:
		}
		if _, err := s.SweepRetention(s.bgCtx); err != nil && s.bgCtx.Err() == nil {
			s.log.Error("retention sweep failed", "error", err)
		}
	}
}

// kickSweep asks the retention loop for a sweep soon, without waiting.
func (s *Store) kickSweep() {
	select {
	case s.sweepKick <- struct{}{}:
	default:
	}
}

// SweepRetention runs one retention sweep now (the background loop calls it every
// SweepInterval): it walks every manifest with its last-use record in step, persists the uses
// recorded in memory since the last sweep, removes the objects whose last use — the latest of
// the recorded uses and the write's own time (its version) — is older than their
// namespace's maximum age, deletes last-use records whose object is gone, and finally retires
// the sealed segments left without a live record, so the disk space comes back without
// waiting for the budget. Without retention it does nothing.
func (s *Store) SweepRetention(ctx context.Context) (RetentionStats, error) {
	var st RetentionStats
	if s.uses == nil {
		return st, nil
	}
	if err := s.ops.enter(); err != nil {
		return st, fmt.Errorf("retention sweep: %w", err)
	}
	defer s.ops.leave()
	start := time.Now()
	// Segments sealed before the walk, with every commit into them finished, are exactly
	// described by the walk's view: those with no live record in it hold only garbage.
	var sealed []segment.ID
	for _, si := range s.segs.Segments() {
		if !si.Active {
			sealed = append(sealed, si.ID)
		}
	}
	s.commits.waitForEarlier()
	s.uses.rotate()
	live := make(map[uint64]int, len(sealed))
	w, err := s.newRetentionWalk(ctx)
	if err != nil {
		return st, err
	}
	err = w.run(&st, live)
	if cerr := w.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return st, fmt.Errorf("retention sweep: %w", err)
	}
	s.uses.dropOld()
	for _, id := range sealed {
		if live[uint64(id)] > 0 {
			continue
		}
		retired, err := s.retireIfPresent(ctx, id)
		if err != nil {
			return st, fmt.Errorf("retention sweep: %w", err)
		}
		if retired {
			st.SegmentsRetired++
		}
	}
	s.metrics.retentionSweeps.Inc()
	s.log.Debug("retention sweep", "scanned", st.Scanned, "expired", st.Expired, "persisted_uses", st.PersistedUses,
		"segments_retired", st.SegmentsRetired, "orphans_pruned", st.OrphanUsesPruned, "took", time.Since(start))
	return st, nil
}

// retireIfPresent retires segment id unless eviction removed it meanwhile.
func (s *Store) retireIfPresent(ctx context.Context, id segment.ID) (bool, error) {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	for _, si := range s.segs.Segments() {
		if si.ID == id && !si.Active {
			return true, s.retire(ctx, id)
		}
	}
	return false, nil
}

// retentionWalk is one sweep's pass over the manifests and last-use records.
type retentionWalk struct {
	s     *Store
	ctx   context.Context
	now   int64 // Unix ms, the store's clock at the start of the walk
	it    *meta.ManifestIterator
	lu    *meta.LastUseIterator
	luOK  bool
	b     *meta.Batch
	ages  map[string]time.Duration // MaxAge per namespace, asked once per namespace
	batch int
}

func (s *Store) newRetentionWalk(ctx context.Context) (*retentionWalk, error) {
	it, err := s.db.NewManifestIterator(ctx, nil)
	if err != nil {
		return nil, classify("retention sweep", err)
	}
	lu, err := s.db.NewLastUseIterator(ctx)
	if err != nil {
		_ = it.Close()
		return nil, classify("retention sweep", err)
	}
	w := &retentionWalk{s: s, ctx: ctx, now: s.now().UnixMilli(), it: it, lu: lu, b: s.db.NewBatch(),
		ages: map[string]time.Duration{}}
	w.luOK = lu.Next()
	return w, nil
}

func (w *retentionWalk) close() error {
	w.b.Close()
	return errors.Join(w.it.Close(), w.lu.Close())
}

// flushEvery bounds the last-use writes held in one batch.
const flushEvery = 512

func (w *retentionWalk) flush(force bool) error {
	if w.batch == 0 || (!force && w.batch < flushEvery) {
		return nil
	}
	// Unsynced: a last-use record is advisory, and the next synced commit makes it durable.
	if err := w.b.CommitNoSync(); err != nil {
		return classify("retention sweep: record last uses", err)
	}
	w.b.Close()
	w.b = w.s.db.NewBatch()
	w.batch = 0
	return nil
}

func (w *retentionWalk) maxAge(namespace string) time.Duration {
	if a, ok := w.ages[namespace]; ok {
		return a
	}
	a := w.s.opts.Retention.MaxAge(namespace)
	w.ages[namespace] = a
	return a
}

// storedUse returns the last-use record of the manifest ek, deleting the records of objects
// that no longer exist (those before ek) on the way.
func (w *retentionWalk) storedUse(ek []byte, st *RetentionStats) (int64, bool, error) {
	for w.luOK {
		c := bytes.Compare(w.lu.EncodedKey(), ek)
		if c > 0 {
			break
		}
		if c == 0 {
			ms, err := w.lu.Millis()
			w.luOK = w.lu.Next()
			if err != nil {
				return 0, false, nil // damaged: the write time and memory answer, and it is rewritten
			}
			return ms, true, nil
		}
		if err := w.b.DeleteLastUse(w.lu.EncodedKey()); err != nil {
			return 0, false, err
		}
		st.OrphanUsesPruned++
		w.batch++
		w.luOK = w.lu.Next()
	}
	return 0, false, w.lu.Err()
}

func (w *retentionWalk) run(st *RetentionStats, live map[uint64]int) error {
	for w.it.Next() {
		ek := w.it.EncodedKey()
		stored, hasStored, err := w.storedUse(ek, st)
		if err != nil {
			return err
		}
		st.Scanned++
		k, m, err := w.it.Entry()
		if err != nil {
			continue // damaged: dropped when read
		}
		if m.Evicted {
			if hasStored { // a stub is not used any more: its record would only grow the walk
				if err := w.b.DeleteLastUse(ek); err != nil {
					return err
				}
				w.batch++
			}
			continue
		}
		h := w.s.keyHash(k)
		mem := w.s.uses.get(h)
		if mem > stored {
			if err := w.b.PutLastUse(ek, mem); err != nil {
				return err
			}
			w.batch++
			st.PersistedUses++
			stored = mem
		}
		last := max(stored, m.Version.WallMillis())
		if age := w.maxAge(k.Namespace); age > 0 && w.now-last > age.Milliseconds() {
			expired, err := w.s.expire(k, m, h, age, w.now, stored)
			if err != nil {
				return err
			}
			if expired {
				st.Expired++
				continue
			}
		}
		if m.InSegment() {
			live[m.Location.Segment]++
		}
		if err := w.flush(false); err != nil {
			return err
		}
	}
	if err := w.it.Err(); err != nil {
		return classify("retention sweep", err)
	}
	for w.luOK { // records after the last manifest are orphans too
		if err := w.b.DeleteLastUse(w.lu.EncodedKey()); err != nil {
			return err
		}
		st.OrphanUsesPruned++
		w.batch++
		w.luOK = w.lu.Next()
		if err := w.flush(false); err != nil {
			return err
		}
	}
	if err := w.lu.Err(); err != nil {
		return classify("retention sweep", err)
	}
	return w.flush(true)
}

// expire replaces key's manifest seen by the walk (seen) with an expired stub, under the
// key's lock and only if nothing changed since: the same version and place, and no use
// recorded meanwhile that makes it young again. The stub keeps the object's identity, so the
// anti-entropy digests do not change and peers neither push it back nor pull it from here.
func (s *Store) expire(key storage.Key, seen meta.Manifest, h uint64, age time.Duration, now, stored int64) (bool, error) {
	unlock := s.lockKey(key)
	defer unlock()
	cur, err := s.db.GetManifest(key)
	if err != nil || cur.Evicted || cur.Version != seen.Version || cur.Inline != seen.Inline || cur.Location != seen.Location {
		return false, nil // gone, damaged, a stub, or written again: not this walk's business
	}
	if last := max(s.uses.get(h), stored, cur.Version.WallMillis()); now-last <= age.Milliseconds() {
		return false, nil
	}
	ek := meta.ManifestKey(key)
	stub := cur.ExpiredStub()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.PutManifest(key, stub, &cur); err != nil {
		return false, err
	}
	if err := b.DeleteLastUse(ek); err != nil {
		return false, err
	}
	// Unsynced like eviction's stubs: a crash may bring the object back until the next
	// sweep, never leave metadata pointing at missing bytes (a segment goes only after a
	// synced commit, in retire).
	if err := b.CommitNoSync(); err != nil {
		s.mcache.invalidate(ek)
		return false, classify("expire "+key.String(), err)
	}
	s.mcache.update(ek, stub)
	s.recent.forget(h)
	s.metrics.retentionExpired.WithLabelValues(string(key.Kind)).Inc()
	return true, nil
}

// Expired implements storage.ExpiryReporter: whether each key's manifest is a stub this
// node's retention rule left. Without retention every answer is false and nothing is read.
func (s *Store) Expired(keys []storage.Key) []bool {
	out := make([]bool, len(keys))
	if s.uses == nil {
		return out
	}
	if err := s.ops.enter(); err != nil {
		return out
	}
	defer s.ops.leave()
	for i, k := range keys {
		if k.Validate() != nil {
			continue
		}
		m, err := s.lookupManifest(k, meta.ManifestKey(k))
		out[i] = err == nil && m.Expired
	}
	return out
}

// refusesReplicated reports whether a replicated copy (the origin's version) must leave the
// stored stub prev alone because this node expired it: retention removed the object here,
// and a peer that still holds it must not bring it back (SPEC §5). A newer write of a
// last-writer-wins key (a new action result, a new document) is new data, not the expired
// object, and is taken. Client writes (version zero) always fill the stub.
func (s *Store) refusesReplicated(kind storage.Kind, prev *meta.Manifest, requested storage.Version, sum [32]byte) bool {
	if s.uses == nil || prev == nil || !prev.Expired || requested == 0 {
		return false
	}
	return !kind.LastWriterWins() || !storage.Supersedes(requested, sum, prev.Version, prev.SHA256)
}

var _ storage.ExpiryReporter = (*Store)(nil)
