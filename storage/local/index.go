package local

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// storage.Index: the replication view of the store (anti-entropy digests, listings,
// tombstones, evicted stubs).
var _ storage.Index = (*Store)(nil)

// Listing limits for ListObjects.
const (
	// DefaultListLimit is the page size when the caller passes limit <= 0.
	DefaultListLimit = 1000
	// MaxListLimit caps a page: summaries are about 200 bytes, so a page stays near 2 MiB.
	MaxListLimit = 10000
	// minListScan is the fewest manifests one ListObjects call examines before it returns a
	// shorter page and a token: a single bucket of 1024 holds one key in a thousand, so a
	// smaller budget would mostly return empty pages, and a larger one would let one call
	// hold an iterator (and a request) for long on a store of millions of objects.
	minListScan = 10000
	// digestRetryInterval spaces rebuild attempts after a failed one (an I/O error).
	digestRetryInterval = 10 * time.Second
)

// listTokenV1 is the first byte of a ListObjects page token; the rest is the encoded
// manifest key the next page starts at (inclusive).
const listTokenV1 byte = 1

// maxListToken bounds a token: an encoded key is at most 4 identifiers and 4 separator bytes.
const maxListToken = 1 + 4*storage.MaxIdentifierBytes + 4

// digestState keeps the bucket digests of every manifest (objects and evicted stubs) in
// memory. The commit path updates it incrementally after each Pebble commit; a full rebuild
// runs at Open and whenever a damaged manifest was removed whose contribution cannot be
// computed any more.
//
// Consistency with a rebuild that runs while writes continue: every commit that changes a
// digest holds gate shared from its Pebble commit until its change is applied, and the
// rebuild holds gate exclusively only while it opens its iterator. So each commit is either
// wholly inside the rebuild's view (and its change already applied to the old table, which
// is discarded) or wholly after it, in which case its change is also recorded in changes and
// merged into the rebuilt table.
type digestState struct {
	gate sync.RWMutex

	mu      sync.Mutex
	table   *meta.DigestTable
	changes *meta.DigestTable // non-nil while a rebuild walks its view
	built   bool

	ready chan struct{} // closed once the first build completed
	kick  chan struct{} // asks the digest loop for a rebuild
}

func (d *digestState) init() {
	d.table = new(meta.DigestTable)
	d.ready = make(chan struct{})
	d.kick = make(chan struct{}, 1)
}

// entryDigest is one object's bucket and entry hash.
type entryDigest struct {
	bucket uint32
	hash   [meta.DigestSize]byte
}

func digestOf(encodedKey []byte, kind storage.Kind, m *meta.Manifest) entryDigest {
	return entryDigest{
		bucket: meta.DigestBucket(encodedKey, storage.DigestBucketBits),
		hash:   meta.EntryHash(encodedKey, kind, m.SHA256, m.Version),
	}
}

// apply XORs out remove and XORs in add (either may be nil).
func (d *digestState) apply(remove, add *entryDigest) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range []*meta.DigestTable{d.table, d.changes} {
		if t == nil {
			continue
		}
		if remove != nil {
			t.Remove(remove.bucket, &remove.hash)
		}
		if add != nil {
			t.Add(add.bucket, &add.hash)
		}
	}
}

// merge applies a batch of changes (a namespace deletion).
func (d *digestState) merge(delta *meta.DigestTable) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.table.Merge(delta)
	if d.changes != nil {
		d.changes.Merge(delta)
	}
}

func (d *digestState) objects() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.table.Objects()
}

// commitDigested commits b durably and then applies its digest change, both inside the
// rebuild gate. The caller holds the key's lock, so no other change of the key interleaves.
func (s *Store) commitDigested(b *meta.Batch, remove, add *entryDigest) error {
	s.digests.gate.RLock()
	defer s.digests.gate.RUnlock()
	if err := b.Commit(); err != nil {
		return err
	}
	s.digests.apply(remove, add)
	return nil
}

// commitDelta is commitDigested for a batch of changes (a namespace deletion, under the
// namespace's exclusive lock).
func (s *Store) commitDelta(b *meta.Batch, delta *meta.DigestTable) error {
	s.digests.gate.RLock()
	defer s.digests.gate.RUnlock()
	if err := b.Commit(); err != nil {
		return err
	}
	s.digests.merge(delta)
	return nil
}

// kickDigestRebuild asks for a full rebuild: a manifest whose digest contribution is unknown
// (it could not be decoded) was removed or replaced.
func (s *Store) kickDigestRebuild() {
	select {
	case s.digests.kick <- struct{}{}:
	default:
	}
}

// digestLoop builds the digests at Open and rebuilds them on request; owned by the Store and
// stopped by Close. The first build runs in the background so a store of millions of
// objects serves reads and writes at once; BucketDigests waits for it.
func (s *Store) digestLoop() {
	defer s.bg.Done()
	for {
		var retry <-chan time.Time
		if err := s.rebuildDigests(s.bgCtx); err != nil {
			if s.bgCtx.Err() != nil {
				return
			}
			s.log.Error("build anti-entropy digests", "error", err, "retry_in", digestRetryInterval)
			retry = time.After(digestRetryInterval)
		}
		select {
		case <-s.bgCtx.Done():
			return
		case <-s.digests.kick:
		case <-retry:
		}
	}
}

// rebuildDigests recomputes every bucket digest with one walk over the manifests while
// writes continue (see digestState for why the result is exact).
func (s *Store) rebuildDigests(ctx context.Context) error {
	start := time.Now()
	d := &s.digests
	// The first walk also builds the existence index; its recording starts before the
	// iterator's snapshot is taken (see existenceIndex).
	var exists *existBuild
	if !s.exists.isReady() {
		exists = s.exists.begin()
	}
	d.gate.Lock()
	it, err := s.db.NewManifestIterator(ctx, nil)
	if err != nil {
		d.gate.Unlock()
		if exists != nil {
			exists.finish(false)
		}
		return fmt.Errorf("rebuild digests: %w", err)
	}
	changes := new(meta.DigestTable)
	d.mu.Lock()
	d.changes = changes
	d.mu.Unlock()
	d.gate.Unlock()

	// The walk's workers feed the existence index build through one lock: the build is a
	// plain map set, cheap next to decoding and hashing a manifest.
	var add func(ek []byte, m *meta.Manifest)
	if exists != nil {
		var mu sync.Mutex
		add = func(ek []byte, m *meta.Manifest) {
			mu.Lock()
			exists.add(ek, m)
			mu.Unlock()
		}
	}
	fresh, corrupt, err := walkDigests(it, add)
	err = errors.Join(err, it.Close())
	if exists != nil {
		exists.finish(err == nil)
	}

	d.mu.Lock()
	d.changes = nil
	if err == nil {
		fresh.Merge(changes)
		d.table = fresh
		s.metrics.digestBuilds.Inc()
		if !d.built {
			d.built = true
			close(d.ready)
		}
	}
	objects := d.table.Objects()
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("rebuild digests: %w", err)
	}
	if corrupt > 0 {
		s.log.Error("manifests that cannot be decoded were left out of the anti-entropy digests", "count", corrupt)
	}
	s.log.Info("anti-entropy digests built", "objects", objects, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// digestWalkBatch is how many manifests the walk hands a decoding worker at once: large enough
// that the channel hand-off is noise, small enough that a batch's copies stay in cache.
const digestWalkBatch = 512

// rawManifests is one batch of the walk: copies of encoded keys and stored values, end
// offsets into buf.
type rawManifests struct {
	buf  []byte
	ends []int // key end, value end, key end, value end, …
}

// walkDigests sums the digests of every manifest it yields. The iterator stays on this
// goroutine (Pebble iterators are not safe for concurrent use) and only copies raw keys and
// values; decoding and the two SHA-256 per manifest, three quarters of the walk's CPU, run on
// one worker per core, each into its own table, merged at the end (XOR and counts commute).
// At 1,000,000 objects that is what the restart of a cluster node waits for before its first
// anti-entropy round, and so before it is ready. add, when set, is called from the workers
// (concurrently) with every manifest, nil for one that cannot be decoded; neither argument
// outlives the call.
func walkDigests(it *meta.ManifestIterator, add func(ek []byte, m *meta.Manifest)) (*meta.DigestTable, int, error) {
	workers := max(1, min(runtime.GOMAXPROCS(0), 8))
	work := make(chan *rawManifests, workers)
	free := make(chan *rawManifests, 2*workers+1)
	for range cap(free) {
		free <- &rawManifests{}
	}
	tables := make([]*meta.DigestTable, workers)
	corrupt := make([]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		tables[w] = new(meta.DigestTable)
		wg.Go(func() {
			for b := range work {
				start := 0
				for i := 0; i < len(b.ends); i += 2 {
					k, v := b.buf[start:b.ends[i]], b.buf[b.ends[i]:b.ends[i+1]]
					start = b.ends[i+1]
					key, err := meta.DecodeManifestKey(k)
					var m meta.Manifest
					if err == nil {
						m, err = meta.DecodeManifestView(v)
					}
					if err != nil {
						// Not counted: the record is dropped when it is next read, and a
						// peer's copy then differs from nothing here, so anti-entropy
						// restores it.
						corrupt[w]++
						if add != nil {
							add(k, nil)
						}
						continue
					}
					e := digestOf(k, key.Kind, &m)
					tables[w].Add(e.bucket, &e.hash)
					if add != nil {
						add(k, &m)
					}
				}
				free <- b
			}
		})
	}
	b := <-free
	b.buf, b.ends = b.buf[:0], b.ends[:0]
	unreadable := 0
	for it.Next() {
		v, err := it.RawValue()
		if err != nil {
			unreadable++ // counted with the undecodable ones, as a single-threaded walk did
			if add != nil {
				add(it.EncodedKey(), nil)
			}
			continue
		}
		b.buf = append(b.buf, it.EncodedKey()...)
		b.ends = append(b.ends, len(b.buf))
		b.buf = append(b.buf, v...)
		b.ends = append(b.ends, len(b.buf))
		if len(b.ends) == 2*digestWalkBatch {
			work <- b
			b = <-free
			b.buf, b.ends = b.buf[:0], b.ends[:0]
		}
	}
	if len(b.ends) > 0 {
		work <- b
	}
	close(work)
	wg.Wait()
	fresh := tables[0]
	for _, t := range tables[1:] {
		fresh.Merge(t)
	}
	n := unreadable
	for _, c := range corrupt {
		n += c
	}
	return fresh, n, it.Err()
}

// waitDigests blocks until the first build completed.
func (s *Store) waitDigests(ctx context.Context) error {
	select {
	case <-s.digests.ready:
		return nil
	default:
	}
	select {
	case <-s.digests.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: the digests are still being built: %w", storage.ErrUnavailable, context.Cause(ctx))
	case <-s.bgCtx.Done():
		return fmt.Errorf("%w: the store is closing", storage.ErrUnavailable)
	}
}

// BucketDigests implements storage.Index. It costs a copy of the in-memory table (32 KiB),
// never a scan; right after Open it waits for the first build.
func (s *Store) BucketDigests(ctx context.Context, bits uint32) ([]byte, uint64, error) {
	if bits > storage.DigestBucketBits {
		return nil, 0, fmt.Errorf("bucket digests: %w: %d bucket bits requested, at most %d are supported",
			storage.ErrInvalidKey, bits, storage.DigestBucketBits)
	}
	if err := s.ops.enter(); err != nil {
		return nil, 0, fmt.Errorf("bucket digests: %w", err)
	}
	defer s.ops.leave()
	if err := s.waitDigests(ctx); err != nil {
		return nil, 0, fmt.Errorf("bucket digests: %w", err)
	}
	s.digests.mu.Lock()
	snapshot := *s.digests.table
	s.digests.mu.Unlock()
	out, err := snapshot.Digests(bits)
	if err != nil {
		return nil, 0, fmt.Errorf("bucket digests: %w", err)
	}
	return out, uint64(max(snapshot.Objects(), 0)), nil
}

// bucketSet is a ListObjects filter; nil selects every bucket.
type bucketSet []bool

func newBucketSet(bits uint32, buckets []uint32) (bucketSet, error) {
	if bits > storage.DigestBucketBits {
		return nil, fmt.Errorf("%w: %d bucket bits requested, at most %d are supported",
			storage.ErrInvalidKey, bits, storage.DigestBucketBits)
	}
	if len(buckets) == 0 {
		return nil, nil
	}
	set := make(bucketSet, 1<<bits)
	for _, b := range buckets {
		if uint64(b) >= uint64(len(set)) {
			return nil, fmt.Errorf("%w: bucket %d does not exist with %d bucket bits", storage.ErrInvalidKey, b, bits)
		}
		set[b] = true
	}
	return set, nil
}

func encodeListToken(encodedKey []byte) []byte {
	return append([]byte{listTokenV1}, encodedKey...)
}

func decodeListToken(token []byte) ([]byte, error) {
	if token == nil {
		return nil, nil
	}
	if len(token) < 2 || len(token) > maxListToken || token[0] != listTokenV1 {
		return nil, fmt.Errorf("%w: malformed page token", storage.ErrInvalidKey)
	}
	return token[1:], nil
}

// ListObjects implements storage.Index. Each call examines at most max(4×limit, 10000)
// manifests, so a narrow bucket filter over a large store returns short (even empty) pages
// with a token rather than one long scan. Evicted stubs are listed with Evicted set; damaged
// manifests are skipped (they are dropped when read).
func (s *Store) ListObjects(ctx context.Context, bits uint32, buckets []uint32, after []byte, limit int) ([]storage.ObjectSummary, []byte, error) {
	set, err := newBucketSet(bits, buckets)
	if err != nil {
		return nil, nil, fmt.Errorf("list objects: %w", err)
	}
	start, err := decodeListToken(after)
	if err != nil {
		return nil, nil, fmt.Errorf("list objects: %w", err)
	}
	if limit <= 0 {
		limit = DefaultListLimit
	}
	limit = min(limit, MaxListLimit)
	if err := s.ops.enter(); err != nil {
		return nil, nil, fmt.Errorf("list objects: %w", err)
	}
	defer s.ops.leave()
	it, err := s.db.NewManifestIterator(ctx, start)
	if err != nil {
		return nil, nil, fmt.Errorf("list objects: %w", err)
	}
	defer it.Close()
	budget := max(4*limit, minListScan)
	var out []storage.ObjectSummary
	for scanned := 0; it.Next(); scanned++ {
		ek := it.EncodedKey()
		if len(out) == limit || scanned == budget {
			return out, encodeListToken(ek), nil
		}
		if set != nil && !set[meta.DigestBucket(ek, bits)] {
			continue
		}
		k, m, err := it.Entry()
		if err != nil {
			continue
		}
		out = append(out, storage.ObjectSummary{Info: m.Info(k), Evicted: m.Evicted})
	}
	if err := it.Err(); err != nil {
		return nil, nil, classify("list objects", err)
	}
	return out, nil, nil
}

// Tombstones implements storage.Index. A damaged tombstone is logged and left out.
func (s *Store) Tombstones(ctx context.Context) ([]storage.Tombstone, error) {
	if err := s.ops.enter(); err != nil {
		return nil, fmt.Errorf("list tombstones: %w", err)
	}
	defer s.ops.leave()
	var out []storage.Tombstone
	err := s.db.ScanTombstones(ctx, func(t storage.Tombstone, err error) error {
		if err != nil {
			s.log.Error("skipping a damaged namespace tombstone", "error", err)
			return nil
		}
		out = append(out, t)
		return nil
	})
	if err != nil {
		return nil, classify("list tombstones", err)
	}
	return out, nil
}

// ApplyStub implements storage.Index: it records a peer's evicted object as an evicted stub
// unless the copy held here prevails by storage.Replaces (an immutable object always does, a
// stub unless the peer's is the cluster's first writer; for last-writer-wins kinds one at the
// same or a newer version) or the namespace's tombstone is not older than the stub. It
// reports nothing to the CommitObserver: a stub is learnt from a peer and never pushed back.
func (s *Store) ApplyStub(_ context.Context, info storage.Info) error {
	key := info.Key
	if err := key.Validate(); err != nil {
		return fmt.Errorf("apply stub: %w", err)
	}
	if info.Size < 0 || info.Version == 0 {
		return fmt.Errorf("apply stub of %s: %w: a stub needs a size >= 0 and the origin's version (got %d, %v)",
			key, storage.ErrInvalidKey, info.Size, info.Version)
	}
	if err := s.ops.enter(); err != nil {
		return fmt.Errorf("apply stub of %s: %w", key, err)
	}
	defer s.ops.leave()
	unlock := s.lockKey(key)
	defer unlock()
	if tomb, ok, err := s.db.GetTombstone(key.Tenant, key.Namespace); err != nil {
		return classify("apply stub of "+key.String(), err)
	} else if ok && info.Version <= tomb {
		return nil
	}
	var prev *meta.Manifest
	unknownPrev := false
	switch cur, err := s.db.GetManifest(key); {
	case err == nil:
		if !storage.Replaces(key.Kind, storage.Copy{Version: info.Version, SHA256: info.SHA256, Evicted: true}, copyOf(cur)) {
			return nil
		}
		prev = &cur
	case errors.Is(err, storage.ErrCorrupt):
		s.log.Error("replacing corrupt manifest with a stub", "key", key.String(), "error", err)
		s.metrics.corrupt.Inc()
		unknownPrev = true
	case !errors.Is(err, storage.ErrNotFound):
		return classify("apply stub of "+key.String(), err)
	}
	s.clock.Observe(info.Version)
	stub := meta.Manifest{Evicted: true, Size: info.Size, ContentType: info.ContentType, SHA256: info.SHA256, Version: info.Version,
		Attributes: info.Attributes}
	// A peer's stub settling the version does not undo this node's expiry: the stub stays
	// one replication does not fill.
	stub.Expired = prev != nil && prev.Expired
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.PutManifest(key, stub, prev); err != nil {
		return fmt.Errorf("apply stub: %w", err)
	}
	ek := meta.ManifestKey(key)
	add := digestOf(ek, key.Kind, &stub)
	var remove *entryDigest
	if prev != nil {
		r := digestOf(ek, key.Kind, prev)
		remove = &r
	}
	if err := s.commitDigested(b, remove, &add); err != nil {
		s.mcache.invalidate(ek)
		return classify("apply stub of "+key.String(), err)
	}
	s.mcache.update(ek, stub)
	if unknownPrev {
		s.kickDigestRebuild()
	}
	return nil
}
