package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// Stat implements storage.Store. It reads metadata only; record checksums are verified when
// the body is read.
func (s *Store) Stat(_ context.Context, key storage.Key) (storage.Info, error) {
	if err := key.Validate(); err != nil {
		return storage.Info{}, fmt.Errorf("stat: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return storage.Info{}, fmt.Errorf("stat %s: %w", key, err)
	}
	defer s.ops.leave()
	m, err := s.manifest(key, meta.ManifestKey(key))
	if err != nil {
		return storage.Info{}, fmt.Errorf("stat: %w", err)
	}
	return m.Info(key), nil
}

// lookupManifest returns key's manifest (ek is its encoding) as stored, evicted stubs
// included: from the manifest cache, else from Pebble, admitting what it found.
func (s *Store) lookupManifest(key storage.Key, ek []byte) (meta.Manifest, error) {
	if m, ok := s.mcache.get(ek); ok {
		return m, nil
	}
	tok := s.mcache.token(key, ek)
	m, err := s.db.GetManifest(key)
	if err == nil {
		s.mcache.admit(key, ek, m, tok)
	}
	return m, err
}

// manifest looks key up (ek is its encoding) for a reader; a damaged manifest is dropped and
// reported as not found, and so is an evicted stub.
func (s *Store) manifest(key storage.Key, ek []byte) (meta.Manifest, error) {
	m, err := s.lookupManifest(key, ek)
	switch {
	case err == nil && m.Expired && s.uses != nil:
		// The retention rule removed it: a miss, and one replication must not fill.
		return meta.Manifest{}, fmt.Errorf("read manifest of %s: %w", key, storage.ErrExpired)
	case err == nil && m.Evicted:
		// A stub only remembers the object for anti-entropy; clients see nothing.
		return meta.Manifest{}, fmt.Errorf("read manifest of %s: %w (evicted)", key, storage.ErrNotFound)
	case err == nil:
		return m, nil
	case errors.Is(err, storage.ErrCorrupt):
		s.dropCorrupt(key, nil, err)
		return meta.Manifest{}, fmt.Errorf("%w (%w)", storage.ErrNotFound, err)
	case errors.Is(err, storage.ErrNotFound):
		return meta.Manifest{}, err
	default:
		return meta.Manifest{}, classify("read manifest of "+key.String(), err)
	}
}

// FindMissing implements storage.Store. Once the existence index is built (see
// existenceIndex) it answers from memory; until then, and for a key whose last change had an
// unknown outcome, it reads the manifest (cache, then Pebble).
func (s *Store) FindMissing(_ context.Context, keys []storage.Key) ([]storage.Key, error) {
	if err := validateKeys(keys); err != nil {
		return nil, fmt.Errorf("find missing: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return nil, fmt.Errorf("find missing: %w", err)
	}
	defer s.ops.leave()
	// One allocation for the answer: a batch is typically half missing.
	missing, unknown, ok := s.exists.findMissing(keys, make([]storage.Key, 0, len(keys)/2+1))
	if !ok {
		return s.findMissingStored(keys)
	}
	if len(unknown) == 0 {
		return missing, nil
	}
	// Rare (a commit failed with an unknown outcome): ask the manifests about those keys and
	// merge, keeping the order given. An unknown key is never in missing.
	absent := make(map[int]bool, len(unknown))
	for _, i := range unknown {
		m, err := s.findMissingStored(keys[i : i+1])
		if err != nil {
			return nil, err
		}
		absent[i] = len(m) > 0
	}
	out := make([]storage.Key, 0, len(missing)+len(absent))
	j := 0
	for i, k := range keys {
		switch {
		case j < len(missing) && k == missing[j]:
			out = append(out, k)
			j++
		case absent[i]:
			out = append(out, k)
		}
	}
	return out, nil
}

// validateKeys is Key.Validate of every key; the keys of one batch share their tenant and
// namespace, which are checked once.
func validateKeys(keys []storage.Key) error {
	var tenant, namespace string
	for i := range keys {
		k := &keys[i]
		if i == 0 || k.Tenant != tenant || k.Namespace != namespace {
			if err := k.Validate(); err != nil {
				return err
			}
			tenant, namespace = k.Tenant, k.Namespace
			continue
		}
		if !k.Kind.Valid() {
			return fmt.Errorf("%w: unknown kind %q", storage.ErrInvalidKey, k.Kind)
		}
		if err := storage.ValidateIdentifier("key", k.Name); err != nil {
			return err
		}
	}
	return nil
}

// findMissingStored is FindMissing answered from the manifests (cache, then Pebble), without
// the existence index: before the index is built, and in tests as its reference.
func (s *Store) findMissingStored(keys []storage.Key) ([]storage.Key, error) {
	var missing []storage.Key
	for _, k := range keys {
		_, err := s.manifest(k, meta.ManifestKey(k))
		switch {
		case err == nil:
		case errors.Is(err, storage.ErrNotFound):
			missing = append(missing, k)
		default:
			return nil, fmt.Errorf("find missing: %w", err)
		}
	}
	return missing, nil
}

// Open implements storage.Store.
func (s *Store) Open(ctx context.Context, key storage.Key, offset, length int64) (storage.Reader, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	defer s.ops.leave()
	name := meta.ManifestKey(key)
	// Eviction may move or drop the record between the manifest lookup and opening the
	// file; a failure is only corruption if the manifest still points at the same place.
	for attempt := 0; ; attempt++ {
		m, err := s.manifest(key, name)
		if err != nil {
			return nil, fmt.Errorf("open: %w", err)
		}
		info := m.Info(key)
		offset, length := clampRange(offset, length, m.Size)
		if m.Inline {
			return &inlineReader{Reader: bytes.NewReader(m.Body[offset : offset+length]), info: info}, nil
		}
		s.touchRead(key)
		if length == 0 {
			return &inlineReader{Reader: bytes.NewReader(nil), info: info}, nil
		}
		rc, err := s.segs.OpenRecord(ctx, toSegmentLocation(m.Location), name, offset, length)
		if err == nil {
			return &recordReader{rc: rc, info: info, s: s, m: m}, nil
		}
		if !errors.Is(err, storage.ErrCorrupt) && !errors.Is(err, fs.ErrNotExist) {
			return nil, classify("open "+key.String(), err)
		}
		if cur, cerr := s.db.GetManifest(key); attempt < 3 && (cerr != nil || cur.Location != m.Location) {
			continue // moved or deleted meanwhile: look again
		}
		s.dropCorrupt(key, &m, err)
		return nil, fmt.Errorf("open %s: %w (%w)", key, storage.ErrNotFound, err)
	}
}

// clampRange fits [offset, offset+length) into a body of size bytes (length < 0: to the end).
func clampRange(offset, length, size int64) (int64, int64) {
	if offset < 0 {
		offset = 0
	}
	if offset > size {
		offset = size
	}
	if length < 0 || length > size-offset {
		length = size - offset
	}
	return offset, length
}

type inlineReader struct {
	*bytes.Reader
	info storage.Info
}

func (r *inlineReader) Close() error       { return nil }
func (r *inlineReader) Info() storage.Info { return r.info }

// recordReader serves a segment record; the segment reader verifies each block before handing
// out its bytes, and a failure drops the record so later reads see ErrNotFound.
type recordReader struct {
	rc   io.ReadCloser
	info storage.Info
	// s and m: a failure drops m (the manifest that was read) from s.
	s    *Store
	m    meta.Manifest
	once sync.Once
}

func (r *recordReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil && errors.Is(err, storage.ErrCorrupt) {
		r.corrupt(err)
	}
	return n, err
}

func (r *recordReader) corrupt(cause error) {
	r.once.Do(func() { r.s.dropCorrupt(r.info.Key, &r.m, cause) })
}

// WriteTo implements io.WriterTo so that io.Copy reaches the segment reader's WriteTo (which
// sends a verified record with sendfile) through this wrapper.
func (r *recordReader) WriteTo(w io.Writer) (int64, error) {
	n, err := io.Copy(w, r.rc)
	if err != nil && errors.Is(err, storage.ErrCorrupt) {
		r.corrupt(err)
	}
	return n, err
}

func (r *recordReader) Close() error       { return r.rc.Close() }
func (r *recordReader) Info() storage.Info { return r.info }

// dropCorrupt removes key's manifest after its record (or the manifest itself, expected ==
// nil) failed verification — but only if it still is the manifest that failed: a concurrent
// write or eviction may already have replaced it with good data. The object leaves the
// anti-entropy digests (it is deleted, not stubbed), so a peer's copy shows up as missing
// here and is pulled back.
func (s *Store) dropCorrupt(key storage.Key, expected *meta.Manifest, cause error) {
	if err := s.ops.enter(); err != nil {
		return // closing: the next open finds the damage again
	}
	defer s.ops.leave()
	dropped := func() bool {
		unlock := s.lockKey(key)
		defer unlock()
		cur, err := s.db.GetManifest(key)
		var prev *meta.Manifest
		switch {
		case expected == nil && errors.Is(err, storage.ErrCorrupt):
		case expected != nil && err == nil && cur.InSegment() && cur.Location == expected.Location && cur.Version == expected.Version:
			prev = &cur
		default:
			return false
		}
		b := s.db.NewBatch()
		defer b.Close()
		err = b.DeleteManifest(key, prev)
		// Whatever the commit's outcome, the cached manifest is the one that failed.
		defer s.mcache.invalidate(meta.ManifestKey(key))
		if err == nil {
			if prev != nil {
				remove := digestOf(meta.ManifestKey(key), key.Kind, prev)
				err = s.commitDigested(b, &remove, nil)
			} else {
				// The damaged value's contribution cannot be computed: rebuild instead.
				err = b.Commit()
				if err == nil {
					s.kickDigestRebuild()
				}
			}
		}
		if err != nil {
			s.log.Error("could not drop corrupt record", "key", key.String(), "error", err, "cause", cause)
			return false
		}
		return true
	}()
	if !dropped {
		return
	}
	s.metrics.corrupt.Inc()
	attrs := []any{"key", key.String(), "error", cause}
	if expected != nil {
		attrs = append(attrs, "segment", expected.Location.Segment, "offset", expected.Location.Offset,
			"record_size", expected.Location.RecordSize)
	}
	s.log.Error("dropped corrupt record", attrs...)
	s.reportCorrupt(key)
}
