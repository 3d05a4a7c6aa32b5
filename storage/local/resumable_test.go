package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
)

var resumableKey = storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "blob"}

// stageResumable takes the upload, writes data and checkpoints it, as a broken stream does.
func stageResumable(t *testing.T, s *Store, id string, size int64, data []byte) {
	t.Helper()
	w, err := s.ResumeWrite(ctx(t), resumableKey, id, size)
	if err != nil {
		t.Fatalf("ResumeWrite: %v", err)
	}
	defer func() { _ = w.Close() }()
	if _, err := w.Write(data); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := w.Checkpoint(ctx(t)); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
}

func TestResumableWriteSurvivesRestartAndCompletes(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	body := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	size := int64(len(body))
	if _, err := s.WriteStatus(ctx(t), resumableKey, "u1", size); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("status of an unknown upload: %v, want ErrUploadNotFound", err)
	}
	stageResumable(t, s, "u1", size, body[:20000])
	// Bytes written after the checkpoint, then lost with the process, are not claimed.
	w, err := s.ResumeWrite(ctx(t), resumableKey, "u1", size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body[20000:30000]); err != nil {
		t.Fatal(err)
	}
	_ = w.Close() // no checkpoint
	if n, err := s.WriteStatus(ctx(t), resumableKey, "u1", size); err != nil || n != 20000 {
		t.Fatalf("status: %d, %v; want 20000", n, err)
	}
	// Other upload ids and sizes name other uploads.
	if _, err := s.WriteStatus(ctx(t), resumableKey, "u2", size); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("another id: %v", err)
	}
	if _, err := s.WriteStatus(ctx(t), resumableKey, "u1", size+1); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("another size: %v", err)
	}
	if _, err := s.Stat(ctx(t), resumableKey); !isNotFound(err) {
		t.Fatalf("a partial upload is visible as an object: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, opts)
	if n, err := s.WriteStatus(ctx(t), resumableKey, "u1", size); err != nil || n != 20000 {
		t.Fatalf("status after restart: %d, %v; want 20000", n, err)
	}
	w, err = s.ResumeWrite(ctx(t), resumableKey, "u1", size)
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() != 20000 {
		t.Fatalf("resumed at %d, want 20000", w.Offset())
	}
	if _, err := w.Write(body[20000:]); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	res, err := w.Complete(ctx(t), storage.PutOptions{Size: size, ExpectedSHA256: &sum}, nil)
	if err != nil || !res.Created {
		t.Fatalf("Complete: %+v, %v", res, err)
	}
	_ = w.Close()
	got := readAll(t, s, resumableKey)
	if !bytes.Equal(got, body) {
		t.Fatalf("stored %d bytes, not the upload", len(got))
	}
	if _, err := s.WriteStatus(ctx(t), resumableKey, "u1", size); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("completed upload still has a status: %v", err)
	}
	if left := dirEntries(t, s.resumableDir()); len(left) != 0 {
		t.Fatalf("staged files left: %v", left)
	}
}

func TestResumableWriteBadDataIsNotStored(t *testing.T) {
	s := openStore(t, testOpts(t))
	body := bytes.Repeat([]byte("x"), 5000)
	stageResumable(t, s, "u", 5000, body[:100])
	w, err := s.ResumeWrite(ctx(t), resumableKey, "u", 5000)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Close() }()
	if _, err := w.Write(body[100:]); err != nil {
		t.Fatal(err)
	}
	wrong := sha256.Sum256([]byte("other"))
	if _, err := w.Complete(ctx(t), storage.PutOptions{Size: 5000, ExpectedSHA256: &wrong}, nil); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatalf("Complete with a wrong hash: %v", err)
	}
	if _, err := s.Stat(ctx(t), resumableKey); !isNotFound(err) {
		t.Fatalf("bad data stored: %v", err)
	}
	// The caller decides: the bytes stay until discarded.
	if w.Offset() != 5000 {
		t.Fatalf("offset %d after a failed completion", w.Offset())
	}
	if err := w.Discard(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteStatus(ctx(t), resumableKey, "u", 5000); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("discarded upload has a status: %v", err)
	}
}

func TestResumableWriteRestartDropsTheRecordFirst(t *testing.T) {
	s := openStore(t, testOpts(t))
	stageResumable(t, s, "u", 1000, make([]byte, 600))
	w, err := s.ResumeWrite(ctx(t), resumableKey, "u", 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Close() }()
	if err := w.Restart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if n, err := s.WriteStatus(ctx(t), resumableKey, "u", 1000); err != nil || n != 0 {
		t.Fatalf("status after a restart: %d, %v; want 0 (never more than the file holds)", n, err)
	}
}

func TestResumableWriteHasOneWriterAtATime(t *testing.T) {
	s := openStore(t, testOpts(t))
	w, err := s.ResumeWrite(ctx(t), resumableKey, "u", 10)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx(t), 50*time.Millisecond)
	defer cancel()
	if _, err := s.ResumeWrite(short, resumableKey, "u", 10); err == nil {
		t.Fatal("a second writer got the upload while the first held it")
	}
	_ = w.Close()
	w2, err := s.ResumeWrite(ctx(t), resumableKey, "u", 10)
	if err != nil {
		t.Fatalf("after the first let go: %v", err)
	}
	_ = w2.Close()
}

func TestResumableWriteExpires(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	opts := testOpts(t)
	opts.Now = func() time.Time { return time.Unix(0, now.Load()) }
	s := openStore(t, opts)
	stageResumable(t, s, "old", 4096, make([]byte, 1000))
	now.Add(int64(storage.UploadExpiry - time.Minute))
	stageResumable(t, s, "recent", 4096, make([]byte, 2000))
	if n, err := s.expireUploads(ctx(t)); err != nil || n != 0 {
		t.Fatalf("expired %d, %v before any upload was 24 h old", n, err)
	}
	now.Add(int64(2 * time.Minute))
	// Past the expiry the upload is gone even before the janitor comes by.
	if _, err := s.WriteStatus(ctx(t), resumableKey, "old", 4096); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("status of an expired upload: %v", err)
	}
	if n, err := s.expireUploads(ctx(t)); err != nil || n != 1 {
		t.Fatalf("expired %d, %v; want 1", n, err)
	}
	if n, err := s.WriteStatus(ctx(t), resumableKey, "recent", 4096); err != nil || n != 2000 {
		t.Fatalf("the recent upload: %d, %v", n, err)
	}
	if left := dirEntries(t, s.resumableDir()); len(left) != 1 {
		t.Fatalf("staged files after expiry: %v, want only the recent one", left)
	}
	if got := counterValue(s.metrics.expired); got != 1 {
		t.Fatalf("expired counter %v, want 1", got)
	}
}

func TestResumableOrphanRemovedOnOpen(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	w, err := s.ResumeWrite(ctx(t), resumableKey, "u", 100)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 50)); err != nil {
		t.Fatal(err)
	}
	// A crash before the first checkpoint: the file is there, no record is.
	path, _ := s.resumablePath(resumableID(resumableKey, "u", 100))
	data, err := os.ReadFile(path)
	if err != nil || len(data) != 50 {
		t.Fatalf("staged file: %d bytes, %v", len(data), err)
	}
	_ = w.Close()
	if err := os.WriteFile(path, data, 0o640); err != nil { // Close removed it; a crash would not
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.resumableDir(), "junk"), []byte("j"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	if left := dirEntries(t, s.resumableDir()); len(left) != 0 {
		t.Fatalf("orphans left after Open: %v", left)
	}
}

func TestResumableUploadsAreInvisibleToMultipart(t *testing.T) {
	s := openStore(t, testOpts(t))
	stageResumable(t, s, "u", 100, make([]byte, 10))
	id := resumableID(resumableKey, "u", 100)
	if _, err := s.UploadKey(ctx(t), id); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("UploadKey of a resumable upload: %v", err)
	}
	if _, err := s.CompleteUpload(ctx(t), id, []int{1}); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("CompleteUpload of a resumable upload: %v", err)
	}
}

func readAll(t *testing.T, s *Store, key storage.Key) []byte {
	t.Helper()
	r, err := s.Open(ctx(t), key, 0, -1)
	if err != nil {
		t.Fatalf("Open %s: %v", key, err)
	}
	defer func() { _ = r.Close() }()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
