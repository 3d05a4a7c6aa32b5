package local

import (
	"sync"
	"sync/atomic"

	"github.com/kuracache/kura/storage"
)

// recentSet remembers recently used records (read, or vouched for by Refresh) in two
// generations of bounded sets of key hashes (Store.keyHash): a lookup hits if the hash is in
// either, and when the current generation fills up the older one is dropped. Eviction moves
// such records forward instead of dropping them. A use costs a map insert, never a Pebble
// write; a hash collision only moves a record that was not used, which is harmless.
type recentSet struct {
	mu        sync.Mutex
	cur, prev map[uint64]struct{}
	genSize   int
}

func newRecentSet(capacity int) *recentSet {
	g := max(capacity/2, 1)
	return &recentSet{cur: make(map[uint64]struct{}), prev: make(map[uint64]struct{}), genSize: g}
}

func (r *recentSet) touch(h uint64) {
	r.mu.Lock()
	r.touchLocked(h)
	r.mu.Unlock()
}

// touchAll is touch of every hash under one lock (Refresh's batches).
func (r *recentSet) touchAll(hs []uint64) {
	r.mu.Lock()
	for _, h := range hs {
		r.touchLocked(h)
	}
	r.mu.Unlock()
}

func (r *recentSet) touchLocked(h uint64) {
	if _, ok := r.cur[h]; ok {
		return
	}
	if len(r.cur) >= r.genSize {
		r.prev, r.cur = r.cur, make(map[uint64]struct{}, r.genSize)
	}
	r.cur[h] = struct{}{}
}

func (r *recentSet) contains(h uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.cur[h]; ok {
		return true
	}
	_, ok := r.prev[h]
	return ok
}

func (r *recentSet) forget(h uint64) {
	r.mu.Lock()
	delete(r.cur, h)
	delete(r.prev, h)
	r.mu.Unlock()
}

// useShards spreads the last-use tracker over independent locks: every read of a node with
// retention on records its time, from all request goroutines at once.
const useShards = 32

// useTracker keeps, per key hash, the latest wall time (Unix ms) an object was used here
// since the retention sweep last persisted it (storage/meta's last-use records). It exists
// only with retention on. The sweep starts by rotating: uses recorded so far become old,
// the walk persists them next to each manifest it visits (the walk has the keys; the
// tracker only has hashes, so a use costs 8+8 bytes and no allocation), and drops old at
// the end; uses recorded during the walk stay for the next sweep. A collision only makes
// an unused object look used, which keeps it longer: the safe direction.
type useTracker struct {
	shards [useShards]useShard
	// held approximates the hashes held (cur and old), so a flood of distinct uses starts a
	// sweep early (maxPendingUses) instead of growing without bound.
	held atomic.Int64
}

type useShard struct {
	mu       sync.Mutex
	cur, old map[uint64]int64
}

func newUseTracker() *useTracker {
	t := &useTracker{}
	for i := range t.shards {
		t.shards[i].cur = make(map[uint64]int64)
	}
	return t
}

func (t *useTracker) shard(h uint64) *useShard { return &t.shards[(h>>32)%useShards] }

// touch records a use of h at ms; full reports that the tracker holds more than
// maxPendingUses hashes and wants a sweep.
func (t *useTracker) touch(h uint64, ms int64) (full bool) {
	sh := t.shard(h)
	sh.mu.Lock()
	prev, ok := sh.cur[h]
	if prev < ms {
		sh.cur[h] = ms
	}
	sh.mu.Unlock()
	if !ok {
		return t.held.Add(1) > maxPendingUses
	}
	return false
}

// touchAll records one time for many hashes.
func (t *useTracker) touchAll(hs []uint64, ms int64) (full bool) {
	for _, h := range hs {
		if t.touch(h, ms) {
			full = true
		}
	}
	return full
}

// get returns the latest recorded use of h (0: none since the last persisted sweep).
func (t *useTracker) get(h uint64) int64 {
	sh := t.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return max(sh.cur[h], sh.old[h])
}

// rotate makes every recorded use old, for the sweep about to persist them. Uses left old by
// a sweep that failed are kept (merged), so a failed sweep loses nothing.
func (t *useTracker) rotate() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		if sh.old == nil {
			sh.old = sh.cur
		} else {
			for h, ms := range sh.cur {
				if sh.old[h] < ms {
					sh.old[h] = ms
				}
			}
		}
		sh.cur = make(map[uint64]int64, len(sh.old)/2)
		sh.mu.Unlock()
	}
	t.recount()
}

func (t *useTracker) recount() {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += len(sh.cur) + len(sh.old)
		sh.mu.Unlock()
	}
	t.held.Store(int64(n))
}

// dropOld forgets the uses a completed sweep persisted.
func (t *useTracker) dropOld() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		sh.old = nil
		sh.mu.Unlock()
	}
	t.recount()
}

// pending is about the number of uses held in memory, for the metrics.
func (t *useTracker) pending() int64 { return t.held.Load() }

// touchRead records that key was read (Open): eviction moves it forward, retention counts
// the read as a use.
func (s *Store) touchRead(key storage.Key) {
	h := s.keyHash(key)
	s.recent.touch(h)
	if s.uses != nil && s.uses.touch(h, s.now().UnixMilli()) {
		s.kickSweep()
	}
}

// touchWritten records a write (stored, filled, or answered by the object already stored)
// as a use for retention; a write needs no move forward, it is at the head of the log.
func (s *Store) touchWritten(key storage.Key) {
	if s.uses != nil && s.uses.touch(s.keyHash(key), s.now().UnixMilli()) {
		s.kickSweep()
	}
}

// refreshChunk bounds the hashes Refresh computes before taking the sets' locks: they stay
// on the stack.
const refreshChunk = 256

// Refresh implements storage.Refresher: the keys a client was just told exist (REAPI's
// FindMissingBlobs and GetActionResult) count as read, so eviction moves them forward
// instead of dropping them and retention counts the use. It costs one hash per key and one
// map insert under a lock taken per 256 keys; nothing is looked up and nothing is written to
// Pebble. Keys not stored are harmless: nothing ever asks about their hashes.
func (s *Store) Refresh(keys []storage.Key) {
	var hs [refreshChunk]uint64
	var ms int64
	if s.uses != nil {
		ms = s.now().UnixMilli()
	}
	for len(keys) > 0 {
		n := min(len(keys), refreshChunk)
		for i := range n {
			hs[i] = s.keyHash(keys[i])
		}
		s.recent.touchAll(hs[:n])
		if s.uses != nil && s.uses.touchAll(hs[:n], ms) {
			s.kickSweep()
		}
		keys = keys[n:]
	}
}

var _ storage.Refresher = (*Store)(nil)
