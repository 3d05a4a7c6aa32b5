package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"

	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
)

var _ storage.BatchPutter = (*Store)(nil)

// batchedPut is one item of a PutBatch on its way to the shared commit.
type batchedPut struct {
	i   int // index in the caller's items
	key storage.Key
	ek  []byte // meta.ManifestKey(key)
	sum [sha256.Size]byte
	loc segment.Location
	// absent: the first-writer check found no manifest while the key's stripe counts were
	// keyGen and nsGen (see Store.keyGen).
	absent        bool
	keyGen, nsGen uint64
}

// PutBatch implements storage.BatchPutter: the items' bodies are framed into one segment
// append that shares one fdatasync, and their manifests, segment-index entries and the
// observer's additions (the outbox entries of each item) go into one synced Pebble batch.
// A batch of 100 small blobs thus costs one write, one segment sync and one Pebble sync,
// where 100 Puts cost 100 of each (shared only as far as concurrent Puts happen to overlap).
//
// Each item is judged on its own before anything is written, like Put would judge it: an
// invalid item (bad key, too large, wrong size or digest) fails alone, an existing immutable
// object is the answer without writing. The commit re-checks every item under its key lock
// (tombstones, the conflict rule) exactly as commitManifest does. What the batch does not
// take — keyvalue documents (inline in Pebble), bodies above the spill threshold, and a second
// write of a key already in the batch — is written with Put after the batch, in order.
// Replicated writes (Opts.Version set: a peer's PushBatch) are taken and judged as Put judges
// them: committed at the origin's version, and an immutable object already stored is replaced
// when the conflict rule (storage.Replaces) says the item is the cluster's first writer.
//
// An environmental failure of the shared append or commit (I/O, a full disk) fails every item
// that was part of it; nothing of it is acknowledged, and bytes appended for it are garbage
// that no manifest references.
func (s *Store) PutBatch(ctx context.Context, items []storage.PutItem) []storage.PutItemResult {
	out := make([]storage.PutItemResult, len(items))
	if err := s.ops.enter(); err != nil {
		for i := range items {
			out[i].Err = fmt.Errorf("put %s: %w", items[i].Key, err)
		}
		return out
	}
	defer s.ops.leave()

	var (
		batch []batchedPut
		recs  []segment.Record
		later []int // items written with put after the batch
	)
	inBatch := make(map[string]struct{}, len(items))
	limit := min(s.spillThreshold(), segment.MaxBatchBytes/2) // a record always fits one part
	for i := range items {
		it := &items[i]
		if err := it.Key.Validate(); err != nil {
			out[i].Err = fmt.Errorf("put: %w", err)
			continue
		}
		if it.Key.Kind == storage.KindKeyValue || int64(len(it.Body)) > limit {
			later = append(later, i)
			continue
		}
		ek := meta.ManifestKey(it.Key)
		if _, dup := inBatch[string(ek)]; dup {
			later = append(later, i)
			continue
		}
		p := batchedPut{i: i, key: it.Key, ek: ek}
		res, done, err := s.judgeBatchItem(it, &p)
		if done || err != nil {
			out[i] = storage.PutItemResult{PutResult: res, Err: err}
			continue
		}
		inBatch[string(ek)] = struct{}{}
		batch = append(batch, p)
		sum := p.sum
		recs = append(recs, segment.Record{Name: ek, Body: it.Body, SHA256: sum})
	}
	// Bounded by MaxBatchBytes per append: a caller's batch larger than that commits in parts.
	for start := 0; start < len(batch); {
		end, size := start, int64(0)
		for end < len(batch) {
			n := segment.RecordSize(int64(len(recs[end].Body)), len(recs[end].Name))
			if end > start && size+n > segment.MaxBatchBytes {
				break
			}
			size += n
			end++
		}
		s.putBatchPart(ctx, items, batch[start:end], recs[start:end], size, out)
		start = end
	}
	for _, i := range later {
		it := &items[i]
		res, err := s.put(ctx, it.Key, bytes.NewReader(it.Body), it.Opts)
		out[i] = storage.PutItemResult{PutResult: res, Err: err}
	}
	if s.uses != nil {
		for i := range out {
			if out[i].Err == nil {
				s.touchWritten(items[i].Key)
			}
		}
	}
	return out
}

// judgeBatchItem applies Put's checks to an in-memory body: done (with res) when an immutable
// object is already stored, an error when the item is refused, else the body's digest in p.
func (s *Store) judgeBatchItem(it *storage.PutItem, p *batchedPut) (res storage.PutResult, done bool, err error) {
	key := it.Key
	indexAbsent := false
	if !key.Kind.LastWriterWins() {
		keyGen, nsGen := s.keyGenSlot(s.keyHash(key)).Load(), s.nsGen[s.nsStripe(key.Tenant, key.Namespace)].Load()
		// The existence index's definite "no manifest" spares the Pebble get, most of the
		// item's remaining CPU: a commit it has not learned yet has not bumped the change
		// counts yet either, so commitBatch reads Pebble for the key under its lock.
		indexAbsent = s.exists.absent(p.ek)
		notFound := indexAbsent
		if !indexAbsent {
			if res, done, notFound, err = s.storedAnswer(key, p.ek, it.Opts); done || err != nil {
				return res, done, err
			}
		}
		if notFound {
			p.absent, p.keyGen, p.nsGen = true, keyGen, nsGen
		}
	}
	sum, err := checkBatchBody(it)
	if err != nil && indexAbsent {
		// An object stored a moment ago, which the index has not learned yet, is still the
		// answer a refused body gets, as when the lookup came first.
		if stored, done, _, lerr := s.storedAnswer(key, p.ek, it.Opts); done && lerr == nil {
			return stored, true, nil
		}
	}
	if err != nil {
		return res, false, err
	}
	p.sum = sum
	return res, false, nil
}

// checkBatchBody applies Put's limit, size and digest checks to an in-memory body and returns
// its SHA-256.
func checkBatchBody(it *storage.PutItem) ([sha256.Size]byte, error) {
	key, opts := it.Key, it.Opts
	n := int64(len(it.Body))
	switch {
	case opts.Limit > 0 && opts.Size > opts.Limit:
		return [sha256.Size]byte{}, fmt.Errorf("put %s: declared size %d exceeds the limit %d: %w", key, opts.Size, opts.Limit, storage.ErrTooLarge)
	case opts.Limit > 0 && n > opts.Limit:
		return [sha256.Size]byte{}, fmt.Errorf("put %s: %w: body exceeds %d bytes", key, storage.ErrTooLarge, opts.Limit)
	case opts.Size >= 0 && n > opts.Size:
		return [sha256.Size]byte{}, fmt.Errorf("put %s: %w: body is longer than the declared %d bytes", key, storage.ErrDigestMismatch, opts.Size)
	case opts.Size >= 0 && n != opts.Size:
		return [sha256.Size]byte{}, fmt.Errorf("put %s: %w: body has %d bytes, declared %d", key, storage.ErrDigestMismatch, n, opts.Size)
	}
	sum := sha256.Sum256(it.Body)
	if opts.ExpectedSHA256 != nil && sum != *opts.ExpectedSHA256 {
		return sum, fmt.Errorf("put %s: %w: body SHA-256 %x, expected %x", key, storage.ErrDigestMismatch, sum, *opts.ExpectedSHA256)
	}
	return sum, nil
}

// putBatchPart appends one part's records with one shared sync and commits their manifests
// in one Pebble batch; results go to out.
func (s *Store) putBatchPart(ctx context.Context, items []storage.PutItem, part []batchedPut, recs []segment.Record, need int64, out []storage.PutItemResult) {
	failAll := func(err error) {
		for _, p := range part {
			out[p.i].Err = fmt.Errorf("put %s: %w", p.key, err)
		}
	}
	if err := s.ensureRoom(ctx, need); err != nil {
		failAll(err)
		return
	}
	ctx, span := s.tracer.Start(ctx, commitSpanName)
	if span.IsRecording() {
		// A batch is either a client's (BatchUpdateBlobs) or a peer's (PushBatch), whose items
		// all carry their origin's version.
		replicated := true
		for _, p := range part {
			replicated = replicated && items[p.i].Opts.Version != 0
		}
		span.SetAttributes(attrOp.String("put_batch"), attrSize.Int64(need), attrReplicated.Bool(replicated))
	}
	ticket := s.commits.begin()
	defer s.commits.end(ticket)
	locs, err := s.segs.AppendBatch(ctx, recs)
	if err != nil {
		err = classify("commit segment records", err)
		endCommit(span, false, err)
		failAll(err)
		return
	}
	for j := range part {
		part[j].loc = locs[j]
	}
	created, err := s.commitBatch(ctx, items, part, out)
	endCommit(span, created, err)
	if err != nil {
		failAll(err)
		return
	}
	s.kickEvictor()
}

// commitBatch is commitManifest for many keys at once: under every key's lock (taken in one
// global order, so concurrent batches cannot deadlock) each item gets the same tombstone,
// version and conflict checks, and the items that pass are committed in one synced batch
// together with their observer additions and digest updates. An item that loses (stale, or
// an immutable object stored meanwhile) gets its answer in out; an error fails every item of
// the part that had not been answered.
func (s *Store) commitBatch(ctx context.Context, items []storage.PutItem, part []batchedPut, out []storage.PutItemResult) (bool, error) {
	keys := make([]storage.Key, len(part))
	for j, p := range part {
		keys[j] = p.key
	}
	unlock := s.lockKeys(keys)
	defer unlock()

	type tombstone struct {
		v  storage.Version
		ok bool
	}
	tombs := map[[2]string]tombstone{}
	b := s.db.NewBatch()
	defer b.Close()
	type committing struct {
		p    *batchedPut
		m    meta.Manifest
		info storage.Info
	}
	commit := make([]committing, 0, len(part))
	var adds, removes []entryDigest
	unknownPrev := false
	spanCtx := trace.SpanContextFromContext(ctx)
	invalidate := func() {
		for _, c := range commit {
			s.mcache.invalidate(c.p.ek)
		}
	}
	for j := range part {
		p := &part[j]
		key := p.key
		nk := [2]string{key.Tenant, key.Namespace}
		tomb, seen := tombs[nk]
		if !seen {
			v, ok, err := s.db.GetTombstone(key.Tenant, key.Namespace)
			if err != nil {
				return false, classify("put "+key.String(), err)
			}
			tomb = tombstone{v, ok}
			tombs[nk] = tomb
		}
		unchanged := p.absent && s.keyGenSlot(s.keyHash(key)).Load() == p.keyGen &&
			s.nsGen[s.nsStripe(key.Tenant, key.Namespace)].Load() == p.nsGen
		prev, corrupt, err := s.previousManifest(key, p.ek, unchanged)
		if err != nil {
			return false, err
		}
		unknownPrev = unknownPrev || corrupt
		it := &items[p.i]
		version := it.Opts.Version
		if version == 0 {
			// A client's write: ordered after everything seen for the key and the namespace,
			// as in commitManifest.
			if tomb.ok {
				s.clock.Observe(tomb.v)
			}
			if prev != nil {
				s.clock.Observe(prev.Version)
			}
			version = s.clock.Now()
			if prev != nil && prev.Evicted && !key.Kind.LastWriterWins() && prev.SHA256 == p.sum {
				version = prev.Version
			}
		} else {
			s.clock.Observe(version)
		}
		if tomb.ok && version <= tomb.v {
			out[p.i].Err = fmt.Errorf("put %s at version %v: tombstone %v: %w", key, version, tomb.v, storage.ErrStale)
			continue
		}
		if prev != nil && (s.refusesReplicated(key.Kind, prev, it.Opts.Version, p.sum) ||
			!storage.Replaces(key.Kind, storage.Copy{Version: version, SHA256: p.sum}, copyOf(*prev))) {
			out[p.i].PutResult = storage.PutResult{Info: prev.Info(key)}
			continue
		}
		m := meta.Manifest{
			Location:    toMetaLocation(p.loc),
			Size:        int64(len(it.Body)),
			ContentType: it.Opts.ContentType,
			SHA256:      p.sum,
			Version:     version,
			Attributes:  it.Opts.Attributes,
		}
		commit = append(commit, committing{p: p, m: m})
		if err := b.PutManifest(key, m, prev); err != nil {
			invalidate()
			return false, err
		}
		info := m.Info(key)
		commit[len(commit)-1].info = info
		if s.opts.Observer != nil {
			c := storage.Change{Op: storage.ChangePut, Info: info, Replaced: prev != nil && !prev.Evicted, Version: version,
				Replicated: it.Opts.Version != 0, Trace: spanCtx}
			if err := s.opts.Observer.OnCommit(b, c); err != nil {
				invalidate()
				return false, fmt.Errorf("replication hook: %w", err)
			}
		}
		add := entryDigest{bucket: meta.DigestBucket(p.ek, storage.DigestBucketBits), hash: meta.EntryHash(p.ek, key.Kind, p.sum, version)}
		adds = append(adds, add)
		if prev != nil {
			removes = append(removes, entryDigest{bucket: add.bucket, hash: meta.EntryHash(p.ek, key.Kind, prev.SHA256, prev.Version)})
		}
	}
	if len(commit) == 0 {
		return false, nil
	}
	if err := s.commitDigestedMany(b, removes, adds); err != nil {
		invalidate()
		return false, classify("put batch", err)
	}
	for _, c := range commit {
		s.mcache.update(c.p.ek, c.m)
		out[c.p.i].PutResult = storage.PutResult{Info: c.info, Created: true}
	}
	if unknownPrev {
		s.kickDigestRebuild()
	}
	s.afterCommit()
	return true, nil
}

// commitDigestedMany is commitDigested for a batch of puts.
func (s *Store) commitDigestedMany(b *meta.Batch, removes, adds []entryDigest) error {
	s.digests.gate.RLock()
	defer s.digests.gate.RUnlock()
	if err := b.Commit(); err != nil {
		return err
	}
	for i := range removes {
		s.digests.apply(&removes[i], nil)
	}
	for i := range adds {
		s.digests.apply(nil, &adds[i])
	}
	return nil
}

// lockKeys is lockKey for many keys: the namespace stripes (shared), then the key stripes,
// each taken once and in ascending order, so two batches (or a batch and single writers,
// which hold one namespace and one key stripe) never wait for each other in a cycle. The
// result unlocks them all.
func (s *Store) lockKeys(keys []storage.Key) func() {
	nss := make([]int, 0, 1)
	kls := make([]int, 0, len(keys))
	hashes := make([]uint64, len(keys))
	for i, k := range keys {
		nss = append(nss, s.nsStripe(k.Tenant, k.Namespace))
		hashes[i] = s.keyHash(k)
		kls = append(kls, int(hashes[i]%uint64(len(s.keyLocks))))
	}
	slices.Sort(nss)
	nss = slices.Compact(nss)
	slices.Sort(kls)
	kls = slices.Compact(kls)
	for _, i := range nss {
		s.nsLocks[i].RLock()
	}
	for _, i := range kls {
		s.keyLocks[i].Lock()
	}
	return func() {
		for _, h := range hashes {
			s.keyGenSlot(h).Add(1) // see Store.keyGen
		}
		for _, i := range slices.Backward(kls) {
			s.keyLocks[i].Unlock()
		}
		for _, i := range slices.Backward(nss) {
			s.nsLocks[i].RUnlock()
		}
	}
}
