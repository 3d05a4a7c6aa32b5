package local

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// syncedObserver queues one entry per change, as the outbox does, and records in AfterCommit
// how many entries the database already shows.
type syncedObserver struct {
	t  *testing.T
	db *meta.DB

	mu      sync.Mutex
	queued  uint64
	visible []int // entries AfterCommit found, one per call
}

func (o *syncedObserver) OnCommit(b *meta.Batch, c storage.Change) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.queued++
	return b.PutOutbox("peer", o.queued, []byte(c.Info.Key.Name))
}

func (o *syncedObserver) AfterCommit() {
	o.mu.Lock()
	defer o.mu.Unlock()
	entries, err := o.db.ScanOutbox(ctx(o.t), "peer", 0, 100)
	if err != nil {
		o.t.Errorf("ScanOutbox in AfterCommit: %v", err)
	}
	o.visible = append(o.visible, len(entries))
}

// TestObserverBuiltOnTheDataDir is the composition the outbox uses: the data directory is
// opened first, the observer is built on its database, and the store is opened with both. Each
// committing write calls AfterCommit once, when what OnCommit added is already readable; a
// write that commits nothing calls neither.
func TestObserverBuiltOnTheDataDir(t *testing.T) {
	opts := testOpts(t)
	dir, err := OpenDataDir(opts.DataDir, smallMeta())
	if err != nil {
		t.Fatal(err)
	}
	ob := &syncedObserver{t: t, db: dir.DB()}
	opts.Dir, opts.Observer = dir, ob
	s := openStore(t, opts)
	put(t, s, cas("a"), []byte("a"))
	put(t, s, cas("a"), []byte("a")) // first writer wins: nothing commits
	put(t, s, cas("b"), []byte("b"))
	if err := s.DeleteNamespace(ctx(t), "acme", "app", 0); err != nil {
		t.Fatal(err)
	}
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if got := ob.visible; len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("AfterCommit saw %v entries, want [1 2 3]: one call per commit, after its batch is readable", got)
	}
}

// TestOpenTakesOverTheDataDir: a store opened on a DataDir owns it. Its lock holds while the
// store is open, and both Close and a failed Open release it.
func TestOpenTakesOverTheDataDir(t *testing.T) {
	path := t.TempDir()
	dir, err := OpenDataDir(path, smallMeta())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDataDir(path, smallMeta()); !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("second OpenDataDir = %v, want ErrDataDirLocked", err)
	}
	// A contradicting DataDir fails the Open, which closes the given directory.
	bad := testOpts(t)
	bad.Dir = dir
	if _, err := Open(bad); err == nil || !strings.Contains(err.Error(), "differs from the opened") {
		t.Fatalf("Open with another DataDir = %v, want a mismatch error", err)
	}
	dir, err = OpenDataDir(path, smallMeta())
	if err != nil {
		t.Fatalf("the failed Open kept the directory locked: %v", err)
	}
	opts := testOpts(t)
	opts.DataDir, opts.Dir = "", dir
	s := openStore(t, opts)
	if s.opts.DataDir != path {
		t.Fatalf("DataDir %q, want it taken from the DataDir, %q", s.opts.DataDir, path)
	}
	put(t, s, cas("kept"), []byte("kept"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := testOpts(t)
	reopened.DataDir = path
	s = openStore(t, reopened)
	if got, err := read(t, s, cas("kept")); err != nil || string(got) != "kept" {
		t.Fatalf("after reopening: %q, %v", got, err)
	}
}
