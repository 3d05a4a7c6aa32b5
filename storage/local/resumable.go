package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/fdpool"
	"github.com/kuracache/kura/storage/meta"
)

// Resumable writes (storage.ResumableWrites) reuse the multipart upload records in Pebble: an
// upload is a meta.Upload whose one part is the staged file and its durable size, and whose
// CreatedMillis is the time of its last checkpoint, so the janitor that expires multipart
// uploads expires abandoned ones too. Their ids are "bs-" and 48 hex digits derived from the
// key, the client's upload id and the size: never a UUID, so the multipart API (which accepts
// only UUIDs) can neither see nor complete one, and the client's token never becomes a path.
// The staged files live in TmpDir/bytestream/, one per upload, named by that id.

// resumablePrefix starts every resumable upload id.
const resumablePrefix = "bs-"

// resumableFile is the staged file's part in its meta.Upload record.
const resumablePart = 1

// resumables tracks which uploads are held by a writer.
type resumables struct {
	mu   sync.Mutex
	held map[string]chan struct{} // closed when the holder lets go
}

// resumableID derives the upload's record id from everything that names it.
func resumableID(key storage.Key, uploadID string, size int64) string {
	h := sha256.New()
	h.Write(meta.ManifestKey(key))
	h.Write([]byte{0})
	h.Write([]byte(uploadID))
	h.Write([]byte{0})
	h.Write([]byte(strconv.FormatInt(size, 10)))
	return resumablePrefix + hex.EncodeToString(h.Sum(nil)[:24])
}

// resumablePath is the staged file of a resumable upload id; ok is false for any other id.
func (s *Store) resumablePath(id string) (string, bool) {
	rest, ok := strings.CutPrefix(id, resumablePrefix)
	if !ok || len(rest) != 48 {
		return "", false
	}
	if _, err := hex.DecodeString(rest); err != nil {
		return "", false
	}
	return filepath.Join(s.resumableDir(), id), true
}

func (s *Store) resumableDir() string { return filepath.Join(s.opts.TmpDir, "bytestream") }

// hold takes the upload id for one writer, waiting for the current one.
func (s *Store) hold(ctx context.Context, id string) (release func(), err error) {
	r := &s.resumable
	for {
		r.mu.Lock()
		if r.held == nil {
			r.held = map[string]chan struct{}{}
		}
		ch, busy := r.held[id]
		if !busy {
			ch = make(chan struct{})
			r.held[id] = ch
			r.mu.Unlock()
			return func() {
				r.mu.Lock()
				delete(r.held, id)
				r.mu.Unlock()
				close(ch)
			}, nil
		}
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the upload's other writer: %w", context.Cause(ctx))
		}
	}
}

// isHeld reports whether a writer holds the upload (the janitor leaves it alone).
func (s *Store) isHeld(id string) bool {
	r := &s.resumable
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.held[id]
	return ok
}

// liveResumable reads a resumable upload's record: ErrUploadNotFound when there is none or it
// is past storage.UploadExpiry.
func (s *Store) liveResumable(id string) (meta.Upload, error) {
	u, err := s.liveUpload(id)
	if err != nil {
		return meta.Upload{}, err
	}
	if p, ok := u.Parts[resumablePart]; !ok || p.File != id || len(u.Parts) != 1 {
		return meta.Upload{}, fmt.Errorf("upload %s: %w: not a resumable upload record", id, storage.ErrCorrupt)
	}
	return u, nil
}

// WriteStatus implements storage.ResumableWrites.
func (s *Store) WriteStatus(_ context.Context, key storage.Key, uploadID string, size int64) (int64, error) {
	if err := key.Validate(); err != nil {
		return 0, fmt.Errorf("write status: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return 0, fmt.Errorf("write status: %w", err)
	}
	defer s.ops.leave()
	u, err := s.liveResumable(resumableID(key, uploadID, size))
	if err != nil {
		return 0, fmt.Errorf("write status of %s: %w", key, err)
	}
	return u.Parts[resumablePart].Size, nil
}

// ResumeWrite implements storage.ResumableWrites. The staged file is cut back to the durable
// size the record holds (a crash may have left bytes after it); a record whose file is
// shorter than that starts over from 0.
func (s *Store) ResumeWrite(ctx context.Context, key storage.Key, uploadID string, size int64) (_ storage.ResumableWrite, err error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("resume write: %w", err)
	}
	if size < 0 {
		return nil, fmt.Errorf("resume write %s: %w: negative size %d", key, storage.ErrInvalidKey, size)
	}
	if err := s.ops.enter(); err != nil {
		return nil, fmt.Errorf("resume write: %w", err)
	}
	defer func() {
		if err != nil {
			s.ops.leave()
		}
	}()
	id := resumableID(key, uploadID, size)
	path, _ := s.resumablePath(id)
	release, err := s.hold(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("resume write %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	// The object will be stored from these bytes: refuse the upload up front when even its
	// declared size cannot be made to fit, before the client sends anything.
	if err := s.ensureRoom(ctx, size); err != nil {
		return nil, fmt.Errorf("resume write %s: %w", key, err)
	}
	durable := int64(0)
	recorded := false
	switch u, err := s.liveResumable(id); {
	case err == nil:
		durable, recorded = u.Parts[resumablePart].Size, true
	case errors.Is(err, storage.ErrUploadNotFound), errors.Is(err, storage.ErrCorrupt):
		// Unknown, expired (the janitor has not come by yet) or damaged: start empty.
	default:
		return nil, classify("resume write "+key.String(), err)
	}
	if err := s.stagingFault("mkdir", s.resumableDir()); err != nil {
		return nil, classify("resume write: create "+s.resumableDir(), err)
	}
	if err := os.MkdirAll(s.resumableDir(), 0o750); err != nil {
		return nil, classify("resume write: create "+s.resumableDir(), err)
	}
	if err := s.stagingFault("create", path); err != nil {
		return nil, classify("resume write: open staged file", err)
	}
	f, err := s.pool.OpenFile(ctx, path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, classify("resume write: open staged file", err)
	}
	w := &resumableWrite{s: s, ctx: ctx, key: key, id: id, path: path, f: f, release: release, recorded: recorded}
	if fi, err := f.Stat(); err != nil || fi.Size() < durable {
		// The file lost bytes the record counts (or cannot be read): nothing of it is trusted.
		s.log.Warn("resumable upload's staged file is shorter than recorded; starting over", "key", key.String(), "recorded", durable, "error", err)
		durable = 0
	}
	if err := w.cut(ctx, durable); err != nil {
		_ = f.Close()
		return nil, err
	}
	return w, nil
}

// resumableWrite implements storage.ResumableWrite.
type resumableWrite struct {
	s        *Store
	ctx      context.Context // the writer's: eviction for room stops with it
	rw       roomWriter
	key      storage.Key
	id, path string
	f        *fdpool.File
	release  func()
	offset   int64
	recorded bool // a record exists in Pebble (its size may be below offset)
	synced   bool // the directory entry of the file is durable
	closed   bool
}

var _ storage.ResumableWrite = (*resumableWrite)(nil)

// cut truncates the staged file to n bytes and positions writes there. When the record counts
// more than n it is rewritten first, so it never claims bytes the file no longer has.
func (w *resumableWrite) cut(ctx context.Context, n int64) error {
	if w.recorded {
		if err := w.record(ctx, n); err != nil {
			return err
		}
	}
	if err := w.s.stagingFault("truncate", w.path); err != nil {
		return classify("resumable upload: truncate staged file", err)
	}
	if err := w.f.Truncate(n); err != nil {
		return classify("resumable upload: truncate staged file", err)
	}
	if _, err := w.f.Seek(n, io.SeekStart); err != nil {
		return classify("resumable upload: seek staged file", err)
	}
	w.offset = n
	w.rw = roomWriter{s: w.s, ctx: w.ctx, w: w.s.stagingWriter(w.f.File), written: n, next: n}
	return nil
}

func (w *resumableWrite) Offset() int64 { return w.offset }

// Write appends to the staged file, keeping the disk's reserve (roomWriter's checks).
func (w *resumableWrite) Write(p []byte) (int, error) {
	if w.closed {
		return 0, fmt.Errorf("resumable upload %s: %w: closed", w.key, storage.ErrUnavailable)
	}
	n, err := w.rw.Write(p)
	w.offset += int64(n)
	if err != nil {
		return n, classify("resumable upload: write staged file", err)
	}
	return n, nil
}

func (w *resumableWrite) Restart(ctx context.Context) error { return w.cut(ctx, 0) }

// Checkpoint syncs the file (and, the first time, its directory entry) and then records the
// size, so the record never counts a byte that is not on the disk.
func (w *resumableWrite) Checkpoint(ctx context.Context) error {
	if err := w.s.stagingFault("sync", w.path); err != nil {
		return classify("resumable upload: sync staged file", err)
	}
	if err := w.f.Sync(); err != nil {
		return classify("resumable upload: sync staged file", err)
	}
	if !w.synced {
		if err := w.s.syncDir(ctx, w.s.resumableDir()); err != nil {
			return classify("resumable upload", err)
		}
		w.synced = true
	}
	return w.record(ctx, w.offset)
}

// record commits the upload's record with n durable bytes, stamped now.
func (w *resumableWrite) record(_ context.Context, n int64) error {
	u := meta.Upload{Key: w.key, CreatedMillis: w.s.now().UnixMilli(),
		Parts: map[int]meta.Part{resumablePart: {Size: n, File: w.id}}}
	b := w.s.db.NewBatch()
	defer b.Close()
	if err := b.PutUpload(w.id, u); err != nil {
		return fmt.Errorf("resumable upload: %w", err)
	}
	if err := b.Commit(); err != nil {
		return classify("resumable upload: record", err)
	}
	w.recorded = true
	return nil
}

// Complete streams the staged bytes through the store's ordinary write path, which verifies
// the declared size (and SHA-256 when given) before it commits.
func (w *resumableWrite) Complete(ctx context.Context, opts storage.PutOptions, wrap func(io.Reader) io.Reader) (storage.PutResult, error) {
	var body io.Reader = io.NewSectionReader(w.f.File, 0, w.offset)
	if wrap != nil {
		body = wrap(body)
	}
	res, err := w.s.put(ctx, w.key, body, opts)
	if err != nil {
		return storage.PutResult{}, err
	}
	if err := w.Discard(context.WithoutCancel(ctx)); err != nil {
		// The object is stored; the leftover record expires with the janitor.
		w.s.log.Warn("forget completed resumable upload", "key", w.key.String(), "error", err)
	}
	return res, nil
}

// Discard deletes the record, then the file.
func (w *resumableWrite) Discard(_ context.Context) error {
	if w.recorded {
		b := w.s.db.NewBatch()
		defer b.Close()
		err := b.DeleteUpload(w.id)
		if err == nil {
			err = b.Commit()
		}
		if err != nil {
			return classify("resumable upload: forget", err)
		}
		w.recorded = false
	}
	if err := w.f.Truncate(0); err != nil {
		return classify("resumable upload: truncate staged file", err)
	}
	w.offset = 0
	if err := os.Remove(w.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return classify("resumable upload: remove staged file", err)
	}
	return nil
}

// Close closes the file and lets the next writer in. A file no record references (an upload
// that never checkpointed, or was discarded) goes too.
func (w *resumableWrite) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.f.Close()
	if !w.recorded {
		if rerr := os.Remove(w.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	w.release()
	w.s.ops.leave()
	if err != nil {
		return classify("resumable upload: close staged file", err)
	}
	return nil
}

// removeResumableFile removes the staged file of an expired resumable upload whose record
// the janitor deleted.
func (s *Store) removeResumableFile(ctx context.Context, path string) error {
	return s.pool.Do(ctx, func() error {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
}

// removeOrphanResumable deletes staged files no record references: an upload that never
// reached its first checkpoint before a crash. It runs in Open, before any writer.
func (s *Store) removeOrphanResumable(_ context.Context) error {
	entries, err := os.ReadDir(s.resumableDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", s.resumableDir(), err)
	}
	for _, e := range entries {
		path := filepath.Join(s.resumableDir(), e.Name())
		if _, ok := s.resumablePath(e.Name()); ok && e.Type().IsRegular() {
			_, err := s.liveResumable(e.Name())
			switch {
			case err == nil:
				continue
			case !errors.Is(err, storage.ErrUploadNotFound) && !errors.Is(err, storage.ErrCorrupt):
				return err
			}
		}
		if err := os.RemoveAll(path); err != nil {
			return fmt.Errorf("remove orphaned resumable upload %s: %w", path, err)
		}
	}
	return nil
}
