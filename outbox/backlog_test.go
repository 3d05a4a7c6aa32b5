package outbox

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// countingStore records the largest page any caller asked ScanOutbox for.
type countingStore struct {
	queueStore
	calls    atomic.Int64
	maxLimit atomic.Int64
}

func (c *countingStore) ScanOutbox(ctx context.Context, peer string, after uint64, limit int) ([]meta.OutboxEntry, error) {
	c.calls.Add(1)
	for {
		cur := c.maxLimit.Load()
		if int64(limit) <= cur || c.maxLimit.CompareAndSwap(cur, int64(limit)) {
			break
		}
	}
	return c.queueStore.ScanOutbox(ctx, peer, after, limit)
}

// heapSampler keeps the peak live heap seen at its samples. Each sample collects garbage
// first, so it measures what the dispatcher holds rather than the collector's pacing.
type heapSampler struct {
	mu   sync.Mutex
	peak uint64
}

func (h *heapSampler) sample() {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h.mu.Lock()
	h.peak = max(h.peak, ms.HeapAlloc)
	h.mu.Unlock()
}

func TestBacklogIsDeliveredWithBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("200k-entry backlog")
	}
	const entries = 200_000
	const objects = 100
	var counting *countingStore
	heap := &heapSampler{}
	var pushed atomic.Int64
	sender := &noopSender{onPush: func() {
		if pushed.Add(1)%5_000 == 0 {
			heap.sample()
		}
	}}
	dir := t.TempDir() + "/meta"
	f := newFixture(t, fixtureOpts{
		dir: dir,
		mod: func(c *Config) { c.Sender = sender },
		wrap: func(q queueStore) queueStore {
			counting = &countingStore{queueStore: q}
			return counting
		},
	})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	var keys []Entry
	for i := range objects {
		keys = append(keys, f.put(fmt.Sprintf("obj%03d", i), fmt.Sprintf("body %d", i)))
	}
	start := time.Now()
	for i := 0; i < entries; i += 1000 {
		b := f.db.NewBatch()
		for j := i; j < i+1000; j++ {
			if err := f.o.Enqueue(b, keys[j%objects]); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	enqueued := time.Since(start)
	if d := f.o.Depth("a"); d != entries {
		t.Fatalf("depth = %d, want %d", d, entries)
	}
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	start = time.Now()
	stop := f.run()
	deadline := time.Now().Add(5 * time.Minute)
	for f.o.Depth("a") != 0 || pushed.Load() < entries {
		if time.Now().After(deadline) {
			t.Fatalf("backlog not drained: depth %d, %d pushed", f.o.Depth("a"), pushed.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	drained := time.Since(start)
	testsupport.WaitFor(t, "the queue deleted", 20*time.Second, func() bool {
		page, err := f.db.ScanOutbox(context.Background(), "a", 0, 1)
		return err == nil && len(page) == 0
	})
	if got := pushed.Load(); got != entries {
		t.Fatalf("%d pushes, want exactly %d", got, entries)
	}
	if m := counting.maxLimit.Load(); m > int64(f.o.cfg.Batch) {
		t.Fatalf("a scan asked for %d entries; the page size is %d", m, f.o.cfg.Batch)
	}
	heap.mu.Lock()
	peak := heap.peak
	heap.mu.Unlock()
	t.Logf("backlog of %d entries: enqueued in %v (%.0f entries/s), delivered in %v (%.0f entries/s) with %d scans of at most %d entries",
		entries, enqueued.Round(time.Millisecond), entries/enqueued.Seconds(), drained.Round(time.Millisecond),
		entries/drained.Seconds(), counting.calls.Load(), counting.maxLimit.Load())
	t.Logf("live heap: %.1f MiB before Run, peak %.1f MiB over samples every 5000 pushes while draining",
		float64(base.HeapAlloc)/(1<<20), float64(peak)/(1<<20))

	// A restart walks the queue from its first key: the deletions must not make that slow.
	stop()
	f.closeDB()
	start = time.Now()
	f2 := newFixture(t, fixtureOpts{dir: dir, store: f.store})
	if d := f2.o.Depth("a"); d != 0 {
		t.Fatalf("depth after restart = %d", d)
	}
	t.Logf("restart after delivering the backlog: New took %v", time.Since(start).Round(time.Microsecond))
}

// noopSender accepts everything, draining bodies so the local reads are real.
type noopSender struct{ onPush func() }

func (n *noopSender) PushObject(_ context.Context, _ string, _ storage.Info, body io.Reader) (bool, error) {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return false, err
	}
	if n.onPush != nil {
		n.onPush()
	}
	return true, nil
}

func (n *noopSender) PushTombstone(context.Context, string, storage.Tombstone) error {
	if n.onPush != nil {
		n.onPush()
	}
	return nil
}

func BenchmarkEnqueueAndDispatch(b *testing.B) {
	f := newFixture(b, fixtureOpts{mod: func(c *Config) { c.Sender = &noopSender{} }})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	e := f.put("bench", "a small body")
	f.run()
	const perCommit = 64 // a write's batch carries one entry; concurrent writes group-commit
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += perCommit {
		batch := f.db.NewBatch()
		for j := i; j < min(i+perCommit, b.N); j++ {
			if err := f.o.Enqueue(batch, e); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
		batch.Close()
		f.o.Notify()
	}
	deadline := time.Now().Add(5 * time.Minute)
	for f.o.Depth("a") != 0 {
		if time.Now().After(deadline) {
			b.Fatalf("not drained: depth %d", f.o.Depth("a"))
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "entries/s")
}
