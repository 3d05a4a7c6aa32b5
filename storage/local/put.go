package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
)

// Put implements storage.Store.
func (s *Store) Put(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	if err := key.Validate(); err != nil {
		return storage.PutResult{}, fmt.Errorf("put: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	defer s.ops.leave()
	res, err := s.put(ctx, key, body, opts)
	if err == nil {
		s.touchWritten(key)
	}
	return res, err
}

func (s *Store) put(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	// An existing immutable object is the answer, and the body is not read, unless this is a
	// replicated write that may replace it (storage.Replaces: the cluster keeps its first
	// writer). A client's own write never does: it is stamped after the stored version. An
	// evicted stub counts as absent: this write brings a body back. The existence index's
	// definite "no manifest" spares the Pebble get (a third of a small write's CPU); the
	// commit's check under the key lock decides anyway.
	ek := meta.ManifestKey(key)
	indexAbsent := !key.Kind.LastWriterWins() && s.exists.absent(ek)
	if !key.Kind.LastWriterWins() && !indexAbsent {
		if res, done, _, err := s.storedAnswer(key, ek, opts); done || err != nil {
			return res, err
		}
	}
	res, err := s.putBody(ctx, key, body, opts)
	if err != nil && indexAbsent {
		// The index learns a commit just after Pebble holds it, so an object stored a moment
		// ago is still the answer a failed body gets, as when the lookup came first.
		if stored, done, _, lerr := s.storedAnswer(key, ek, opts); done && lerr == nil {
			return stored, nil
		}
	}
	return res, err
}

// storedAnswer is the first-writer check of an immutable key before its body is read: done
// (with res) when a stored object is the answer, notFound when no manifest exists (an evicted
// stub or a damaged one dropped now is neither).
func (s *Store) storedAnswer(key storage.Key, ek []byte, opts storage.PutOptions) (res storage.PutResult, done, notFound bool, err error) {
	m, err := s.lookupManifest(key, ek)
	switch {
	case err == nil && m.Expired && s.refusesReplicated(key.Kind, &m, opts.Version, maxSHA):
		// Expired here: a peer's copy does not bring it back (see refusesReplicated).
		return storage.PutResult{Info: m.Info(key)}, true, false, nil
	case err == nil && (m.Evicted || replicatedMayReplace(key.Kind, opts, m)):
	case err == nil:
		return storage.PutResult{Info: m.Info(key)}, true, false, nil
	case errors.Is(err, storage.ErrCorrupt):
		s.dropCorrupt(key, nil, err)
	case errors.Is(err, storage.ErrNotFound):
		return res, false, true, nil
	default:
		return res, false, false, classify("put "+key.String(), err)
	}
	return res, false, false, nil
}

// putBody reads and commits the body of a write the first-writer check let through.
func (s *Store) putBody(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	// A replicated write older than the namespace's tombstone is refused before its body is
	// read (re-checked under the lock at commit).
	if opts.Version != 0 {
		if tomb, ok, err := s.db.GetTombstone(key.Tenant, key.Namespace); err != nil {
			return storage.PutResult{}, classify("put "+key.String(), err)
		} else if ok && opts.Version <= tomb {
			return storage.PutResult{}, fmt.Errorf("put %s at version %v: tombstone %v: %w", key, opts.Version, tomb, storage.ErrStale)
		}
	}
	if opts.Limit > 0 && opts.Size > opts.Limit {
		return storage.PutResult{}, fmt.Errorf("put %s: declared size %d exceeds the limit %d: %w", key, opts.Size, opts.Limit, storage.ErrTooLarge)
	}
	if key.Kind == storage.KindKeyValue {
		return s.putInline(ctx, key, body, opts)
	}
	return s.putSegment(ctx, key, body, opts)
}

// putInline keeps a keyvalue document in its manifest: it is small, rewritten often (last
// writer wins) and read whole, so a segment record would only add an indirection.
func (s *Store) putInline(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	capped := opts
	if capped.Limit <= 0 || capped.Limit > s.opts.MaxInlineBytes {
		capped.Limit = s.opts.MaxInlineBytes
	}
	// The document goes to Pebble, whose WAL must never meet a full disk.
	if err := s.ensureDiskRoom(ctx, 0); err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	var buf bytes.Buffer
	n, err := copyBody(ctx, &buf, body, capped)
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	if err := s.ensureDiskRoom(ctx, 2*n); err != nil { // the WAL record, then its flush
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	sum := sha256.Sum256(buf.Bytes())
	if opts.ExpectedSHA256 != nil && sum != *opts.ExpectedSHA256 {
		return storage.PutResult{}, fmt.Errorf("put %s: %w: body SHA-256 %x, expected %x", key, storage.ErrDigestMismatch, sum, *opts.ExpectedSHA256)
	}
	m := meta.Manifest{Inline: true, Body: buf.Bytes(), Size: n, ContentType: opts.ContentType, SHA256: sum, Attributes: opts.Attributes}
	ctx, span := s.startPutCommit(ctx, key, n, true, opts.Version != 0)
	res, err := s.commitManifest(ctx, key, m, opts.Version)
	endCommit(span, res.Created, err)
	return res, err
}

// putSegment streams the body into a segment record in one pass, makes it durable, then
// commits the manifest.
func (s *Store) putSegment(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	name := meta.ManifestKey(key)
	// Refuse early when even the declared size cannot fit (or the disk is at its reserve),
	// before reading anything.
	if err := s.ensureRoom(ctx, segment.RecordSize(max(opts.Size, 0), len(name))); err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	st, err := s.segs.Stage(ctx, name)
	if err != nil {
		return storage.PutResult{}, classify("put "+key.String()+": stage", err)
	}
	defer st.Abort() // a no-op after Commit; otherwise removes staged bytes
	n, err := copyBody(ctx, s.newRoomWriter(ctx, st), body, opts)
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	sum := st.SHA256()
	if opts.ExpectedSHA256 != nil && sum != *opts.ExpectedSHA256 {
		return storage.PutResult{}, fmt.Errorf("put %s: %w: body SHA-256 %x, expected %x", key, storage.ErrDigestMismatch, sum, *opts.ExpectedSHA256)
	}
	// Another writer may have won while the body streamed (or, for a replicated write, the
	// body turned out to be one that does not replace the stored one): answer without
	// committing bytes that nothing would reference. A client's body held in memory skips
	// the look-up (a Pebble get, a fifth of a small Put's CPU): commitManifest re-checks
	// under the key lock anyway, and losing that rare race costs one small unreferenced
	// record, not a spilled segment.
	if !key.Kind.LastWriterWins() && (opts.Version != 0 || n > s.spillThreshold()) {
		if m, err := s.lookupManifest(key, name); err == nil && !m.Evicted &&
			(opts.Version == 0 || !storage.Replaces(key.Kind, storage.Copy{Version: opts.Version, SHA256: sum}, copyOf(m))) {
			return storage.PutResult{Info: m.Info(key)}, nil
		}
	}
	// A declared size was checked for room before the body was read; only a body of unknown
	// size is checked now that its size is known.
	if opts.Size != n {
		if err := s.ensureRoom(ctx, segment.RecordSize(n, len(name))); err != nil {
			return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
		}
	}
	ctx, span := s.startPutCommit(ctx, key, n, false, opts.Version != 0)
	ticket := s.commits.begin()
	defer s.commits.end(ticket)
	loc, err := st.Commit(ctx)
	if err != nil {
		err = classify("put "+key.String()+": commit segment record", err)
		endCommit(span, false, err)
		return storage.PutResult{}, err
	}
	m := meta.Manifest{
		Location:    toMetaLocation(loc),
		Size:        n,
		ContentType: opts.ContentType,
		SHA256:      sum,
		Attributes:  opts.Attributes,
	}
	res, err := s.commitManifest(ctx, key, m, opts.Version)
	endCommit(span, res.Created, err)
	if err == nil {
		s.kickEvictor()
	}
	return res, err
}

// maxSHA is the most favourable SHA-256 a last-writer-wins write can bring (ties settle on
// the higher digest), for checks made before the body is read.
var maxSHA = [32]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// replicatedMayReplace reports whether a write could replace the stored immutable object m:
// only a replicated write (the origin's version) can, and only when storage.Replaces may say
// so, judged by the expected digest when the sender declared it (peers always do) and
// otherwise by the version alone.
func replicatedMayReplace(kind storage.Kind, opts storage.PutOptions, m meta.Manifest) bool {
	if opts.Version == 0 {
		return false
	}
	if opts.ExpectedSHA256 != nil {
		return storage.Replaces(kind, storage.Copy{Version: opts.Version, SHA256: *opts.ExpectedSHA256}, copyOf(m))
	}
	return storage.MayReplace(kind, opts.Version, copyOf(m))
}

// copyOf is m as the conflict rule compares it.
func copyOf(m meta.Manifest) storage.Copy {
	return storage.Copy{Version: m.Version, SHA256: m.SHA256, Evicted: m.Evicted}
}

// previousManifest reads the manifest a commit of key (encoded as ek) is about to replace,
// under the key's lock (knownAbsent: the caller proved none exists since it last looked, so
// nothing is read). Under the lock the existence index's "no manifest" and the manifest cache
// are exact (every change reaches both before its lock is released), so Pebble is read only
// when neither knows. A damaged one is logged, counted and reported as corrupt with no
// manifest: the commit overwrites it (last writer wins) or replaces it (first writer wins on a
// damaged entry is no win), so the damaged value is gone after the batch, and the digests are
// rebuilt since its contribution cannot be computed.
func (s *Store) previousManifest(key storage.Key, ek []byte, knownAbsent bool) (prev *meta.Manifest, corrupt bool, err error) {
	if knownAbsent || s.exists.absent(ek) {
		return nil, false, nil
	}
	if m, ok := s.mcache.get(ek); ok {
		return &m, false, nil
	}
	switch cur, err := s.db.GetManifest(key); {
	case err == nil:
		return &cur, false, nil
	case errors.Is(err, storage.ErrCorrupt):
		s.log.Error("replacing corrupt manifest", "key", key.String(), "error", err)
		s.metrics.corrupt.Inc()
		return nil, true, nil
	case errors.Is(err, storage.ErrNotFound):
		return nil, false, nil
	default:
		return nil, false, classify("put "+key.String(), err)
	}
}

// commitManifest is the final check-and-commit, under the namespace (shared) and key locks:
// tombstone, the conflict rule (storage.Replaces), then one synced batch with the manifest,
// its segment-index entry and OnCommit's additions, and the digest update.
//
// For an immutable key a replicated write that wins by the rule (the cluster's first writer:
// a lower version, or an equal one and a lower SHA-256) replaces the stored body in that same
// batch, like a newer last-writer-wins body: the manifest and segment index move to the new
// record, the old one is garbage that eviction reclaims with its segment, the digest swaps
// the two entries, and the manifest cache learns the new manifest after the commit. A local
// write is stamped after the stored version and so never replaces an immutable body.
//
// An evicted stub of an immutable kind is no body: any write fills it. A local write that
// brings back the stub's very body keeps the stub's version, so the node does not present an
// old artifact as a newer write that would lose to later conflicting copies. For
// last-writer-wins kinds a stub keeps its version: a write older than the stub is stale, one
// at the stub's version (a read-through or repair bringing that very version back) or newer
// fills it.
//
// ctx carries the commit's span, which Change.Trace hands to OnCommit.
func (s *Store) commitManifest(ctx context.Context, key storage.Key, m meta.Manifest, requested storage.Version) (storage.PutResult, error) {
	unlock := s.lockKey(key)
	defer unlock()
	tomb, hasTomb, err := s.db.GetTombstone(key.Tenant, key.Namespace)
	if err != nil {
		return storage.PutResult{}, classify("put "+key.String(), err)
	}
	ek := meta.ManifestKey(key)
	prev, unknownPrev, err := s.previousManifest(key, ek, false)
	if err != nil {
		return storage.PutResult{}, err
	}
	version := requested
	if version == 0 {
		// Order after everything this node has seen for the key and namespace, so a local
		// write always wins over state stamped by a clock that runs ahead.
		if hasTomb {
			s.clock.Observe(tomb)
		}
		if prev != nil {
			s.clock.Observe(prev.Version)
		}
		version = s.clock.Now()
		if prev != nil && prev.Evicted && !key.Kind.LastWriterWins() && prev.SHA256 == m.SHA256 {
			version = prev.Version
		}
	} else {
		s.clock.Observe(version)
	}
	if hasTomb && version <= tomb {
		return storage.PutResult{}, fmt.Errorf("put %s at version %v: tombstone %v: %w", key, version, tomb, storage.ErrStale)
	}
	if prev != nil && (s.refusesReplicated(key.Kind, prev, requested, m.SHA256) ||
		!storage.Replaces(key.Kind, storage.Copy{Version: version, SHA256: m.SHA256}, copyOf(*prev))) {
		return storage.PutResult{Info: prev.Info(key)}, nil
	}
	m.Version = version
	committed := false
	defer func() {
		// After the commit the cache learns the new manifest; after a failure whose effect
		// is unknown it forgets the key, so the next read asks Pebble.
		if committed {
			s.mcache.update(ek, m)
		} else {
			s.mcache.invalidate(ek)
		}
	}()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.PutManifest(key, m, prev); err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	info := m.Info(key)
	if s.opts.Observer != nil {
		c := storage.Change{Op: storage.ChangePut, Info: info, Replaced: prev != nil && !prev.Evicted, Version: version, Replicated: requested != 0,
			Trace: trace.SpanContextFromContext(ctx)}
		if err := s.opts.Observer.OnCommit(b, c); err != nil {
			return storage.PutResult{}, fmt.Errorf("put %s: replication hook: %w", key, err)
		}
	}
	add := entryDigest{bucket: meta.DigestBucket(ek, storage.DigestBucketBits), hash: meta.EntryHash(ek, key.Kind, m.SHA256, version)}
	var remove *entryDigest
	if prev != nil {
		remove = &entryDigest{bucket: add.bucket, hash: meta.EntryHash(ek, key.Kind, prev.SHA256, prev.Version)}
	}
	if err := s.commitDigested(b, remove, &add); err != nil {
		return storage.PutResult{}, classify("put "+key.String(), err)
	}
	committed = true
	if unknownPrev {
		s.kickDigestRebuild()
	}
	s.afterCommit()
	return storage.PutResult{Info: info, Created: true}, nil
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// copyBody streams body into dst enforcing opts.Limit (ErrTooLarge after reading at most
// Limit+1 bytes) and a declared opts.Size (a short or long body is ErrDigestMismatch; at
// most Size+1 bytes are read).
func copyBody(ctx context.Context, dst io.Writer, body io.Reader, opts storage.PutOptions) (int64, error) {
	readCap := int64(-1)
	if opts.Limit > 0 {
		readCap = opts.Limit + 1
	}
	if opts.Size >= 0 && (readCap < 0 || opts.Size+1 < readCap) {
		readCap = opts.Size + 1
	}
	var n int64
	var err error
	if chunks, ok := body.(storage.ChunkReader); ok {
		n, err = copyChunks(ctx, dst, chunks, readCap)
	} else {
		src := io.Reader(ctxReader{ctx: ctx, r: body})
		if readCap >= 0 {
			src = io.LimitReader(src, readCap)
		}
		var ended bool
		if mr, ok := dst.(inMemoryReader); ok {
			n, ended, err = mr.ReadInMemory(src, opts.Size)
		}
		if !ended && err == nil {
			bufp := copyBuffers.Get().(*[]byte)
			var m int64
			m, err = io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *bufp)
			n += m
			copyBuffers.Put(bufp)
		}
	}
	if err != nil {
		var re readError
		if errors.As(err, &re) {
			return n, fmt.Errorf("read body: %w", re.err)
		}
		return n, classify("store body", err)
	}
	if opts.Limit > 0 && n > opts.Limit {
		return n, fmt.Errorf("%w: body exceeds %d bytes", storage.ErrTooLarge, opts.Limit)
	}
	if opts.Size >= 0 && n != opts.Size {
		if n > opts.Size {
			return n, fmt.Errorf("%w: body is longer than the declared %d bytes", storage.ErrDigestMismatch, opts.Size)
		}
		return n, fmt.Errorf("%w: body has %d bytes, declared %d", storage.ErrDigestMismatch, n, opts.Size)
	}
	return n, nil
}

// copyChunks is copyBody's loop for a body that holds its bytes already: each chunk goes to
// dst as it is (no copy through a buffer of ours), cut at readCap (< 0: none) like the
// LimitReader of the other loop, so dst never sees a byte past it.
func copyChunks(ctx context.Context, dst io.Writer, body storage.ChunkReader, readCap int64) (int64, error) {
	var n int64
	for readCap < 0 || n < readCap {
		if err := ctx.Err(); err != nil {
			return n, readError{context.Cause(ctx)}
		}
		chunk, err := body.NextChunk()
		if readCap >= 0 && int64(len(chunk)) > readCap-n {
			chunk = chunk[:readCap-n]
		}
		if len(chunk) > 0 {
			w, werr := dst.Write(chunk)
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, readError{err}
		}
	}
	return n, nil
}

// inMemoryReader is a destination that can read the start of a body into its own memory
// (segment.Staged.ReadInMemory): the socket's bytes land where the record is built, with no
// copy through copyBody's buffer (for a 1 MiB HTTP PUT that copy was a tenth of the server's
// CPU). It returns whether the body ended; if not, copyBody goes on with Write.
type inMemoryReader interface {
	ReadInMemory(r io.Reader, sizeHint int64) (n int64, ended bool, err error)
}

// ReadInMemory passes the in-memory start of the body to a staged record. Held in memory,
// those bytes are below the first room check (the spill threshold).
func (r *roomWriter) ReadInMemory(src io.Reader, sizeHint int64) (int64, bool, error) {
	mr, ok := r.w.(inMemoryReader)
	if !ok || !r.first {
		return 0, false, nil
	}
	n, ended, err := mr.ReadInMemory(src, sizeHint)
	r.written += n
	return n, ended, err
}

// roomWriter passes a body on to a staged record or a part file and makes sure the disk
// keeps its reserve as the body grows (evicting if it must): first when the body outgrows
// memory and starts going to disk, then every roomCheckBytes. A long chunked upload onto a
// full disk is thus refused as soon as the disk fills, not after it was staged whole, and
// eviction runs before the segment layer's own check (which cannot evict) would refuse it.
type roomWriter struct {
	s       *Store
	ctx     context.Context
	w       io.Writer
	written int64
	next    int64 // body size at which the next check is due
	first   bool  // the next check is the first one
}

const roomCheckBytes = 4 << 20

// newRoomWriter wraps a staged record: its first check is due when the body outgrows the
// spill threshold (until then it is held in memory). A part file, written to disk from the
// first byte, uses a roomWriter with next = 0 instead.
func (s *Store) newRoomWriter(ctx context.Context, w io.Writer) *roomWriter {
	return &roomWriter{s: s, ctx: ctx, w: w, next: s.spillThreshold(), first: true}
}

func (r *roomWriter) Write(p []byte) (int, error) {
	if r.written+int64(len(p)) > r.next {
		need := roomCheckBytes + int64(len(p))
		if r.first {
			need += r.written // what was held in memory goes to disk now
			r.first = false
		}
		if err := r.s.ensureDiskRoom(r.ctx, need); err != nil {
			return 0, err
		}
		r.next = r.written + roomCheckBytes
	}
	n, err := r.w.Write(p)
	r.written += int64(n)
	return n, err
}

// spillThreshold is the staging layer's effective spill threshold.
func (s *Store) spillThreshold() int64 {
	if s.opts.SpillThreshold > 0 {
		return s.opts.SpillThreshold
	}
	return segment.DefaultSpillThreshold
}

// readError marks errors from the client's body, so they are not mistaken for store failures.
type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }
func (e readError) Unwrap() error { return e.err }

// ctxReader stops a body copy when the request is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, readError{context.Cause(c.ctx)}
	}
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = readError{err}
	}
	return n, err
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo so io.CopyBuffer uses our bounded buffer
// and the limit reader, never an implementation's own unbounded fast path.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }

// classify wraps an internal failure with the action and the sentinel the front ends map:
// a full disk is ErrInsufficientStorage, running out of descriptors ErrBusy, anything else
// not already classified is ErrUnavailable.
func classify(action string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		if errors.Is(err, storage.ErrInsufficientStorage) {
			return fmt.Errorf("%s: %w", action, err)
		}
		return fmt.Errorf("%s: %w: %w", action, storage.ErrInsufficientStorage, err)
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		if errors.Is(err, storage.ErrBusy) {
			return fmt.Errorf("%s: %w", action, err)
		}
		return fmt.Errorf("%s: %w: %w", action, storage.ErrBusy, err)
	case errors.Is(err, storage.ErrInsufficientStorage), errors.Is(err, storage.ErrUnavailable), errors.Is(err, storage.ErrBusy),
		errors.Is(err, storage.ErrCorrupt), errors.Is(err, storage.ErrNotFound),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", action, err)
	default:
		return fmt.Errorf("%s: %w: %w", action, storage.ErrUnavailable, err)
	}
}

func toMetaLocation(l segment.Location) meta.Location {
	return meta.Location{Segment: uint64(l.Segment), Offset: l.Offset, BodySize: l.BodySize, RecordSize: l.RecordSize}
}

func toSegmentLocation(l meta.Location) segment.Location {
	return segment.Location{Segment: segment.ID(l.Segment), Offset: l.Offset, BodySize: l.BodySize, RecordSize: l.RecordSize}
}
