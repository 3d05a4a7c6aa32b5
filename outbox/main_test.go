package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openDB opens a real Pebble metadata store in dir (a fresh temporary one when empty).
func openDB(t testing.TB, dir string) *meta.DB {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "meta")
	}
	db, err := meta.Open(meta.Options{Dir: dir, BlockCacheBytes: 8 << 20, MemTableBytes: 4 << 20})
	if err != nil {
		t.Fatalf("open metadata store: %v", err)
	}
	return db
}

// closeOnCleanup closes db when the test ends (after the outbox's Run has stopped, because
// cleanups run last-registered first) unless the returned function closed it before.
func closeOnCleanup(t testing.TB, db *meta.DB) (closeNow func()) {
	var once sync.Once
	closeNow = func() {
		once.Do(func() {
			if err := db.Close(); err != nil {
				t.Errorf("close metadata store: %v", err)
			}
		})
	}
	t.Cleanup(closeNow)
	return closeNow
}

// newFakeClock is a settable clock at a fixed date.
func newFakeClock() *testsupport.Clock {
	return testsupport.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
}

// delivery is one push the fake sender received.
type delivery struct {
	addr    string
	op      Op
	info    storage.Info
	body    string
	tomb    storage.Tombstone
	applied bool
}

// fakeSender records pushes. behave, when set, runs first and may block (honouring ctx), fail,
// or refuse; the body is read fully (test bodies are small) so the store's reader is exercised.
type fakeSender struct {
	mu     sync.Mutex
	got    []delivery
	behave func(ctx context.Context, addr string, d delivery) (applied bool, err error)
}

func (f *fakeSender) PushObject(ctx context.Context, addr string, info storage.Info, body io.Reader) (bool, error) {
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(body, 1<<20)); err != nil {
		return false, fmt.Errorf("fake push: read body: %w", err)
	}
	d := delivery{addr: addr, op: OpObject, info: info, body: buf.String(), applied: true}
	return f.record(ctx, d)
}

func (f *fakeSender) PushTombstone(ctx context.Context, addr string, t storage.Tombstone) error {
	_, err := f.record(ctx, delivery{addr: addr, op: OpTombstone, tomb: t, applied: true})
	return err
}

func (f *fakeSender) record(ctx context.Context, d delivery) (bool, error) {
	if f.behave != nil {
		applied, err := f.behave(ctx, d.addr, d)
		if err != nil {
			return false, err
		}
		d.applied = applied
	}
	f.mu.Lock()
	f.got = append(f.got, d)
	f.mu.Unlock()
	return d.applied, nil
}

func (f *fakeSender) to(addr string) []delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []delivery
	for _, d := range f.got {
		if d.addr == addr {
			out = append(out, d)
		}
	}
	return out
}

// fixture is an outbox over a real Pebble store and an in-memory local store.
type fixture struct {
	t       testing.TB
	db      *meta.DB
	closeDB func()
	store   storage.Store
	sender  *fakeSender
	reg     *prometheus.Registry
	clock   *testsupport.Clock
	o       *Outbox
}

type fixtureOpts struct {
	dir    string // metadata directory (fresh when empty)
	store  storage.Store
	sender *fakeSender
	mod    func(*Config)
	wrap   func(queueStore) queueStore
}

func newFixture(t testing.TB, fo fixtureOpts) *fixture {
	t.Helper()
	f := &fixture{t: t, db: openDB(t, fo.dir), store: fo.store, sender: fo.sender, reg: prometheus.NewRegistry(), clock: newFakeClock()}
	f.closeDB = closeOnCleanup(t, f.db)
	if f.store == nil {
		f.store = newMemoryStore()
	}
	if f.sender == nil {
		f.sender = &fakeSender{}
	}
	cfg := Config{
		DB: f.db, Sender: f.sender, Registerer: f.reg, Now: f.clock.Now,
		MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Rand: rand.New(rand.NewPCG(1, 2)),
	}
	if fo.mod != nil {
		fo.mod(&cfg)
	}
	var qs queueStore = f.db
	if fo.wrap != nil {
		qs = fo.wrap(qs)
	}
	o, err := newOutbox(cfg, qs)
	if err != nil {
		t.Fatalf("new outbox: %v", err)
	}
	f.o = o
	return f
}

// run starts Run; the returned stop (also registered as a cleanup) cancels it and waits.
func (f *fixture) run() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.o.Run(ctx, f.store) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				f.t.Errorf("Run: %v", err)
			}
		})
	}
	f.t.Cleanup(stop)
	return stop
}

// commit enqueues entries in one synced batch, as storage/local does for a write, then notifies.
func (f *fixture) commit(entries ...Entry) {
	f.t.Helper()
	b := f.db.NewBatch()
	defer b.Close()
	for _, e := range entries {
		if err := f.o.Enqueue(b, e); err != nil {
			f.t.Fatalf("enqueue: %v", err)
		}
	}
	if err := b.Commit(); err != nil {
		f.t.Fatalf("commit: %v", err)
	}
	f.o.Notify()
}

// put stores body under a CAS key of the local store and returns the entry replicating it.
func (f *fixture) put(name, body string) Entry {
	f.t.Helper()
	return putEntry(f.t, f.store, casKey(name), body)
}

func putEntry(t testing.TB, s storage.Store, k storage.Key, body string) Entry {
	t.Helper()
	res, err := s.Put(context.Background(), k, bytes.NewReader([]byte(body)), storage.PutOptions{Size: int64(len(body))})
	if err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
	return Entry{Op: OpObject, Key: k, Version: res.Info.Version}
}

func casKey(name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: name}
}

// queued lists the sequence numbers stored for peer.
func (f *fixture) queued(peer string) []uint64 {
	f.t.Helper()
	entries, err := f.db.ScanOutbox(context.Background(), peer, 0, 1<<20)
	if err != nil {
		f.t.Fatalf("scan outbox: %v", err)
	}
	seqs := make([]uint64, len(entries))
	for i, e := range entries {
		seqs[i] = e.Seq
	}
	return seqs
}

func (f *fixture) pushes(peer, op, result string) float64 {
	return testutil.ToFloat64(f.o.metrics.pushes.WithLabelValues(peer, op, result))
}

// counter counts hook calls per peer.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) inc(peer string) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[peer]++
	c.mu.Unlock()
}

func (c *counter) get(peer string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[peer]
}

// waitPasses waits until the hook counter of peer advanced by n: evidence that the worker (or
// supervisor) really ran that many cycles, rather than a sleep that hopes it did.
func waitPasses(t testing.TB, c *counter, peer string, n int) {
	t.Helper()
	start := c.get(peer)
	testsupport.WaitFor(t, fmt.Sprintf("%d passes of %s", n, peer), 20*time.Second, func() bool { return c.get(peer) >= start+n })
}

func newMemoryStore() storage.Store { return storagetest.NewMemory() }

var errRefused = errors.New("connection refused")
