package local

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// DefaultManifestCacheBytes is the manifest cache's size when Options leave it at zero: the
// lower end of KURA_MANIFEST_CACHE_MAX_BYTES's derivation clamp [8 MiB, 64 MiB].
const DefaultManifestCacheBytes = 8 << 20

// manifestEntryOverhead approximates what an entry costs beyond its key and variable fields:
// the entry struct and the map slot pointing at it. Counting it keeps the byte bound honest
// for the many small manifests of a CAS workload, where the fixed part dominates.
const manifestEntryOverhead = int64(unsafe.Sizeof(manifestEntry{})) + 48

// manifestCache is the in-memory hot set of manifests in front of Pebble, bounded in bytes
// (KURA_MANIFEST_CACHE_MAX_BYTES). Stat, Open, FindMissing and the first-writer-wins check of
// Put look here first; a miss reads Pebble and admits what it found.
//
// It is never stale. Every manifest change the store makes updates or drops the key's entry
// after its batch committed, while the key's lock is held (put, replace, evicted stub, moved
// record, corrupt drop) or the namespace's exclusive lock (clean). A reader that missed reads
// Pebble without any lock, so its admission could race such a change and bring the old value
// back; to rule that out, every change also bumps a generation counter (one of keyStripes
// striped by key, and for a clean one of nsStripes striped by namespace), the reader samples
// both before its Pebble read, and admission is refused when either moved. Since the change is
// applied under the cache lock after its commit, an admission either happens before it (and is
// overwritten by it) or sees the moved generation.
type manifestCache struct {
	max  int64 // bytes; 0 disables the cache
	seed maphash.Seed

	// exists learns every change of one key the cache learns (update and invalidate are the
	// one place every such change reaches after its commit), enabled or not; namespace
	// deletions tell it themselves (deleteNamespace), since some of the namespace survives.
	exists *existenceIndex

	admission atomic.Bool

	keyGens [1024]atomic.Uint64
	nsGens  [64]atomic.Uint64

	mu         sync.Mutex
	entries    map[string]*manifestEntry
	namespaces map[nsKey]*manifestEntry // sentinel of each namespace's ring
	lru        manifestEntry            // sentinel: lru.next is the most recently used
	bytes      int64

	hits, misses atomic.Uint64
	admissions   *prometheus.CounterVec
	admitted     prometheus.Counter
	skipped      prometheus.Counter
	tooLarge     prometheus.Counter
}

type nsKey struct{ tenant, namespace string }

type manifestEntry struct {
	key  string // the encoded manifest key
	m    meta.Manifest
	size int64
	ns   *manifestEntry // the namespace ring's sentinel

	prev, next     *manifestEntry // LRU ring
	nsPrev, nsNext *manifestEntry // namespace ring
}

// cacheToken is what a reader samples before its Pebble read; see manifestCache.
type cacheToken struct{ key, ns uint64 }

func newManifestCache(maxBytes int64) *manifestCache {
	c := &manifestCache{
		max:        max(maxBytes, 0),
		seed:       maphash.MakeSeed(),
		entries:    make(map[string]*manifestEntry),
		namespaces: make(map[nsKey]*manifestEntry),
	}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	c.admission.Store(true)
	admissions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_manifest_cache_admissions_total",
		Help: "Manifests read from the metadata store and offered to the manifest cache, by outcome: admitted, skipped (admission switched off under memory pressure, or a concurrent change made the read stale) or rejected_too_large (bigger than 1/16 of the cache).",
	}, []string{"outcome"})
	c.admitted = admissions.WithLabelValues("admitted")
	c.skipped = admissions.WithLabelValues("skipped")
	c.tooLarge = admissions.WithLabelValues("rejected_too_large")
	c.admissions = admissions
	return c
}

func (c *manifestCache) enabled() bool { return c.max > 0 }

func (c *manifestCache) keyStripe(ek []byte) *atomic.Uint64 {
	return &c.keyGens[maphash.Bytes(c.seed, ek)%uint64(len(c.keyGens))]
}

func (c *manifestCache) nsStripe(tenant, namespace string) *atomic.Uint64 {
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(tenant)
	h.WriteByte(0)
	h.WriteString(namespace)
	return &c.nsGens[h.Sum64()%uint64(len(c.nsGens))]
}

// get returns the cached manifest of the encoded key ek.
func (c *manifestCache) get(ek []byte) (meta.Manifest, bool) {
	if !c.enabled() {
		return meta.Manifest{}, false
	}
	c.mu.Lock()
	e, ok := c.entries[string(ek)]
	var m meta.Manifest
	if ok {
		m = e.m // copied under the lock: update replaces it in place
		c.unlinkLRU(e)
		c.pushLRU(e)
	}
	c.mu.Unlock()
	if !ok {
		c.misses.Add(1)
		return meta.Manifest{}, false
	}
	c.hits.Add(1)
	return m, true
}

// token samples the generations of key before a Pebble read.
func (c *manifestCache) token(key storage.Key, ek []byte) cacheToken {
	if !c.enabled() {
		return cacheToken{}
	}
	return cacheToken{key: c.keyStripe(ek).Load(), ns: c.nsStripe(key.Tenant, key.Namespace).Load()}
}

func entrySize(ek []byte, m *meta.Manifest) int64 {
	return manifestEntryOverhead + int64(len(ek)+len(m.ContentType)+len(m.Body)+m.Attributes.Size())
}

// admit offers a manifest just read from Pebble. It is refused when admission is off, when it
// is too large, or when the key or its namespace changed since tok was taken.
func (c *manifestCache) admit(key storage.Key, ek []byte, m meta.Manifest, tok cacheToken) {
	if !c.enabled() {
		return
	}
	if !c.admission.Load() {
		c.skipped.Inc()
		return
	}
	size := entrySize(ek, &m)
	if size > c.max/16 {
		c.tooLarge.Inc()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keyStripe(ek).Load() != tok.key || c.nsStripe(key.Tenant, key.Namespace).Load() != tok.ns {
		c.skipped.Inc()
		return
	}
	if e, ok := c.entries[string(ek)]; ok {
		// Another reader admitted the same (current) manifest first.
		c.unlinkLRU(e)
		c.pushLRU(e)
		return
	}
	e := &manifestEntry{key: string(ek), m: m, size: size}
	nk := nsKey{key.Tenant, key.Namespace}
	ns, ok := c.namespaces[nk]
	if !ok {
		ns = &manifestEntry{key: nk.tenant + "\x00" + nk.namespace}
		ns.nsNext, ns.nsPrev = ns, ns
		c.namespaces[nk] = ns
	}
	e.ns = ns
	e.nsNext, e.nsPrev = ns.nsNext, ns
	ns.nsNext.nsPrev = e
	ns.nsNext = e
	c.entries[e.key] = e
	c.pushLRU(e)
	c.bytes += size
	c.admitted.Inc()
	for c.bytes > c.max && c.lru.prev != &c.lru {
		c.removeLocked(c.lru.prev)
	}
}

// update records that key's manifest is now m (committed). A cached entry is replaced (or
// dropped if m no longer fits); an absent key is not admitted: writes do not push hot read
// entries out, the first read admits it.
func (c *manifestCache) update(ek []byte, m meta.Manifest) {
	if c.exists != nil {
		c.exists.update(ek, &m)
	}
	if !c.enabled() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keyStripe(ek).Add(1)
	e, ok := c.entries[string(ek)]
	if !ok {
		return
	}
	size := entrySize(ek, &m)
	if size > c.max/16 {
		c.removeLocked(e)
		return
	}
	c.bytes += size - e.size
	e.m, e.size = m, size
	for c.bytes > c.max && c.lru.prev != &c.lru {
		c.removeLocked(c.lru.prev)
	}
}

// invalidate drops key's entry after its manifest was deleted (or a change of unknown outcome).
func (c *manifestCache) invalidate(ek []byte) {
	if c.exists != nil {
		c.exists.forget(ek)
	}
	if !c.enabled() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keyStripe(ek).Add(1)
	if e, ok := c.entries[string(ek)]; ok {
		c.removeLocked(e)
	}
}

// invalidateNamespace drops every entry of tenant/namespace after a clean.
func (c *manifestCache) invalidateNamespace(tenant, namespace string) {
	if !c.enabled() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nsStripe(tenant, namespace).Add(1)
	ns, ok := c.namespaces[nsKey{tenant, namespace}]
	if !ok {
		return
	}
	for ns.nsNext != ns {
		c.removeLocked(ns.nsNext)
	}
}

// trim empties the cache; it returns the bytes it released.
func (c *manifestCache) trim() int64 {
	if !c.enabled() {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	freed := c.bytes
	for c.lru.next != &c.lru {
		c.removeLocked(c.lru.next)
	}
	return freed
}

func (c *manifestCache) removeLocked(e *manifestEntry) {
	delete(c.entries, e.key)
	c.unlinkLRU(e)
	e.nsPrev.nsNext, e.nsNext.nsPrev = e.nsNext, e.nsPrev
	ns := e.ns
	e.nsPrev, e.nsNext, e.ns = nil, nil, nil
	if ns.nsNext == ns {
		tenant, namespace, _ := cutNUL(ns.key)
		delete(c.namespaces, nsKey{tenant, namespace})
	}
	c.bytes -= e.size
}

func cutNUL(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func (c *manifestCache) unlinkLRU(e *manifestEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *manifestCache) pushLRU(e *manifestEntry) {
	e.next, e.prev = c.lru.next, &c.lru
	c.lru.next.prev = e
	c.lru.next = e
}

// stats returns the cache's size in bytes and entries.
func (c *manifestCache) stats() (bytes int64, entries int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes, len(c.entries)
}
