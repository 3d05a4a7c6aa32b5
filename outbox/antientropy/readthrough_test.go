package antientropy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

func newReadThrough(t testing.TB, self *node, src PeerSource, peers Peers, mod func(*ReadThroughOptions)) (*ReadThrough, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := ReadThroughOptions{Registerer: reg, PeerTimeout: 5 * time.Second}
	if mod != nil {
		mod(&opts)
	}
	return mustReadThrough(t, self.store, src, peers, self.Region, opts), reg
}

// mustReadThrough is NewReadThrough for a registry that cannot conflict.
func mustReadThrough(t testing.TB, local storage.Store, src PeerSource, peers Peers, region string, opts ReadThroughOptions) *ReadThrough {
	t.Helper()
	rt, err := NewReadThrough(local, src, peers, region, opts)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func readThroughCount(t testing.TB, rt *ReadThrough, result string) float64 {
	t.Helper()
	return testutil.ToFloat64(rt.results.WithLabelValues(result))
}

func TestReadThroughServesAndStores(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "us")
		body := storagetest.Bytes(42, 300<<10)
		k := key("app", storage.KindCAS, "blob")
		origin := put(t, a.store, k, string(body), 0)
		src := newSource(a, b)
		rt, _ := newReadThrough(t, b, src, newPeers(a), nil)

		r, err := rt.Open(testCtx(t), k, 1000, 5000)
		if err != nil {
			t.Fatalf("Open through: %v", err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, body[1000:6000]) {
			t.Fatalf("range read through: %d bytes, %v", len(got), err)
		}
		stored, err := b.store.Stat(context.Background(), k)
		if err != nil || stored.Version != origin.Version || stored.SHA256 != origin.SHA256 || stored.ContentType != origin.ContentType {
			t.Fatalf("local copy: %+v, %v; want %+v", stored, err, origin)
		}
		if v := readThroughCount(t, rt, "hit"); v != 1 {
			t.Fatalf("read_through_total{hit} = %v", v)
		}

		// Stat reads through too; the next read is local.
		k2 := key("app", storage.KindGradle, "stat-me")
		put(t, a.store, k2, "gradle entry", 0)
		if info, err := rt.Stat(testCtx(t), k2); err != nil || info.Size != int64(len("gradle entry")) {
			t.Fatalf("Stat through: %+v, %v", info, err)
		}
		if got := mustRead(t, rt, k2); got != "gradle entry" || len(src.fetchLog()) != 2 {
			t.Fatalf("second read: %q after fetches %v", got, src.fetchLog())
		}

		// Missing everywhere: not found, counted as a miss.
		if _, err := rt.Open(testCtx(t), key("app", storage.KindCAS, "nowhere"), 0, -1); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Open of a missing key: %v", err)
		}
		if v := readThroughCount(t, rt, "miss"); v != 1 {
			t.Fatalf("read_through_total{miss} = %v", v)
		}
	})
}

func TestReadThroughWithoutPeersIsLocal(t *testing.T) {
	a, b := memoryNode(t, "a", "us"), memoryNode(t, "b", "us")
	k := key("app", storage.KindNx, "n")
	put(t, a.store, k, "x", 0)
	src := newSource(a, b)
	rt, _ := newReadThrough(t, b, src, newPeers(), nil)
	if _, err := rt.Open(testCtx(t), k, 0, -1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open = %v, want not found", err)
	}
	if _, err := rt.Stat(testCtx(t), k); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat = %v, want not found", err)
	}
	if n := len(src.fetchLog()); n != 0 {
		t.Fatalf("%d fetches without peers", n)
	}
	if v := readThroughCount(t, rt, "miss"); v != 0 {
		t.Fatalf("a node without peers counted %v read-through misses", v)
	}
	// Invalid keys are refused by the local store, never sent to peers.
	if _, err := rt.Open(testCtx(t), storage.Key{}, 0, -1); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("Open(invalid) = %v", err)
	}
}

func TestReadThroughCoalescesConcurrentReaders(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "us")
		k := key("app", storage.KindMetro, "bundle")
		body := string(storagetest.Bytes(7, 100<<10))
		put(t, a.store, k, body, 0)
		src := newSource(a, b)
		release := make(chan struct{})
		src.stall[a.Addr] = release
		rt, _ := newReadThrough(t, b, src, newPeers(a), nil)

		const readers = 16
		results := make(chan error, readers)
		for range readers {
			go func() {
				got, err := read(rt, k)
				if err == nil && got != body {
					err = errors.New("wrong body")
				}
				results <- err
			}()
		}
		testsupport.WaitFor(t, "every reader to join one fetch", 30*time.Second, func() bool {
			rt.mu.Lock()
			defer rt.mu.Unlock()
			f := rt.flights[k]
			return f != nil && f.waiters == readers && src.blocked() == 1
		})
		close(release)
		for range readers {
			if err := <-results; err != nil {
				t.Fatalf("reader: %v", err)
			}
		}
		if log := src.fetchLog(); len(log) != 1 {
			t.Fatalf("%d fetches for %d concurrent readers: %v", len(log), readers, log)
		}
		if v := readThroughCount(t, rt, "hit"); v != 1 {
			t.Fatalf("read_through_total{hit} = %v", v)
		}
	})
}

func TestReadThroughReaderLeaving(t *testing.T) {
	a, b := memoryNode(t, "a", "us"), memoryNode(t, "b", "us")
	k := key("app", storage.KindGradle, "slow")
	put(t, a.store, k, "eventually", 0)
	src := newSource(a, b)
	release := make(chan struct{})
	src.stall[a.Addr] = release
	rt, _ := newReadThrough(t, b, src, newPeers(a), nil)

	// The reader that started the fetch leaves; the other still gets the object.
	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := rt.Open(ctx1, k, 0, -1); first <- err }()
	testsupport.WaitFor(t, "the first fetch", 30*time.Second, func() bool { return src.blocked() == 1 })
	second := make(chan error, 1)
	go func() {
		got, err := read(rt, k)
		if err == nil && got != "eventually" {
			err = errors.New("wrong body")
		}
		second <- err
	}()
	testsupport.WaitFor(t, "the second reader to join", 30*time.Second, func() bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return rt.flights[k] != nil && rt.flights[k].waiters == 2
	})
	cancel1()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reader got %v", err)
	}
	close(release)
	if err := <-second; err != nil {
		t.Fatalf("remaining reader: %v", err)
	}

	// When every reader leaves, the fetch is cancelled and forgotten.
	k2 := key("app", storage.KindGradle, "abandoned")
	put(t, a.store, k2, "never read", 0)
	src.stall[a.Addr] = make(chan struct{})
	ctx2, cancel2 := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := rt.Stat(ctx2, k2); done <- err }()
	testsupport.WaitFor(t, "the fetch", 30*time.Second, func() bool { return src.blocked() == 1 })
	cancel2()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned reader got %v", err)
	}
	testsupport.WaitFor(t, "the abandoned fetch to stop", 30*time.Second, func() bool { return src.blocked() == 0 })
	rt.mu.Lock()
	n := len(rt.flights)
	rt.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d flights left after every reader left", n)
	}
	assertMissing(t, b.store, k2)
}

func TestReadThroughSameRegionFirst(t *testing.T) {
	far, near, self := memoryNode(t, "far", "eu"), memoryNode(t, "near", "us"), memoryNode(t, "self", "us")
	both := key("app", storage.KindCAS, "both")
	onlyFar := key("app", storage.KindCAS, "only-far")
	put(t, far.store, both, "far copy", 0)
	put(t, near.store, both, "far copy", 0)
	put(t, far.store, onlyFar, "only far", 0)
	src := newSource(far, near, self)
	rt, _ := newReadThrough(t, self, src, newPeers(far, near), nil)

	mustRead(t, rt, both)
	mustRead(t, rt, onlyFar)
	want := []string{"near both", "near only-far", "far only-far"}
	if log := src.fetchLog(); !slices.Equal(log, want) {
		t.Fatalf("fetch order %v, want %v", log, want)
	}
}

func TestReadThroughSkipsStalledAndBadPeers(t *testing.T) {
	stalled, bad, good, self := memoryNode(t, "stalled", "us"), memoryNode(t, "bad", "us"),
		memoryNode(t, "good", "eu"), memoryNode(t, "self", "us")
	k := key("app", storage.KindXcode, "x")
	for _, n := range []*node{stalled, bad, good} {
		put(t, n.store, k, "the body", 0)
	}
	src := newSource(stalled, bad, good, self)
	src.stall[stalled.Addr] = make(chan struct{})
	src.setFail(func(method, addr string, _ storage.Key) error {
		if method == "FetchObject" && addr == bad.Addr {
			return errors.New("connection reset by peer")
		}
		return nil
	})
	rt, _ := newReadThrough(t, self, src, newPeers(stalled, bad, good), func(o *ReadThroughOptions) {
		o.PeerTimeout = 50 * time.Millisecond
	})
	if got := mustRead(t, rt, k); got != "the body" {
		t.Fatalf("body %q", got)
	}
	want := []string{"stalled x", "good x"} // bad failed before its call was logged
	if log := src.fetchLog(); !slices.Equal(log, want) {
		t.Fatalf("fetches %v, want %v", log, want)
	}
}

// tamperSource serves a body that does not match the header from one peer.
type tamperSource struct {
	*directSource
	addr string
}

func (ts tamperSource) FetchObject(ctx context.Context, addr string, key storage.Key) (storage.Reader, error) {
	r, err := ts.directSource.FetchObject(ctx, addr, key)
	if err != nil || addr != ts.addr {
		return r, err
	}
	v := r.(*verifyingReader)
	return &verifyingReader{r: tampered{v.r}, ctx: ctx, h: v.h}, nil
}

type tampered struct{ storage.Reader }

func (t tampered) Info() storage.Info {
	info := t.Reader.Info()
	info.SHA256[0] ^= 1
	return info
}

func TestReadThroughRejectsCorruptCopy(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		liar, honest, self := open(t, "liar", "us"), open(t, "honest", "eu"), open(t, "self", "us")
		k := key("app", storage.KindGradle, "g")
		put(t, liar.store, k, "the body", 0)
		put(t, honest.store, k, "the body", 0)
		src := newSource(liar, honest, self)
		rt, _ := newReadThrough(t, self, tamperSource{src, liar.Addr}, newPeers(liar, honest), nil)
		if got := mustRead(t, rt, k); got != "the body" {
			t.Fatalf("body %q", got)
		}
		if log := src.fetchLog(); len(log) != 2 {
			t.Fatalf("fetches %v, want the liar then the honest peer", log)
		}

		// Only the liar has it: nothing is stored, the read is a miss (counted as an error).
		k2 := key("app", storage.KindGradle, "only-liar")
		put(t, liar.store, k2, "bad", 0)
		if _, err := rt.Open(testCtx(t), k2, 0, -1); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Open = %v, want not found", err)
		}
		assertMissing(t, self.store, k2)
		if v := readThroughCount(t, rt, "error"); v != 1 {
			t.Fatalf("read_through_total{error} = %v", v)
		}
	})
}

func TestReadThroughRespectsTombstone(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "us")
		k := key("app", storage.KindNx, "123")
		info := put(t, a.store, k, "before the clean", 0)
		if err := b.store.DeleteNamespace(context.Background(), "acme", "app", info.Version+1); err != nil {
			t.Fatal(err)
		}
		rt, _ := newReadThrough(t, b, newSource(a, b), newPeers(a), nil)
		if _, err := rt.Open(testCtx(t), k, 0, -1); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Open = %v, want not found: the clean is newer", err)
		}
		assertMissing(t, b.store, k)
		if v := readThroughCount(t, rt, "miss"); v != 1 {
			t.Fatalf("read_through_total{miss} = %v", v)
		}
	})
}

func TestReadThroughSharesRegistry(t *testing.T) {
	a, b := memoryNode(t, "a", "us"), memoryNode(t, "b", "us")
	reg := prometheus.NewRegistry()
	r1 := mustReadThrough(t, a.store, newSource(), newPeers(), "us", ReadThroughOptions{Registerer: reg})
	r2 := mustReadThrough(t, b.store, newSource(), newPeers(), "us", ReadThroughOptions{Registerer: reg})
	if r1.results != r2.results {
		t.Fatal("two decorators on one registry do not share kura_read_through_total")
	}
}

// A different metric under kura_read_through_total is an error from the constructor, where
// the read-through counter used to panic.
func TestReadThroughConflictingMetricIsAnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "kura_read_through_total", Help: "not ours"}))
	rt, err := NewReadThrough(memoryNode(t, "a", "us").store, newSource(), newPeers(), "us", ReadThroughOptions{Registerer: reg})
	if err == nil || !strings.Contains(err.Error(), "kura_read_through_total") {
		t.Fatalf("NewReadThrough = %v, %v; want an error naming kura_read_through_total", rt, err)
	}
}

// The decorator passes the store conformance suite, with a live (empty) peer to ask.
func TestReadThroughConformance(t *testing.T) {
	openRT := func(open nodeFactory) func(t *testing.T) storage.Store {
		return func(t *testing.T) storage.Store {
			self, peer := open(t, "self", "us"), memoryNode(t, "peer", "us")
			return mustReadThrough(t, self.store, newSource(self, peer), newPeers(peer), "us", ReadThroughOptions{})
		}
	}
	t.Run("memory", func(t *testing.T) { storagetest.RunStoreSuite(t, openRT(memoryNode)) })
	t.Run("disk", func(t *testing.T) { storagetest.RunStoreSuite(t, openRT(diskNode)) })
}

// Reads through of many keys at once from several goroutines stay consistent.
func TestReadThroughManyKeys(t *testing.T) {
	a, b := diskNode(t, "a", "us"), diskNode(t, "b", "us")
	infos := putMany(t, a.store, "k", 200)
	rt, _ := newReadThrough(t, b, newSource(a, b), newPeers(a), nil)
	keys := slices.SortedFunc(maps.Keys(infos), compareKeys)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(keys); i += 4 {
				k := keys[i]
				got, err := read(rt, k)
				if err != nil {
					errs <- err
					return
				}
				want, _ := read(a.store, k)
				if got != want {
					errs <- errors.New("body differs for " + k.String())
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if v := readThroughCount(t, rt, "hit"); v != float64(len(infos)) {
		t.Fatalf("hits = %v, want %d", v, len(infos))
	}
	assertConverged(t, a, b)
}
