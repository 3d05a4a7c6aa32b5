package outbox

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
)

// The real composition: storage/local on disk calls OnCommit inside every committing batch, and
// the outbox dispatches from that same store and Pebble.
func TestLocalStoreWritesQueueAtomically(t *testing.T) {
	dir := openDataDir(t)
	clock := newFakeClock()
	sender := &fakeSender{}
	ob, err := New(Config{DB: dir.DB(), Sender: sender, Now: clock.Now, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	failing := &failingObserver{Outbox: ob}
	st := openLocalStore(t, local.Options{Dir: dir, Registerer: prometheus.NewRegistry(), Observer: failing})
	failAfterEnqueue := &failing.failAfterEnqueue
	ob.SetTargets([]Target{{Name: "a", Addr: "A"}, {Name: "b", Addr: "B"}})
	ctx := context.Background()
	put := func(k storage.Key, body string, opts storage.PutOptions) (storage.PutResult, error) {
		opts.Size = int64(len(body))
		return st.Put(ctx, k, bytes.NewReader([]byte(body)), opts)
	}
	mustPut := func(k storage.Key, body string) storage.Info {
		t.Helper()
		res, err := put(k, body, storage.PutOptions{})
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		return res.Info
	}
	gone := storage.Key{Tenant: "acme", Namespace: "old", Kind: storage.KindCAS, Name: "gone"}
	blob := casKey("blob")
	doc := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "doc"}
	mustPut(gone, "soon deleted")                                     // seq 1
	if err := st.DeleteNamespace(ctx, "acme", "old", 0); err != nil { // seq 2
		t.Fatal(err)
	}
	blobInfo := mustPut(blob, "blob body") // seq 3
	mustPut(doc, `{"v":1}`)                // seq 4
	docInfo := mustPut(doc, `{"v":2}`)     // seq 5
	mustPut(blob, "blob body")             // first writer wins: no change, no entry

	// A write applied from a peer is not queued again (its origin pushes it to everyone).
	remote := casKey("from-peer")
	if _, err := put(remote, "remote", storage.PutOptions{Version: docInfo.Version + 10}); err != nil {
		t.Fatal(err)
	}
	// A write whose batch fails after Enqueue stores nothing: neither the object nor entries.
	failAfterEnqueue.Store(true)
	failed := casKey("fails")
	if _, err := put(failed, "x", storage.PutOptions{}); err == nil {
		t.Fatal("the write succeeded although its hook failed")
	}
	failAfterEnqueue.Store(false)
	if _, err := st.Stat(ctx, failed); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat of the failed write: %v, want not found", err)
	}
	for _, peer := range []string{"a", "b"} {
		entries, err := dir.DB().ScanOutbox(ctx, peer, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var seqs []uint64
		var got []Entry
		for _, e := range entries {
			seqs = append(seqs, e.Seq)
			d, err := DecodeEntry(e.Value)
			if err != nil {
				t.Fatalf("queued entry %d: %v", e.Seq, err)
			}
			got = append(got, d)
		}
		if !slices.Equal(seqs, []uint64{1, 2, 3, 4, 5}) {
			t.Fatalf("peer %s queue = %v, want 1..5 (nothing for the replicated or the failed write)", peer, seqs)
		}
		if got[1].Op != OpTombstone || got[1].Tombstone.Namespace != "old" || got[2].Key != blob ||
			got[2].Version != blobInfo.Version || got[4].Key != doc || got[4].Version != docInfo.Version {
			t.Fatalf("peer %s entries = %+v", peer, got)
		}
	}
	// The abandoned number is counted until its hole expires.
	if d := ob.Depth("a"); d != 6 {
		t.Fatalf("depth = %d, want 5 queued + 1 abandoned", d)
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ob.Run(runCtx, st) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	testsupport.WaitFor(t, "deliveries to both peers", 20*time.Second, func() bool { return len(sender.to("A")) == 3 && len(sender.to("B")) == 3 })
	for _, addr := range []string{"A", "B"} {
		got := sender.to(addr)
		var tomb, obj, kv int
		for _, d := range got {
			switch {
			case d.op == OpTombstone && d.tomb.Namespace == "old":
				tomb++
			case d.op == OpObject && d.info.Key == blob && d.body == "blob body" && d.info.SHA256 == blobInfo.SHA256:
				obj++
			case d.op == OpObject && d.info.Key == doc && d.body == `{"v":2}` && d.info.Version == docInfo.Version:
				kv++
			default:
				t.Fatalf("unexpected delivery to %s: %+v", addr, d)
			}
		}
		if tomb != 1 || obj != 1 || kv != 1 {
			t.Fatalf("deliveries to %s: %+v", addr, got)
		}
	}
	clock.Advance(holeGrace)
	testsupport.WaitFor(t, "queues empty and depth settled", 20*time.Second, func() bool {
		a, errA := dir.DB().ScanOutbox(ctx, "a", 0, 10)
		b, errB := dir.DB().ScanOutbox(ctx, "b", 0, 10)
		return errA == nil && errB == nil && len(a) == 0 && len(b) == 0 && ob.Depth("a") == 0 && ob.Depth("b") == 0
	})
	// The deleted object (seq 1) and the superseded document (seq 4) were dropped, not pushed.
	if n := testutil.ToFloat64(ob.metrics.pushes.WithLabelValues("a", "object", resultDropped)); n != 2 {
		t.Fatalf("dropped object entries = %v, want 2", n)
	}
}

// The outbox is the disk store's commit observer; outbox itself does not import the store.
var _ local.CommitObserver = (*Outbox)(nil)

// failingObserver is the outbox with a failure injected after its entries joined the batch.
type failingObserver struct {
	*Outbox
	failAfterEnqueue atomic.Bool
}

func (f *failingObserver) OnCommit(b *meta.Batch, c storage.Change) error {
	if err := f.Outbox.OnCommit(b, c); err != nil {
		return err
	}
	if f.failAfterEnqueue.Load() {
		return errors.New("injected failure after the entries joined the batch")
	}
	return nil
}

// openDataDir opens a data directory with a small metadata database; the store opened on it
// (openLocalStore) closes it.
func openDataDir(t testing.TB) *local.DataDir {
	t.Helper()
	dir, err := local.OpenDataDir(t.TempDir(), meta.Options{BlockCacheBytes: 4 << 20, MemTableBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// openLocalStore opens the disk store and closes it when the test ends.
func openLocalStore(t testing.TB, opts local.Options) *local.Store {
	t.Helper()
	st, err := local.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return st
}
