package local

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
)

// TestUploadKeySurvivesRestart: the upload's key lives in Pebble with the rest of its state.
func TestUploadKeySurvivesRestart(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	key := storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "builds/h/restart.zip"}
	id, err := s.StartUpload(ctx(t), key, "application/zip")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UploadKey(ctx(t), id); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("UploadKey on a closed store: %v, want ErrUnavailable", err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	got, err := s.UploadKey(ctx(t), id)
	if err != nil || got != key {
		t.Fatalf("UploadKey after restart = %v, %v; want %v", got, err, key)
	}
}

// TestUploadExpiresBeforeTheJanitorRuns: an upload past storage.UploadExpiry is gone for every
// Multipart call at once, not only after the janitor's next pass.
func TestUploadExpiresBeforeTheJanitorRuns(t *testing.T) {
	opts := testOpts(t)
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	opts.Now = func() time.Time { return time.Unix(0, now.Load()) }
	opts.JanitorInterval = time.Hour // its first pass runs at Open, then not again in this test
	s := openStore(t, opts)
	key := storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "builds/h/late.zip"}
	id, err := s.StartUpload(ctx(t), key, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutPart(ctx(t), id, 1, strings.NewReader("part")); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(storage.UploadExpiry)) // exactly at the limit: still alive
	if got, err := s.UploadKey(ctx(t), id); err != nil || got != key {
		t.Fatalf("UploadKey at the expiry limit = %v, %v; want %v", got, err, key)
	}
	now.Add(int64(time.Second))
	if _, err := s.UploadKey(ctx(t), id); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("UploadKey of an expired upload: %v, want ErrUploadNotFound", err)
	}
	if err := s.PutPart(ctx(t), id, 2, strings.NewReader("late")); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("PutPart on an expired upload: %v, want ErrUploadNotFound", err)
	}
	if _, err := s.CompleteUpload(ctx(t), id, []int{1}); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("CompleteUpload of an expired upload: %v, want ErrUploadNotFound", err)
	}
	if err := statErr(t, s, key); !isNotFound(err) {
		t.Fatalf("an expired upload was stored: %v", err)
	}
	if n := counterValue(s.metrics.expired); n != 0 {
		t.Fatalf("the janitor ran meanwhile (%v expired); the test proves nothing", n)
	}
}
