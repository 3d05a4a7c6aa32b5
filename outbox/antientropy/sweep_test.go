package antientropy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

var mixedKinds = []storage.Kind{storage.KindGradle, storage.KindCAS, storage.KindKeyValue, storage.KindNx, storage.KindAC, storage.KindXcode}

// putMany writes n objects named prefix-i on s with 8 writers (the disk store group-commits
// concurrent writes) and returns their infos by key.
func putMany(t *testing.T, s storage.Store, prefix string, n int) map[storage.Key]storage.Info {
	t.Helper()
	var mu sync.Mutex
	out := make(map[storage.Key]storage.Info, n)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				k := key("app", mixedKinds[i%len(mixedKinds)], fmt.Sprintf("%s-%05d", prefix, i))
				info := put(t, s, k, fmt.Sprintf("body of %s-%d %s", prefix, i, strings.Repeat("x", i%300)), 0)
				mu.Lock()
				out[k] = info
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// replicate copies objects to s with their origin's versions, as pushes would.
func replicate(t *testing.T, from, to storage.Store, infos map[storage.Key]storage.Info) {
	t.Helper()
	for k, info := range infos {
		put(t, to, k, mustRead(t, from, k), info.Version)
	}
}

func TestSweepConvergesAfterMissedWrites(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "us")
		common := putMany(t, a.store, "common", 300)
		replicate(t, a.store, b.store, common)
		missed := putMany(t, a.store, "missed", 2000)
		bOnly := putMany(t, b.store, "bonly", 20)

		src := newSource(a, b)
		swB, regB := newSweeper(t, b, src, newPeers(a), func(c *Config) { c.PageSize = 64 })
		res := sweep(t, swB)
		if res.ObjectsPulled != len(missed) || res.Peers != 1 || res.PeersFailed != 0 || res.Conflicts != 0 {
			t.Fatalf("B's sweep: %+v, want %d objects pulled", res, len(missed))
		}
		if res.BucketsCompared != 1<<storage.DigestBucketBits || res.BucketsDiffering == 0 {
			t.Fatalf("B's sweep compared %d buckets, %d differing", res.BucketsCompared, res.BucketsDiffering)
		}
		if got := len(src.fetchLog()); got != len(missed) {
			t.Fatalf("B fetched %d objects, want exactly the %d it missed", got, len(missed))
		}
		for k, info := range missed {
			got, err := b.store.Stat(context.Background(), k)
			if err != nil || got.Version != info.Version || got.SHA256 != info.SHA256 || got.ContentType != info.ContentType {
				t.Fatalf("B's copy of %s: %+v, %v; want %+v", k, got, err, info)
			}
		}
		if v := testutil.ToFloat64(swB.metrics.pulled); v != float64(len(missed)) {
			t.Fatalf("objects_repaired_total{how=pulled} = %v", v)
		}
		if v := testutil.ToFloat64(swB.metrics.runs.WithLabelValues("ok")); v != 1 {
			t.Fatalf("runs_total{result=ok} = %v", v)
		}
		if n, err := testutil.GatherAndCount(regB, "kura_antientropy_sweep_duration_seconds"); err != nil || n != 1 {
			t.Fatalf("sweep duration histogram: %d series, %v", n, err)
		}

		// A pulls what only B had; then both hold the same set.
		swA, _ := newSweeper(t, a, src, newPeers(b), func(c *Config) { c.PageSize = 7 })
		if res := sweep(t, swA); res.ObjectsPulled != len(bOnly) {
			t.Fatalf("A's sweep: %+v, want %d pulled", res, len(bOnly))
		}
		assertConverged(t, a, b)
		src.resetFetchLog()
		if res := sweep(t, swB); res.BucketsDiffering != 0 || res.ObjectsPulled != 0 {
			t.Fatalf("sweep after convergence: %+v", res)
		}
		if n := len(src.fetchLog()); n != 0 {
			t.Fatalf("converged sweep fetched %d objects", n)
		}
	})
}

func TestBootstrapEmptyNode(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "eu")
		onA := putMany(t, a.store, "a", 150)
		replicate(t, a.store, b.store, onA)
		putMany(t, b.store, "b", 50)
		// B holds an old namespace that A cleaned; B never heard of the clean.
		old := key("old", storage.KindGradle, "stale")
		oldInfo := put(t, b.store, old, "written before the clean", 0)
		put(t, a.store, old, "written before the clean", oldInfo.Version)
		if err := a.store.DeleteNamespace(context.Background(), "acme", "old", 0); err != nil {
			t.Fatal(err)
		}
		// A evicted one object it once held.
		stubInfo := storage.Info{Key: key("app", storage.KindNx, "evicted"), Size: 10, SHA256: [32]byte{1}, Version: oldInfo.Version}
		if err := a.store.ApplyStub(context.Background(), stubInfo); err != nil {
			t.Fatal(err)
		}

		c := open(t, "c", "us")
		src := newSource(a, b, c)
		swC, _ := newSweeper(t, c, src, newPeers(b, a), nil)
		res := sweep(t, swC)
		if res.TombstonesApplied != 1 || res.StubsApplied != 1 || res.ObjectsPulled != 200 || res.Peers != 2 {
			t.Fatalf("bootstrap: %+v", res)
		}
		if !swC.Bootstrapped() {
			t.Fatal("Bootstrapped() is false after a successful sweep")
		}
		for _, f := range src.fetchLog() {
			if strings.HasSuffix(f, " stale") {
				t.Fatalf("bootstrap fetched %q, which a tombstone covers", f)
			}
		}
		assertMissing(t, c.store, old)
		assertMissing(t, c.store, stubInfo.Key)
		tombs, err := c.store.Tombstones(context.Background())
		if err != nil || len(tombs) != 1 || tombs[0].Namespace != "old" {
			t.Fatalf("C's tombstones: %+v, %v", tombs, err)
		}
		// Same region first: A (us) was swept before B (eu), so B had little left to give.
		if log := src.fetchLog(); !strings.HasPrefix(log[0], "a ") {
			t.Fatalf("first fetch went to %q, want the same-region peer a", log[0])
		}

		for _, n := range []*node{a, b} {
			sw, _ := newSweeper(t, n, src, newPeers(a, b, c), nil)
			sweep(t, sw)
		}
		assertConverged(t, a, c)
		assertConverged(t, b, c)
		assertMissing(t, b.store, old)
	})
}

func TestTombstonesFirstNoResurrection(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b, c := open(t, "a", "us"), open(t, "b", "us"), open(t, "c", "us")
		x := key("app", storage.KindGradle, "x")
		// Explicit versions: independent clocks order writes within one millisecond arbitrarily.
		base := storage.MakeVersion(1_700_000_000_000, 0)
		put(t, a.store, x, "older than the clean", base+1)
		if err := b.store.DeleteNamespace(context.Background(), "acme", "app", base+2); err != nil {
			t.Fatal(err)
		}
		y := key("app", storage.KindGradle, "y")
		put(t, a.store, y, "newer than the clean", base+3)
		src := newSource(a, b, c)

		// C lists A before B, yet learns B's tombstone before pulling anything.
		swC, _ := newSweeper(t, c, src, newPeers(a, b), nil)
		res := sweep(t, swC)
		if res.TombstonesApplied != 1 || res.ObjectsPulled != 1 {
			t.Fatalf("C's sweep: %+v", res)
		}
		assertMissing(t, c.store, x)
		if got := mustRead(t, c.store, y); got != "newer than the clean" {
			t.Fatalf("C's y = %q", got)
		}

		// B, which cleaned the namespace, must not take x back from A.
		src.resetFetchLog()
		swB, _ := newSweeper(t, b, src, newPeers(a), nil)
		if res := sweep(t, swB); res.ObjectsPulled != 1 {
			t.Fatalf("B's sweep: %+v", res)
		}
		if log := src.fetchLog(); !slices.Equal(log, []string{"a y"}) {
			t.Fatalf("B fetched %v, want only y", log)
		}
		assertMissing(t, b.store, x)

		// A learns the clean and drops x.
		swA, _ := newSweeper(t, a, src, newPeers(b, c), nil)
		if res := sweep(t, swA); res.TombstonesApplied != 1 {
			t.Fatalf("A's sweep: %+v", res)
		}
		assertMissing(t, a.store, x)
		if v := testutil.ToFloat64(swA.metrics.tombstones); v != 1 {
			t.Fatalf("tombstones_applied_total = %v", v)
		}
		assertConverged(t, a, b)
		assertConverged(t, a, c)
	})
}

func TestLastWriterWinsNewerVersion(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "us")
		kv := key("app", storage.KindKeyValue, "doc")
		ac := key("app", storage.KindAC, "action")
		v1 := storage.MakeVersion(1_700_000_000_000, 0)
		v2 := storage.MakeVersion(1_700_000_000_000, 1)
		put(t, a.store, kv, `{"v":"old"}`, v1)
		put(t, a.store, ac, "old result", v2)
		put(t, b.store, kv, `{"v":"new"}`, v2)
		put(t, b.store, ac, "new result", v1) // older on B: A's stays
		src := newSource(a, b)

		swA, _ := newSweeper(t, a, src, newPeers(b), nil)
		if res := sweep(t, swA); res.ObjectsPulled != 1 || res.Conflicts != 0 {
			t.Fatalf("A's sweep: %+v", res)
		}
		if got := mustRead(t, a.store, kv); got != `{"v":"new"}` {
			t.Fatalf("A's keyvalue = %q, want the newer write", got)
		}
		if got := mustRead(t, a.store, ac); got != "old result" {
			t.Fatalf("A's action result = %q, want its own newer write", got)
		}
		swB, _ := newSweeper(t, b, src, newPeers(a), nil)
		if res := sweep(t, swB); res.ObjectsPulled != 1 {
			t.Fatalf("B's sweep: %+v", res)
		}
		if got := mustRead(t, b.store, ac); got != "old result" {
			t.Fatalf("B's action result = %q", got)
		}
		info, err := b.store.Stat(context.Background(), ac)
		if err != nil || info.Version != v2 {
			t.Fatalf("B's action result version %v, %v; want %v", info.Version, err, v2)
		}
		assertConverged(t, a, b)
	})
}

// TestImmutableCopiesConvergeOnFirstWriter: immutable objects written with different bodies
// on three nodes converge, by sweeps alone, on the copy with the lowest version (equal
// versions: the lower SHA-256); each node that replaces its copy counts one conflict, and no
// node ever goes back to a body it held before. Last-writer-wins objects written at the same
// version on two nodes settle on the higher SHA-256 (storage.Supersedes).
func TestImmutableCopiesConvergeOnFirstWriter(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b, c := open(t, "a", "us"), open(t, "b", "us"), open(t, "c", "us")
		nodes := []*node{a, b, c}
		base := storage.MakeVersion(1_700_000_000_000, 0)
		type write struct {
			body string
			v    storage.Version
		}
		copyOfWrite := func(w write) storage.Copy {
			return storage.Copy{Version: w.v, SHA256: sha256.Sum256([]byte(w.body))}
		}
		kinds := []storage.Kind{storage.KindGradle, storage.KindNx, storage.KindMetro, storage.KindXcode, storage.KindModule, storage.KindCAS}
		contested := func(i int) storage.Key { return key("app", kinds[i%len(kinds)], fmt.Sprintf("contested-%d", i)) }
		// Per key, the write each node accepted, as pushes lost or not yet delivered would
		// leave them; versions are spread so that some tie and each node wins some keys.
		const keys = 30
		writes := make([][3]write, keys)
		want := make([]string, keys)
		for i := range keys {
			winner := -1
			for j, n := range nodes {
				w := write{body: fmt.Sprintf("body of %s from %s", contested(i).Name, n.Name), v: base + storage.Version((i*7+j*5)%3)}
				writes[i][j] = w
				put(t, n.store, contested(i), w.body, w.v)
				if winner < 0 || storage.Replaces(contested(i).Kind, copyOfWrite(w), copyOfWrite(writes[i][winner])) {
					winner = j
				}
			}
			want[i] = writes[i][winner].body
		}
		kv := key("app", storage.KindKeyValue, "same-version")
		v := storage.MakeVersion(1_700_000_000_000, 7)
		onA := put(t, a.store, kv, "x", v)
		onB := put(t, b.store, kv, "y", v)
		kvWinner := "x"
		if storage.Supersedes(onB.Version, onB.SHA256, onA.Version, onA.SHA256) {
			kvWinner = "y"
		}

		src := newSource(a, b, c)
		history := make([]map[string][]string, len(nodes)) // node → key → bodies held, in order
		observe := func() {
			for j, n := range nodes {
				if history[j] == nil {
					history[j] = map[string][]string{}
				}
				for i := range keys {
					k := contested(i)
					got := mustRead(t, n.store, k)
					h := history[j][k.Name]
					if len(h) > 0 && h[len(h)-1] == got {
						continue
					}
					if slices.Contains(h, got) {
						t.Fatalf("%s went back to a body of %s it held before: %q after %q", n.Name, k.Name, got, h)
					}
					history[j][k.Name] = append(h, got)
				}
			}
		}
		observe()
		conflicts := 0
		sweepers := make([]*Sweeper, len(nodes))
		for j, n := range nodes {
			var others []*node
			for _, o := range nodes {
				if o != n {
					others = append(others, o)
				}
			}
			sweepers[j], _ = newSweeper(t, n, src, newPeers(others...), nil)
		}
		// Every node sweeps every peer once; then once more, to see that nothing moves.
		for j := range nodes {
			res := sweep(t, sweepers[j])
			conflicts += res.Conflicts
			observe()
		}
		for j := range nodes {
			if res := sweep(t, sweepers[j]); res.Conflicts != 0 || res.ObjectsPulled != 0 {
				t.Fatalf("%s's second sweep: %+v; want nothing left to settle", nodes[j].Name, res)
			}
		}
		for i := range keys {
			k := contested(i)
			for _, n := range nodes {
				if got := mustRead(t, n.store, k); got != want[i] {
					t.Fatalf("%s holds %q for %s, want the first writer's %q", n.Name, got, k.Name, want[i])
				}
			}
		}
		// A conflict is counted each time a node replaces its copy: at least once on each of
		// the two losing nodes of a key, and never more often than there are better copies
		// (a node may step to a better copy, then to the best, within one sweep).
		most := 0
		for i := range keys {
			for j := range nodes {
				for jj := range nodes {
					if storage.Replaces(contested(i).Kind, copyOfWrite(writes[i][jj]), copyOfWrite(writes[i][j])) {
						most++
					}
				}
			}
		}
		if conflicts < 2*keys || conflicts > most {
			t.Fatalf("sweeps counted %d conflicts, want between %d (two losing nodes per key) and %d", conflicts, 2*keys, most)
		}
		var total float64
		for _, sw := range sweepers {
			total += testutil.ToFloat64(sw.metrics.conflicts)
		}
		if total != float64(conflicts) {
			t.Fatalf("kura_antientropy_conflicts_total sums to %v, the results to %d", total, conflicts)
		}
		for _, n := range nodes[:2] {
			if got := mustRead(t, n.store, kv); got != kvWinner {
				t.Fatalf("%s's same-version keyvalue = %q, want %q on every node", n.Name, got, kvWinner)
			}
		}
		assertConverged(t, a, b)
		assertConverged(t, a, c)
	})
}

// TestImmutableStubsConverge: an evicted stub is no body, so a peer's different body fills
// it (the key does not stay missing here because an older copy was evicted), a stub never
// displaces a held body, and two nodes holding different stubs keep the first writer's.
func TestImmutableStubsConverge(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "us")
		base := storage.MakeVersion(1_700_000_000_000, 0)
		stub := func(n *node, k storage.Key, body string, v storage.Version) {
			t.Helper()
			info := storage.Info{Key: k, Size: int64(len(body)), SHA256: sha256.Sum256([]byte(body)), Version: v}
			if err := n.store.ApplyStub(context.Background(), info); err != nil {
				t.Fatal(err)
			}
		}
		// A evicted the first writer's body; B holds a later, different one.
		filled := key("app", storage.KindGradle, "filled")
		stub(a, filled, "first", base)
		put(t, b.store, filled, "later", base+5)
		// A holds a body; B only a stub of an earlier write.
		held := key("app", storage.KindNx, "held")
		put(t, a.store, held, "held body", base+5)
		stub(b, held, "evicted earlier body", base)
		// Both evicted different copies.
		stubs := key("app", storage.KindMetro, "stubs")
		stub(a, stubs, "a's", base+3)
		stub(b, stubs, "b's", base+2)

		src := newSource(a, b)
		swA, _ := newSweeper(t, a, src, newPeers(b), nil)
		swB, _ := newSweeper(t, b, src, newPeers(a), nil)
		if res := sweep(t, swA); res.ObjectsPulled != 1 || res.StubsApplied != 1 || res.Conflicts != 0 {
			t.Fatalf("A's sweep: %+v; want the body for its stub and B's earlier stub", res)
		}
		if res := sweep(t, swB); res.ObjectsPulled != 1 || res.StubsApplied != 0 {
			t.Fatalf("B's sweep: %+v; want A's body for its stub", res)
		}
		if got := mustRead(t, a.store, filled); got != "later" {
			t.Fatalf("A's filled stub serves %q", got)
		}
		for _, n := range []*node{a, b} {
			if got := mustRead(t, n.store, held); got != "held body" {
				t.Fatalf("%s serves %q for the held key", n.Name, got)
			}
			assertMissing(t, n.store, stubs)
		}
		assertConverged(t, a, b)
		for _, sw := range []*Sweeper{swA, swB} {
			if res := sweep(t, sw); res.BucketsDiffering != 0 {
				t.Fatalf("another sweep still finds %d differing buckets", res.BucketsDiffering)
			}
		}
	})
}

func TestStubsPropagate(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b, c := open(t, "a", "us"), open(t, "b", "us"), open(t, "c", "us")
		k := key("app", storage.KindXcode, "evicted-on-a")
		info := put(t, c.store, k, "the body C still holds", 0)
		// A evicted it (it keeps the stub); B never had it.
		if err := a.store.ApplyStub(context.Background(), info); err != nil {
			t.Fatal(err)
		}
		src := newSource(a, b, c)
		swB, _ := newSweeper(t, b, src, newPeers(a), nil)
		res := sweep(t, swB)
		if res.StubsApplied != 1 || res.ObjectsPulled != 0 {
			t.Fatalf("B's sweep: %+v", res)
		}
		assertMissing(t, b.store, k)
		assertConverged(t, a, b)
		if v := testutil.ToFloat64(swB.metrics.stubs); v != 1 {
			t.Fatalf("objects_repaired_total{how=stub} = %v", v)
		}
		// The stub counts as held: a peer with the body has nothing to give.
		swB2, _ := newSweeper(t, b, src, newPeers(c), nil)
		if res := sweep(t, swB2); res.BucketsDiffering != 0 || res.ObjectsPulled != 0 {
			t.Fatalf("sweep against the holder: %+v", res)
		}
		// And the holder does not lose it because of anyone's stub.
		swC, _ := newSweeper(t, c, src, newPeers(a, b), nil)
		sweep(t, swC)
		if got := mustRead(t, c.store, k); got != "the body C still holds" {
			t.Fatalf("C's body = %q", got)
		}
	})
}

func TestFailingPeerIsSkipped(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		bad, good, self := open(t, "bad", "us"), open(t, "good", "us"), open(t, "self", "us")
		onBad := putMany(t, bad.store, "bad", 10)
		fromGood := putMany(t, good.store, "good", 40)
		src := newSource(bad, good, self)
		src.setFail(func(method, addr string, _ storage.Key) error {
			if addr == bad.Addr && method == "BucketDigests" {
				return fmt.Errorf("%s: %w: connection reset", method, storage.ErrUnavailable)
			}
			return nil
		})
		sw, _ := newSweeper(t, self, src, newPeers(bad, good), nil)
		res, err := sw.SweepNow(testCtx(t))
		if err == nil || !strings.Contains(err.Error(), "sweep peer bad") {
			t.Fatalf("SweepNow error = %v, want one naming the failed peer", err)
		}
		if res.Peers != 2 || res.PeersFailed != 1 || res.ObjectsPulled != len(fromGood) {
			t.Fatalf("result %+v", res)
		}
		if v := testutil.ToFloat64(sw.metrics.runs.WithLabelValues("partial")); v != 1 {
			t.Fatalf("runs_total{result=partial} = %v", v)
		}

		// A peer that fails mid-sweep: pulls stop, the next sweep finishes the job.
		more := putMany(t, good.store, "more", 30)
		var fetched sync.Mutex
		n := 0
		src.setFail(func(method, addr string, _ storage.Key) error {
			if method != "FetchObject" {
				return nil
			}
			fetched.Lock()
			defer fetched.Unlock()
			if n++; n > 5 {
				return fmt.Errorf("fetch: %w: peer went away", storage.ErrUnavailable)
			}
			return nil
		})
		res, err = sw.SweepNow(testCtx(t))
		if err == nil || res.PeersFailed != 2 || res.ObjectsPulled > 5 {
			t.Fatalf("mid-sweep failure: %+v, %v", res, err)
		}
		if v := testutil.ToFloat64(sw.metrics.runs.WithLabelValues("failed")); v != 1 {
			t.Fatalf("runs_total{result=failed} = %v", v)
		}
		src.setFail(nil)
		res = sweep(t, sw)
		if res.PeersFailed != 0 || res.ObjectsPulled == 0 {
			t.Fatalf("retry sweep: %+v", res)
		}
		for _, set := range []map[storage.Key]storage.Info{onBad, fromGood, more} {
			for k := range set {
				mustRead(t, self.store, k)
			}
		}
	})
}

func TestStalledPeerTimesOut(t *testing.T) {
	a, self := memoryNode(t, "a", "us"), memoryNode(t, "self", "us")
	putMany(t, a.store, "a", 3)
	src := newSource(a, self)
	src.stall[a.Addr] = make(chan struct{}) // never released: every fetch hangs
	sw, _ := newSweeper(t, self, src, newPeers(a), func(c *Config) { c.PeerTimeout = 50 * time.Millisecond })
	res, err := sw.SweepNow(testCtx(t))
	if err == nil || !errors.Is(err, errStalled) || res.PeersFailed != 1 {
		t.Fatalf("SweepNow = %+v, %v; want a stall error", res, err)
	}
}

// unorderedSource serves listings in reverse key order.
type unorderedSource struct{ *directSource }

func (u unorderedSource) ListObjects(ctx context.Context, addr string, bits uint32, buckets []uint32, after []byte, limit int) ([]storage.ObjectSummary, []byte, error) {
	page, next, err := u.directSource.ListObjects(ctx, addr, bits, buckets, after, limit)
	slices.Reverse(page)
	return page, next, err
}

func TestListingOutOfOrderIsRejected(t *testing.T) {
	a, self := memoryNode(t, "a", "us"), memoryNode(t, "self", "us")
	putMany(t, a.store, "a", 20)
	sw, _ := newSweeper(t, self, unorderedSource{newSource(a)}, newPeers(a), nil)
	_, err := sw.SweepNow(testCtx(t))
	if err == nil || !strings.Contains(err.Error(), "not in key order") {
		t.Fatalf("SweepNow error = %v, want an order violation", err)
	}
}

func TestPauseHoldsSweep(t *testing.T) {
	a, self := memoryNode(t, "a", "us"), memoryNode(t, "self", "us")
	putMany(t, a.store, "a", 10)
	src := newSource(a, self)
	sw, _ := newSweeper(t, self, src, newPeers(a), nil)
	sw.SetPaused(true)
	if v := testutil.ToFloat64(sw.metrics.paused); v != 1 {
		t.Fatalf("paused gauge = %v", v)
	}
	type out struct {
		res Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := sw.SweepNow(testCtx(t))
		done <- out{res, err}
	}()
	testsupport.WaitFor(t, "the sweep to block on the pause", 30*time.Second, func() bool { return sw.waiting.Load() == 1 })
	if n := len(src.fetchLog()); n != 0 {
		t.Fatalf("%d fetches while paused", n)
	}
	sw.SetPaused(false)
	o := <-done
	if o.err != nil || o.res.ObjectsPulled != 10 {
		t.Fatalf("sweep after resume: %+v, %v", o.res, o.err)
	}
}

func TestRunBootstrapsWhenPeersAppear(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		a, b := open(t, "a", "us"), open(t, "b", "us")
		first := key("app", storage.KindGradle, "first")
		put(t, a.store, first, "before b joined", 0)
		peers := newPeers()
		sw, reg := newSweeper(t, b, newSource(a, b), peers, func(c *Config) {
			c.PeerPoll = 5 * time.Millisecond
			c.Interval = 20 * time.Millisecond
		})
		startRun(t, sw)
		if sw.Bootstrapped() {
			t.Fatal("bootstrapped without peers")
		}
		peers.set(a)
		testsupport.WaitFor(t, "bootstrap from the new peer", 30*time.Second, func() bool { _, err := read(b.store, first); return err == nil })
		testsupport.WaitFor(t, "Bootstrapped()", 30*time.Second, sw.Bootstrapped)
		// Later writes arrive by the periodic sweep.
		later := key("app", storage.KindGradle, "later")
		put(t, a.store, later, "after bootstrap", 0)
		testsupport.WaitFor(t, "a periodic sweep", 30*time.Second, func() bool { _, err := read(b.store, later); return err == nil })
		if n, err := testutil.GatherAndCount(reg, "kura_antientropy_runs_total"); err != nil || n == 0 {
			t.Fatalf("runs_total series: %d, %v", n, err)
		}
	})
}

func TestRunTwiceIsRefused(t *testing.T) {
	self := memoryNode(t, "self", "us")
	sw, _ := newSweeper(t, self, newSource(), newPeers(), func(c *Config) { c.PeerPoll = time.Millisecond })
	startRun(t, sw)
	testsupport.WaitFor(t, "Run to start", 30*time.Second, sw.running.Load)
	if err := sw.Run(context.Background()); err == nil {
		t.Fatal("a second Run was accepted")
	}
}

func TestNewValidatesConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "no local store") ||
		!strings.Contains(err.Error(), "no peer source") || !strings.Contains(err.Error(), "no peer list") {
		t.Fatalf("New(empty) = %v, want every missing part named", err)
	}
	self := memoryNode(t, "self", "us")
	if _, err := New(Config{Local: self.store, Source: newSource(), Peers: newPeers(), PageSize: -1}); err == nil ||
		!strings.Contains(err.Error(), "negative page size") {
		t.Fatalf("New(negative page size) = %v", err)
	}
	reg := prometheus.NewRegistry()
	cfg := Config{Local: self.store, Source: newSource(), Peers: newPeers(), Registerer: reg}
	if _, err := New(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg); err == nil {
		t.Fatal("a second sweeper registered the same metrics on one registry")
	}
}

func TestMetricNames(t *testing.T) {
	self := memoryNode(t, "self", "us")
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Local: self.store, Source: newSource(), Peers: newPeers(), Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	mustReadThrough(t, self.store, newSource(), newPeers(), "us", ReadThroughOptions{Registerer: reg})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{
		"kura_antientropy_runs_total", "kura_antientropy_buckets_compared_total",
		"kura_antientropy_buckets_differing_total", "kura_antientropy_objects_repaired_total",
		"kura_antientropy_tombstones_applied_total", "kura_antientropy_sweep_duration_seconds",
		"kura_antientropy_conflicts_total", "kura_antientropy_paused", "kura_read_through_total",
		"kura_corrupt_repairs_total", "kura_corrupt_repairs_pending",
	} {
		if !got[name] {
			t.Errorf("metric %s is not exposed", name)
		}
	}
}
