package antientropy

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

// FindMissing answers locally, asks each peer once (in one batched call) about what is
// missing here only, reports what a peer holds as present and pulls it in the background.
func TestReadThroughFindMissingAsksPeers(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b, self := open(t, "a", "us"), open(t, "b", "eu"), open(t, "self", "us")
		k1, k2, k3, k4 := key("app", storage.KindCAS, "k1"), key("app", storage.KindCAS, "k2"),
			key("app", storage.KindCAS, "k3"), key("app", storage.KindCAS, "k4")
		origin := put(t, a.store, k1, "one", 0)
		put(t, b.store, k2, "two", 0)
		put(t, self.store, k3, "three", 0)
		src := newSource(a, b, self)
		rt, _ := newReadThrough(t, self, src, newPeers(a, b), nil)
		defer rt.Close()

		missing, err := rt.FindMissing(testCtx(t), []storage.Key{k1, k2, k3, k4})
		if err != nil || !slices.Equal(missing, []storage.Key{k4}) {
			t.Fatalf("FindMissing = %v, %v; want [k4]", missing, err)
		}
		if finds := src.findLog(); len(finds) != 2 {
			t.Fatalf("FindObjects calls %v, want one per peer", finds)
		}
		// Pulled in the background with the origin's version, from the peer that has it.
		// Asked of FindMissing, not Stat: a disk store's existence index learns a commit just
		// after Pebble holds it (as the pull's Put returns), so Stat can see it first.
		testsupport.WaitFor(t, "the vouched-for blobs to be pulled", 30*time.Second, func() bool {
			missing, err := self.store.FindMissing(context.Background(), []storage.Key{k1, k2})
			return err == nil && len(missing) == 0
		})
		if info, err := self.store.Stat(context.Background(), k1); err != nil || info.Version != origin.Version {
			t.Fatalf("pulled copy %+v, %v; want version %v", info, err, origin.Version)
		}
		if log := src.fetchLog(); !slices.Equal(sorted(log), []string{"a k1", "b k2"}) {
			t.Fatalf("fetches %v", log)
		}
		if v := testutil.ToFloat64(rt.vouched.WithLabelValues("present")); v != 2 {
			t.Fatalf("kura_read_through_find_total{present} = %v", v)
		}
		// A key no peer holds is counted missing, also when no peer holds anything asked.
		if missing, err := rt.FindMissing(testCtx(t), []storage.Key{k4}); err != nil || !slices.Equal(missing, []storage.Key{k4}) {
			t.Fatalf("FindMissing(k4) = %v, %v", missing, err)
		}
		if v := testutil.ToFloat64(rt.vouched.WithLabelValues("missing")); v != 2 {
			t.Fatalf("kura_read_through_find_total{missing} = %v, want 2 (k4 twice)", v)
		}

		// All present locally now: no peer is asked.
		src.mu.Lock()
		src.finds = nil
		src.mu.Unlock()
		if missing, err := rt.FindMissing(testCtx(t), []storage.Key{k1, k2, k3}); err != nil || len(missing) != 0 {
			t.Fatalf("FindMissing = %v, %v", missing, err)
		}
		if finds := src.findLog(); len(finds) != 0 {
			t.Fatalf("peers asked %v although nothing is missing locally", finds)
		}
	})
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// Without peers FindMissing is the local call.
func TestReadThroughFindMissingWithoutPeers(t *testing.T) {
	self := memoryNode(t, "self", "us")
	src := newSource(self)
	rt, _ := newReadThrough(t, self, src, newPeers(), nil)
	defer rt.Close()
	k := key("app", storage.KindCAS, "x")
	if missing, err := rt.FindMissing(testCtx(t), []storage.Key{k}); err != nil || !slices.Equal(missing, []storage.Key{k}) {
		t.Fatalf("FindMissing = %v, %v", missing, err)
	}
	if len(src.findLog()) != 0 {
		t.Fatal("FindObjects called without peers")
	}
}

// A peer that never answers cannot stall FindMissing: after FindTimeout its keys are
// reported missing and the other peer's answer stands.
func TestReadThroughFindMissingHangingPeer(t *testing.T) {
	hung, good, self := memoryNode(t, "hung", "us"), memoryNode(t, "good", "eu"), memoryNode(t, "self", "us")
	kHung, kGood := key("app", storage.KindCAS, "on-hung"), key("app", storage.KindCAS, "on-good")
	put(t, hung.store, kHung, "h", 0)
	put(t, good.store, kGood, "g", 0)
	src := newSource(hung, good, self)
	never := make(chan struct{})
	defer close(never)
	src.findStall[hung.Addr] = never
	rt, _ := newReadThrough(t, self, src, newPeers(hung, good), func(o *ReadThroughOptions) { o.FindTimeout = 100 * time.Millisecond })
	defer rt.Close()

	missing, err := rt.FindMissing(testCtx(t), []storage.Key{kHung, kGood})
	if err != nil || !slices.Equal(missing, []storage.Key{kHung}) {
		t.Fatalf("FindMissing = %v, %v; want only the hung peer's key missing", missing, err)
	}
	if v := testutil.ToFloat64(rt.vouched.WithLabelValues("peer_failed")); v != 1 {
		t.Fatalf("kura_read_through_find_total{peer_failed} = %v", v)
	}
}

// A reader of a key that a background pull is fetching joins that pull: one fetch.
func TestReadThroughPullSharedWithReader(t *testing.T) {
	a, self := memoryNode(t, "a", "us"), memoryNode(t, "self", "us")
	k := key("app", storage.KindCAS, "shared")
	put(t, a.store, k, "shared body", 0)
	src := newSource(a, self)
	release := make(chan struct{})
	src.stall[a.Addr] = release
	rt, _ := newReadThrough(t, self, src, newPeers(a), func(o *ReadThroughOptions) { o.PullSlots = 1 })
	defer rt.Close()

	if missing, err := rt.FindMissing(testCtx(t), []storage.Key{k}); err != nil || len(missing) != 0 {
		t.Fatalf("FindMissing = %v, %v", missing, err)
	}
	testsupport.WaitFor(t, "the pull to reach the peer", 30*time.Second, func() bool { return src.blocked() == 1 })
	got := make(chan string, 1)
	go func() { got <- mustRead(t, rt, k) }()
	testsupport.WaitFor(t, "the reader to join the pull", 30*time.Second, func() bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		f := rt.flights[k]
		return f != nil && f.waiters == 1
	})
	close(release)
	if body := <-got; body != "shared body" {
		t.Fatalf("read %q", body)
	}
	if log := src.fetchLog(); len(log) != 1 {
		t.Fatalf("fetches %v, want one shared", log)
	}
}

// Close cancels every flight, a reader's and a background pull, both stuck on a peer that
// never answers, and returns only when their goroutines have ended; later misses are local.
func TestReadThroughCloseEndsFlights(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	hung, self := memoryNode(t, "hung", "us"), memoryNode(t, "self", "us")
	kRead, kPull := key("app", storage.KindCAS, "read"), key("app", storage.KindCAS, "pull")
	put(t, hung.store, kRead, "r", 0)
	put(t, hung.store, kPull, "p", 0)
	src := newSource(hung, self)
	never := make(chan struct{})
	defer close(never)
	src.stall[hung.Addr] = never // FetchObject never answers
	rt, _ := newReadThrough(t, self, src, newPeers(hung), func(o *ReadThroughOptions) { o.PeerTimeout = time.Hour })

	if missing, err := rt.FindMissing(testCtx(t), []storage.Key{kPull}); err != nil || len(missing) != 0 {
		t.Fatalf("FindMissing = %v, %v", missing, err)
	}
	var reader sync.WaitGroup
	var readErr error
	reader.Go(func() {
		r, err := rt.Open(context.Background(), kRead, 0, -1) // a reader with no deadline at all
		if err == nil {
			_, _ = io.Copy(io.Discard, r)
			r.Close()
		}
		readErr = err
	})
	testsupport.WaitFor(t, "both flights to hang on the peer", 30*time.Second, func() bool { return src.blocked() == 2 })

	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	reader.Wait()
	if !errors.Is(readErr, storage.ErrNotFound) {
		t.Fatalf("reader after Close: %v, want the local answer (not found)", readErr)
	}
	goleak.VerifyNone(t, ignore)

	// Closed: a miss is answered locally, nothing new starts.
	if _, err := rt.Open(testCtx(t), kPull, 0, -1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open after Close: %v", err)
	}
	if missing, err := rt.FindMissing(testCtx(t), []storage.Key{kPull}); err != nil || len(missing) != 0 {
		// FindMissing still asks (no flight is started); the answer is the peers'.
		t.Fatalf("FindMissing after Close = %v, %v", missing, err)
	}
	rt.mu.Lock()
	n := len(rt.flights)
	rt.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d flights after Close", n)
	}
	if err := rt.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
