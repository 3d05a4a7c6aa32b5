package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

// errBodyRead is returned by readers that must not be read.
var errBodyRead = errors.New("storagetest: the body was read although it must not be")

// UnreadableBody is an io.Reader that fails the test if anything reads it. Use it where a
// store must not touch the body (first writer wins).
type UnreadableBody struct {
	T    testing.TB
	read atomic.Bool
}

// Read implements io.Reader.
func (u *UnreadableBody) Read([]byte) (int, error) {
	u.read.Store(true)
	u.T.Errorf("the body was read although the key already existed (first writer wins)")
	return 0, errBodyRead
}

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// Bytes returns n deterministic pseudo-random bytes.
func Bytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = io.ReadFull(testsupport.NewPatternReader(seed, int64(n)), b)
	return b
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// readAll opens key and returns its whole body, failing the test on error.
func readAll(t *testing.T, s storage.Store, key storage.Key) []byte {
	t.Helper()
	return readRange(t, s, key, 0, -1)
}

func readRange(t *testing.T, s storage.Store, key storage.Key, offset, length int64) []byte {
	t.Helper()
	r, err := s.Open(ctxT(t), key, offset, length)
	if err != nil {
		t.Fatalf("Open(%v, %d, %d): %v", key, offset, length, err)
	}
	defer func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close reader of %v: %v", key, err)
		}
	}()
	// The stores under test hold bodies of at most a few MiB in these tests.
	b, err := io.ReadAll(io.LimitReader(r, 64<<20))
	if err != nil {
		t.Fatalf("read %v [%d,+%d): %v", key, offset, length, err)
	}
	return b
}

// mustPut stores body and fails the test on error.
func mustPut(t *testing.T, s storage.Store, key storage.Key, body []byte, opts storage.PutOptions) storage.PutResult {
	t.Helper()
	if opts.Size == 0 && len(body) != 0 {
		opts.Size = storage.UnknownSize
	}
	res, err := s.Put(ctxT(t), key, bytes.NewReader(body), opts)
	if err != nil {
		t.Fatalf("Put(%v, %d bytes): %v", key, len(body), err)
	}
	return res
}

// assertAbsent checks through every read path that key is not stored.
func assertAbsent(t *testing.T, s storage.Store, key storage.Key) {
	t.Helper()
	ctx := ctxT(t)
	if info, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat(%v) = %+v, %v; want ErrNotFound (nothing may be stored)", key, info, err)
	}
	if r, err := s.Open(ctx, key, 0, -1); !errors.Is(err, storage.ErrNotFound) {
		if r != nil {
			_ = r.Close()
		}
		t.Fatalf("Open(%v) = %v; want ErrNotFound", key, err)
	}
	missing, err := s.FindMissing(ctx, []storage.Key{key})
	if err != nil || len(missing) != 1 || missing[0] != key {
		t.Fatalf("FindMissing(%v) = %v, %v; want the key reported missing", key, missing, err)
	}
}

// assertStored checks Stat, Open and FindMissing agree that key holds body.
func assertStored(t *testing.T, s storage.Store, key storage.Key, body []byte) storage.Info {
	t.Helper()
	ctx := ctxT(t)
	info, err := s.Stat(ctx, key)
	if err != nil {
		t.Fatalf("Stat(%v): %v", key, err)
	}
	if info.Key != key || info.Size != int64(len(body)) || info.SHA256 != sha256.Sum256(body) {
		t.Fatalf("Stat(%v) = key %v size %d sha %x; want size %d sha %x", key, info.Key, info.Size, info.SHA256, len(body), sha256.Sum256(body))
	}
	if got := readAll(t, s, key); !bytes.Equal(got, body) {
		t.Fatalf("body of %v differs: got %d bytes, want %d", key, len(got), len(body))
	}
	missing, err := s.FindMissing(ctx, []storage.Key{key})
	if err != nil || len(missing) != 0 {
		t.Fatalf("FindMissing(%v) = %v, %v; want nothing missing", key, missing, err)
	}
	return info
}
