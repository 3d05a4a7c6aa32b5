package segment

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/kuracache/kura/storage/fdpool"
)

// handleCache keeps read-only descriptors of segment files open between reads, so a read is a
// pread on a shared descriptor instead of open + pread + close (pread carries its own offset,
// so one *os.File serves any number of concurrent readers). It is an LRU of at most size
// handles, each holding a slot of the FD pool while open.
//
// Handles are reference-counted: the cache holds one reference while the handle is cached and
// every reader holds one until it is done. Evicting a handle (capacity, pool pressure, a trim,
// or its segment being removed) only drops the cache's reference; the descriptor closes when
// the last reference goes, so a reader is never cut off and the bytes of a removed segment are
// freed as soon as its last reader finishes.
type handleCache struct {
	pool *fdpool.Pool
	size int // 0: nothing is cached, every reader opens its own handle

	mu      sync.Mutex
	entries map[ID]*handle
	lru     handle // sentinel of the LRU ring: lru.next is the most recently used
	closed  bool

	hits, misses, evictions atomic.Uint64
	open                    atomic.Int64

	unregister func() // takes reclaimIdle off the pool
}

// handle is one open (or opening) segment file.
type handle struct {
	id ID
	f  *fdpool.File // set once ready is closed and err is nil

	// Guarded by handleCache.mu.
	refs       int
	cached     bool
	prev, next *handle

	// offsetMu is held by the one sender (streamReader.sendFile) that uses f's file offset;
	// preads never touch it.
	offsetMu sync.Mutex

	ready chan struct{} // closed when the open finished
	err   error         // the open's failure; set before ready is closed
}

func newHandleCache(pool *fdpool.Pool, size int) *handleCache {
	c := &handleCache{pool: pool, size: max(size, 0), entries: make(map[ID]*handle)}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	c.unregister = pool.AddReclaimer(c.reclaimIdle)
	return c
}

func (c *handleCache) unlinkLocked(h *handle) {
	h.prev.next, h.next.prev = h.next, h.prev
	h.prev, h.next = nil, nil
}

func (c *handleCache) pushFrontLocked(h *handle) {
	h.next, h.prev = c.lru.next, &c.lru
	c.lru.next.prev = h
	c.lru.next = h
}

// acquire returns a ready handle on segment id with a reference the caller must give back with
// release. A cached handle is shared; otherwise the file is opened through the pool (which may
// wait, and fails with storage.ErrBusy after the acquire timeout). Concurrent misses on the same
// segment share one open.
func (c *handleCache) acquire(ctx context.Context, id ID, path string) (*handle, error) {
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		if h, ok := c.entries[id]; ok {
			h.refs++
			c.unlinkLocked(h)
			c.pushFrontLocked(h)
			c.mu.Unlock()
			select {
			case <-h.ready:
			case <-ctx.Done():
				c.release(h)
				return nil, fmt.Errorf("wait for segment %s to open: %w", id, context.Cause(ctx))
			}
			if h.err == nil {
				c.hits.Add(1)
				return h, nil
			}
			c.release(h)
			// The opener's failure may be its own (its context ended, its pool wait timed
			// out): try once more as the opener before reporting it.
			if attempt < 1 {
				continue
			}
			return nil, h.err
		}
		c.misses.Add(1)
		h := &handle{id: id, refs: 1, ready: make(chan struct{})}
		if c.size > 0 && !c.closed {
			// Entered before the open so that concurrent misses share it. Older handles
			// make room only once the open succeeded: a failed open (an exhausted pool)
			// must not cost the cache a handle that still serves other readers.
			h.refs++ // the cache's own reference
			h.cached = true
			c.entries[id] = h
			c.pushFrontLocked(h)
		}
		c.mu.Unlock()

		f, err := c.pool.Open(ctx, path)
		c.mu.Lock()
		if err != nil {
			h.err = err
			if h.cached {
				c.dropLocked(h)
			}
		} else {
			h.f = f
			c.open.Add(1)
			if h.cached {
				c.evictOverLocked(h)
			}
		}
		close(h.ready)
		c.mu.Unlock()
		if err != nil {
			c.release(h)
			return nil, err
		}
		return h, nil
	}
}

// evictOverLocked drops least recently used handles beyond the capacity, keeping keep (the
// handle just opened). Handles still being opened count too, so the cache briefly exceeds its
// size only by opens in flight, each of which holds a pool slot.
func (c *handleCache) evictOverLocked(keep *handle) {
	for len(c.entries) > c.size {
		victim := c.lru.prev
		if victim == keep {
			victim = victim.prev
		}
		if victim == &c.lru {
			return
		}
		c.dropLocked(victim)
		c.evictions.Add(1)
	}
}

// dropLocked takes h out of the cache and gives up the cache's reference.
func (c *handleCache) dropLocked(h *handle) {
	if !h.cached {
		return
	}
	h.cached = false
	delete(c.entries, h.id)
	c.unlinkLocked(h)
	c.unrefLocked(h)
}

func (c *handleCache) unrefLocked(h *handle) {
	h.refs--
	if h.refs > 0 {
		return
	}
	if h.f != nil {
		// Closing returns the pool slot. Only a failed close of a read-only descriptor is
		// possible here, and it changes nothing on disk.
		_ = h.f.Close()
		h.f = nil
		c.open.Add(-1)
	}
}

// release gives back a reference obtained from acquire. A handle that stays cached but idle
// while others wait for a descriptor is closed at once: an idle cache entry must never hold a
// slot a request is waiting for.
func (c *handleCache) release(h *handle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unrefLocked(h)
	if h.cached && h.refs == 1 && c.pool.Waiters() > 0 {
		c.dropLocked(h)
		c.evictions.Add(1)
	}
}

// reclaimIdle closes the least recently used handle that no reader is using. It is the pool's
// reclaimer.
func (c *handleCache) reclaimIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for h := c.lru.prev; h != &c.lru; h = h.prev {
		if h.refs == 1 && h.f != nil {
			c.dropLocked(h)
			c.evictions.Add(1)
			return true
		}
	}
	return false
}

// remove forgets segment id, which has just been unlinked: its descriptor closes now, or when
// its last reader finishes. A handle still being opened is taken out too, so it is not cached
// after the file is gone (its opener either failed with ENOENT or holds the last reference).
func (c *handleCache) remove(id ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.entries[id]; ok {
		c.dropLocked(h)
		c.evictions.Add(1)
	}
}

// trim closes every idle cached handle.
func (c *handleCache) trim() int {
	n := 0
	for c.reclaimIdle() {
		n++
	}
	return n
}

// close drops every cached handle; handles in use close when their readers finish. Later
// acquires open uncached handles.
func (c *handleCache) close() {
	c.unregister()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for c.lru.next != &c.lru {
		c.dropLocked(c.lru.next)
	}
}

// HandleStats describes the segment read-handle cache.
type HandleStats struct {
	// Hits and Misses count OpenRecord calls served by a cached handle or needing an open.
	Hits, Misses uint64
	// Evictions counts handles dropped from the cache: over capacity, closed because a request
	// needed the pool slot, trimmed, or their segment was removed.
	Evictions uint64
	// Open is the number of open read handles, cached or still used by a reader after eviction.
	Open int64
	// Cached is the number of handles in the cache; Capacity its size.
	Cached, Capacity int
	// TrustedReads counts streamed record reads served without checking blocks again, the
	// record having been checked recently (verified.go); Sendfiles those of them handed to a
	// socket with sendfile.
	TrustedReads, Sendfiles uint64
}

// HandleStats returns the read-handle cache's counters.
func (m *Manager) HandleStats() HandleStats {
	c := m.handles
	c.mu.Lock()
	cached := len(c.entries)
	c.mu.Unlock()
	return HandleStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Evictions: c.evictions.Load(),
		Open: c.open.Load(), Cached: cached, Capacity: c.size,
		TrustedReads: m.trustedReads.Load(), Sendfiles: m.sendfiles.Load()}
}

// TrimHandles closes every idle cached read handle and returns how many it closed. The memory
// controller trims above the hard watermark; handles in use are left alone.
func (m *Manager) TrimHandles() int { return m.handles.trim() }
