package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/fdpool"
	"github.com/kuracache/kura/storage/meta"
)

// StartUpload implements storage.Multipart. The upload's state lives in Pebble, so it survives
// restarts; its parts are staged under TmpDir/multipart/<id>/.
func (s *Store) StartUpload(ctx context.Context, key storage.Key, contentType string) (string, error) {
	if err := key.Validate(); err != nil {
		return "", fmt.Errorf("start upload: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return "", fmt.Errorf("start upload: %w", err)
	}
	defer s.ops.leave()
	// An upload will write parts and then the object: refuse it up front on a full disk.
	if err := s.ensureDiskRoom(ctx, 0); err != nil {
		return "", fmt.Errorf("start upload: %w", err)
	}
	id := uuid.NewString()
	b := s.db.NewBatch()
	defer b.Close()
	u := meta.Upload{Key: key, ContentType: contentType, CreatedMillis: s.now().UnixMilli(), Parts: map[int]meta.Part{}}
	if err := b.PutUpload(id, u); err != nil {
		return "", fmt.Errorf("start upload: %w", err)
	}
	if err := b.Commit(); err != nil {
		return "", classify("start upload", err)
	}
	return id, nil
}

// uploadDir validates an upload id (it becomes a directory name, so only canonical UUIDs are
// accepted) and returns its part directory.
func (s *Store) uploadDir(id string) (string, error) {
	u, err := uuid.Parse(id)
	if err != nil || u.String() != id {
		return "", fmt.Errorf("upload %q: %w", id, storage.ErrUploadNotFound)
	}
	return filepath.Join(s.partDir, id), nil
}

// UploadKey implements storage.Multipart.
func (s *Store) UploadKey(_ context.Context, uploadID string) (storage.Key, error) {
	if _, err := s.uploadDir(uploadID); err != nil {
		return storage.Key{}, fmt.Errorf("look up upload: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return storage.Key{}, fmt.Errorf("look up upload: %w", err)
	}
	defer s.ops.leave()
	u, err := s.liveUpload(uploadID)
	if err != nil {
		return storage.Key{}, fmt.Errorf("look up upload: %w", err)
	}
	return u.Key, nil
}

// liveUpload reads an upload's state. An upload past storage.UploadExpiry is reported gone even
// while its record waits for the janitor, so whether a late part is accepted never depends on
// when the janitor last ran.
func (s *Store) liveUpload(id string) (meta.Upload, error) {
	u, err := s.db.GetUpload(id)
	if err != nil {
		return meta.Upload{}, err
	}
	if age := s.now().Sub(time.UnixMilli(u.CreatedMillis)); age > storage.UploadExpiry {
		return meta.Upload{}, fmt.Errorf("upload %s expired (last recorded %s ago): %w", id, age.Round(time.Second), storage.ErrUploadNotFound)
	}
	return u, nil
}

// PutPart implements storage.Multipart. The part streams to a new file (at most
// storage.MaxPartBytes+1 bytes are read), is fsynced, and only then recorded, replacing an
// earlier part with the same number; the file it replaces is removed after the commit.
func (s *Store) PutPart(ctx context.Context, uploadID string, partNumber int, body io.Reader) error {
	if partNumber < 1 || partNumber > storage.MaxPartNumber {
		return fmt.Errorf("put part %d: %w (1..%d)", partNumber, storage.ErrInvalidPart, storage.MaxPartNumber)
	}
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return fmt.Errorf("put part: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return fmt.Errorf("put part: %w", err)
	}
	defer s.ops.leave()
	if _, err := s.liveUpload(uploadID); err != nil {
		return fmt.Errorf("put part: %w", err)
	}
	if err := s.ensureDiskRoom(ctx, 0); err != nil {
		return fmt.Errorf("put part %d of %s: %w", partNumber, uploadID, err)
	}
	path, size, err := s.writePartFile(ctx, dir, uploadID, partNumber, body)
	if err != nil {
		return err
	}
	if err := s.recordPart(uploadID, dir, partNumber, path, size); err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// writePartFile streams body into a new part file in dir and makes it durable (file and
// directory synced) before any state references it. On error nothing is left behind.
func (s *Store) writePartFile(ctx context.Context, dir, uploadID string, partNumber int, body io.Reader) (path string, size int64, err error) {
	if err := s.stagingFault("mkdir", dir); err != nil {
		return "", 0, classify("put part: create "+dir, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", 0, classify("put part: create "+dir, err)
	}
	if err := s.stagingFault("create", dir); err != nil {
		return "", 0, classify("put part: create part file", err)
	}
	f, err := s.pool.CreateTemp(ctx, dir, fmt.Sprintf("%d-*.part", partNumber))
	if err != nil {
		return "", 0, classify("put part: create part file", err)
	}
	path = f.Name()
	keep := false
	defer func() {
		if !keep {
			_ = f.Close()
			_ = os.Remove(path)
		}
	}()
	rw := &roomWriter{s: s, ctx: ctx, w: s.stagingWriter(f.File), first: true}
	size, err = copyBody(ctx, rw, body, storage.PutOptions{Size: storage.UnknownSize, Limit: storage.MaxPartBytes})
	if err != nil {
		return "", 0, fmt.Errorf("put part %d of %s: %w", partNumber, uploadID, err)
	}
	if err := s.stagingFault("sync", path); err != nil {
		return "", 0, classify("put part: sync "+path, err)
	}
	if err := f.Sync(); err != nil {
		return "", 0, classify("put part: sync "+path, err)
	}
	if err := f.Close(); err != nil {
		return "", 0, classify("put part: close "+path, err)
	}
	if err := s.syncDir(ctx, dir); err != nil {
		return "", 0, classify("put part", err)
	}
	keep = true
	return path, size, nil
}

// recordPart adds the durable part file at path to the upload's state, under the upload's
// lock, and then removes the file of the part it replaces. The caller removes path on error.
func (s *Store) recordPart(uploadID, dir string, partNumber int, path string, size int64) error {
	lock := s.uploadLock(uploadID)
	lock.Lock()
	defer lock.Unlock()
	u, err := s.liveUpload(uploadID)
	if err != nil {
		// The upload expired or completed meanwhile: this part is not wanted, and its
		// directory goes too once empty (another part still being written keeps it).
		_ = os.Remove(path)
		_ = os.Remove(dir)
		return fmt.Errorf("put part: %w", err)
	}
	old, replacing := u.Parts[partNumber]
	if total := u.Total() - old.Size + size; total > s.opts.MaxUploadBytes {
		return fmt.Errorf("put part %d of %s: parts would total %d bytes, more than %d: %w",
			partNumber, uploadID, total, s.opts.MaxUploadBytes, storage.ErrUploadTooLarge)
	}
	u.Parts[partNumber] = meta.Part{Size: size, File: filepath.Base(path)}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.PutUpload(uploadID, u); err != nil {
		return fmt.Errorf("put part: %w", err)
	}
	if err := b.Commit(); err != nil {
		return classify("put part", err)
	}
	if replacing {
		oldPath := filepath.Join(dir, old.File)
		err := s.stagingFault("remove", oldPath)
		if err == nil {
			err = os.Remove(oldPath)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove replaced multipart part", "upload", uploadID, "part", partNumber, "error", err)
		}
	}
	return nil
}

// CompleteUpload implements storage.Multipart. The parts stream, in order, through the same
// write path as Put (declared size = the recorded total), so the object is stored atomically
// and first writer wins applies. The upload is forgotten only after success, so a client may
// retry a completion that failed for lack of room.
func (s *Store) CompleteUpload(ctx context.Context, uploadID string, parts []int) (storage.PutResult, error) {
	dir, err := s.uploadDir(uploadID)
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("complete upload: %w", err)
	}
	if err := s.ops.enter(); err != nil {
		return storage.PutResult{}, fmt.Errorf("complete upload: %w", err)
	}
	defer s.ops.leave()
	// Held for the whole assembly: no part may be replaced or expired while it is read.
	lock := s.uploadLock(uploadID)
	lock.Lock()
	defer lock.Unlock()
	u, err := s.liveUpload(uploadID)
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("complete upload: %w", err)
	}
	if uploaded := u.PartNumbers(); !slices.Equal(uploaded, parts) {
		return storage.PutResult{}, fmt.Errorf("complete upload %s: listed %v, uploaded %v: %w", uploadID, parts, uploaded, storage.ErrPartsMismatch)
	}
	files := make([]string, len(parts))
	for i, n := range parts {
		p := u.Parts[n]
		if p.File == "" || filepath.Base(p.File) != p.File || p.File == "." || p.File == ".." {
			return storage.PutResult{}, fmt.Errorf("complete upload %s: %w: part %d has a bad file name %q", uploadID, storage.ErrUnavailable, n, p.File)
		}
		path := filepath.Join(dir, p.File)
		fi, err := os.Stat(path)
		if err != nil || fi.Size() != p.Size {
			return storage.PutResult{}, fmt.Errorf("complete upload %s: %w: part %d is missing or damaged (%v)", uploadID, storage.ErrUnavailable, n, err)
		}
		files[i] = path
	}
	body := &partsReader{ctx: ctx, pool: s.pool, files: files}
	defer body.Close()
	res, err := s.put(ctx, u.Key, body, storage.PutOptions{ContentType: u.ContentType, Size: u.Total()})
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("complete upload %s: %w", uploadID, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	err = b.DeleteUpload(uploadID)
	if err == nil {
		err = b.Commit()
	}
	if err != nil {
		// The object is stored; the leftover state expires with the janitor.
		s.log.Warn("forget completed upload", "upload", uploadID, "error", err)
	}
	_ = body.Close()
	if err := s.pool.Do(context.WithoutCancel(ctx), func() error { return os.RemoveAll(dir) }); err != nil {
		s.log.Warn("remove completed upload's parts", "upload", uploadID, "error", err)
	}
	return res, nil
}

// partsReader concatenates part files, opening one at a time so a 200-part upload holds one
// descriptor of the pool.
type partsReader struct {
	ctx   context.Context
	pool  *fdpool.Pool
	files []string
	cur   *fdpool.File
}

func (r *partsReader) Read(p []byte) (int, error) {
	for {
		if r.cur == nil {
			if len(r.files) == 0 {
				return 0, io.EOF
			}
			f, err := r.pool.Open(r.ctx, r.files[0])
			if err != nil {
				if errors.Is(err, storage.ErrBusy) || r.ctx.Err() != nil {
					return 0, fmt.Errorf("open multipart part: %w", err)
				}
				return 0, fmt.Errorf("%w: open multipart part: %w", storage.ErrUnavailable, err)
			}
			r.cur, r.files = f, r.files[1:]
		}
		n, err := r.cur.Read(p)
		if err == io.EOF {
			_ = r.cur.Close()
			r.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		if err != nil {
			return n, fmt.Errorf("%w: read multipart part: %w", storage.ErrUnavailable, err)
		}
		return n, nil
	}
}

func (r *partsReader) Close() error {
	if r.cur != nil {
		err := r.cur.Close()
		r.cur = nil
		return err
	}
	return nil
}

// janitorLoop expires abandoned uploads; owned by the Store and stopped by Close.
func (s *Store) janitorLoop() {
	defer s.bg.Done()
	t := time.NewTicker(s.opts.JanitorInterval)
	defer t.Stop()
	for {
		if _, err := s.expireUploads(s.bgCtx); err != nil && s.bgCtx.Err() == nil {
			s.log.Error("expire multipart uploads", "error", err)
		}
		select {
		case <-s.bgCtx.Done():
			return
		case <-t.C:
		}
	}
}

// expireUploads removes uploads older than storage.UploadExpiry (and undecodable ones) with
// their parts, multipart and resumable (resumable.go) alike, and returns how many it removed.
func (s *Store) expireUploads(ctx context.Context) (int, error) {
	now := s.now()
	removed := 0
	err := s.db.ScanUploads(ctx, func(id string, u meta.Upload, derr error) error {
		if derr == nil && now.Sub(time.UnixMilli(u.CreatedMillis)) <= storage.UploadExpiry {
			return nil
		}
		resumablePath, resumable := s.resumablePath(id)
		if resumable && s.isHeld(id) {
			return nil // a writer is on it: its next checkpoint renews it
		}
		lock := s.uploadLock(id)
		lock.Lock()
		defer lock.Unlock()
		if derr == nil {
			// Re-check under the lock: a completion may have finished meanwhile.
			cur, err := s.db.GetUpload(id)
			if err != nil {
				return nil
			}
			if now.Sub(time.UnixMilli(cur.CreatedMillis)) <= storage.UploadExpiry {
				return nil
			}
		} else {
			s.log.Error("removing undecodable multipart upload", "upload", id, "error", derr)
		}
		b := s.db.NewBatch()
		defer b.Close()
		if err := b.DeleteUpload(id); err != nil {
			return err
		}
		if err := b.Commit(); err != nil {
			return err
		}
		if dir, err := s.uploadDir(id); err == nil {
			if err := s.pool.Do(ctx, func() error { return os.RemoveAll(dir) }); err != nil {
				s.log.Warn("remove expired upload's parts", "upload", id, "error", err)
			}
		} else if resumable {
			if err := s.removeResumableFile(ctx, resumablePath); err != nil {
				s.log.Warn("remove expired resumable upload's bytes", "upload", id, "error", err)
			}
		}
		removed++
		s.metrics.expired.Inc()
		s.log.Info("multipart upload expired", "upload", id, "key", u.Key.String())
		return nil
	})
	return removed, err
}

// removeOrphanParts deletes part files and directories that no recorded upload references:
// leftovers of a crash mid-PutPart or of removals that failed. It runs in Open, before any
// PutPart can be creating files.
func (s *Store) removeOrphanParts(_ context.Context) error {
	entries, err := os.ReadDir(s.partDir)
	if err != nil {
		return fmt.Errorf("list %s: %w", s.partDir, err)
	}
	for _, e := range entries {
		path := filepath.Join(s.partDir, e.Name())
		u, err := s.db.GetUpload(e.Name())
		if _, derr := s.uploadDir(e.Name()); derr != nil || err != nil || !e.IsDir() {
			if err != nil && !errors.Is(err, storage.ErrUploadNotFound) && !errors.Is(err, storage.ErrCorrupt) {
				return err
			}
			if err := os.RemoveAll(path); err != nil {
				return fmt.Errorf("remove orphaned upload files %s: %w", path, err)
			}
			continue
		}
		referenced := map[string]bool{}
		for _, p := range u.Parts {
			referenced[p.File] = true
		}
		files, err := os.ReadDir(path)
		if err != nil {
			return fmt.Errorf("list %s: %w", path, err)
		}
		for _, f := range files {
			if !referenced[f.Name()] {
				if err := os.RemoveAll(filepath.Join(path, f.Name())); err != nil {
					return fmt.Errorf("remove orphaned part %s: %w", f.Name(), err)
				}
			}
		}
	}
	return nil
}

// syncDir fsyncs a directory so entries created in it survive a crash.
func (s *Store) syncDir(ctx context.Context, dir string) error {
	if err := s.stagingFault("syncDir", dir); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	d, err := s.pool.Open(ctx, dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
