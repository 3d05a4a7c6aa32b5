package local

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

func bucketDigests(t testing.TB, s storage.Index) ([]byte, uint64) {
	t.Helper()
	d, n, err := s.BucketDigests(ctx(t), storage.DigestBucketBits)
	if err != nil {
		t.Fatalf("BucketDigests: %v", err)
	}
	return d, n
}

// listEverything pages through the whole index.
func listEverything(t testing.TB, s storage.Index) []storage.ObjectSummary {
	t.Helper()
	var out []storage.ObjectSummary
	var token []byte
	for {
		page, next, err := s.ListObjects(ctx(t), storage.DigestBucketBits, nil, token, 500)
		if err != nil {
			t.Fatalf("ListObjects: %v", err)
		}
		out = append(out, page...)
		if next == nil {
			return out
		}
		token = next
	}
}

// referenceDigests builds the digests of the given objects from scratch.
func referenceDigests(t testing.TB, infos []storage.Info) []byte {
	t.Helper()
	var table meta.DigestTable
	for _, info := range infos {
		table.AddObject(info)
	}
	d, err := table.Digests(storage.DigestBucketBits)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// assertDigestsMatchListing checks the incremental digests against a table built from a
// walk over everything the store lists (objects and stubs).
func assertDigestsMatchListing(t testing.TB, s *Store) {
	t.Helper()
	var infos []storage.Info
	for _, sum := range listEverything(t, s) {
		infos = append(infos, sum.Info)
	}
	d, n := bucketDigests(t, s)
	if n != uint64(len(infos)) || !bytes.Equal(d, referenceDigests(t, infos)) {
		t.Fatalf("incremental digests (%d objects) differ from a rebuild over the %d listed objects", n, len(infos))
	}
}

// writeMix gives a store a bit of everything: segment objects, inline keyvalue documents
// replaced several times, action-cache entries, an applied stub and a cleaned namespace.
func writeMix(t *testing.T, s *Store) {
	t.Helper()
	for i := range 30 {
		kind := []storage.Kind{storage.KindCAS, storage.KindGradle, storage.KindAC, storage.KindKeyValue}[i%4]
		ns := []string{"app", "lib", "tmp"}[i%3]
		key := storage.Key{Tenant: "acme", Namespace: ns, Kind: kind, Name: fmt.Sprintf("k%d", i)}
		put(t, s, key, storagetest.Bytes(uint64(i), 100+i))
		if kind.LastWriterWins() {
			put(t, s, key, storagetest.Bytes(uint64(i)+1000, 50))
		}
	}
	stub := storage.Info{Key: cas("peer-evicted"), Size: 7, SHA256: [32]byte{1}, Version: storage.MakeVersion(time.Now().UnixMilli()-1000, 0)}
	if err := s.ApplyStub(ctx(t), stub); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNamespace(ctx(t), "acme", "tmp", 0); err != nil {
		t.Fatal(err)
	}
}

func TestDigestsRecomputedAtOpenEqualIncremental(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	writeMix(t, s)
	before, n := bucketDigests(t, s)
	if n == 0 {
		t.Fatal("no objects counted")
	}
	assertDigestsMatchListing(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	after, n2 := bucketDigests(t, s)
	if n2 != n || !bytes.Equal(before, after) {
		t.Fatalf("after reopen: %d objects (was %d), digests equal: %v", n2, n, bytes.Equal(before, after))
	}
	if v := counterValue(s.metrics.digestBuilds); v != 1 {
		t.Fatalf("kura_storage_digest_builds_total = %v after Open, want 1", v)
	}
}

// Two disk stores and the memory fake that received the same writes in different orders
// agree on their digests: the definition is shared and the XOR does not care about order.
func TestDigestsAgreeAcrossStoresAndOrders(t *testing.T) {
	type op struct {
		key   storage.Key
		body  []byte
		v     storage.Version
		clean bool
	}
	base := storage.MakeVersion(time.Now().Add(-time.Hour).UnixMilli(), 0)
	var ops []op
	for i := range 60 {
		kind := storage.Kinds[i%len(storage.Kinds)]
		key := storage.Key{Tenant: "acme", Namespace: []string{"a", "b"}[i%2], Kind: kind, Name: fmt.Sprint(i)}
		ops = append(ops, op{key: key, body: storagetest.Bytes(uint64(i), 64), v: base + storage.Version(i)})
		if kind.LastWriterWins() {
			ops = append(ops, op{key: key, body: storagetest.Bytes(uint64(i)+99, 32), v: base + storage.Version(500+i)})
		}
	}
	ops = append(ops, op{key: storage.Key{Tenant: "acme", Namespace: "b"}, v: base + 300, clean: true})
	apply := func(s storage.Store, ops []op) {
		for _, o := range ops {
			var err error
			if o.clean {
				err = s.DeleteNamespace(ctx(t), o.key.Tenant, o.key.Namespace, o.v)
			} else {
				_, err = s.Put(ctx(t), o.key, bytes.NewReader(o.body), storage.PutOptions{Size: int64(len(o.body)), Version: o.v})
			}
			if err != nil && !errors.Is(err, storage.ErrStale) {
				t.Fatalf("%+v: %v", o, err)
			}
		}
	}
	rng := rand.New(rand.NewPCG(7, 7))
	shuffled := func() []op {
		c := append([]op(nil), ops...)
		rng.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
		return c
	}
	a, b := openStore(t, testOpts(t)), openStore(t, testOpts(t))
	mem := storagetest.NewMemory()
	apply(a, ops)
	apply(b, shuffled())
	apply(mem, shuffled())
	da, na := bucketDigests(t, a)
	for name, other := range map[string]storage.Index{"second disk store": b, "memory fake": mem} {
		d, n := bucketDigests(t, other)
		if n != na || !bytes.Equal(d, da) {
			t.Fatalf("%s: %d objects vs %d, digests equal: %v", name, n, na, bytes.Equal(d, da))
		}
	}
}

func TestDigestChangesOnCorruptDropNotOnEviction(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	keep := put(t, s, cas("keep"), []byte("keep")).Info
	victim := put(t, s, cas("victim"), storagetest.Bytes(5, 100<<10)).Info
	d1, _ := bucketDigests(t, s)
	if want := referenceDigests(t, []storage.Info{keep, victim}); !bytes.Equal(d1, want) {
		t.Fatal("digests differ from the reference before the damage")
	}
	m, err := s.db.GetManifest(victim.Key)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, segmentPath(s, m.Location.Segment), m.Location.Offset+70000)
	if _, err := read(t, s, victim.Key); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("read of the damaged record = %v, want ErrCorrupt", err)
	}
	d2, n := bucketDigests(t, s)
	if n != 1 || !bytes.Equal(d2, referenceDigests(t, []storage.Info{keep})) {
		t.Fatalf("after the corrupt drop: %d objects; the dropped record must leave the digests", n)
	}
	if sum := listEverything(t, s); len(sum) != 1 || sum[0].Info != keep {
		t.Fatalf("listing after the corrupt drop = %+v, want only %v (no stub: a peer's copy must look missing)", sum, keep.Key)
	}
	if n := len(s.Corrupted()); n != 1 {
		t.Fatalf("Corrupted holds %d keys, want 1", n)
	}
}

func TestEvictionKeepsStubs(t *testing.T) {
	opts := testOpts(t)
	opts.DiskBudgetBytes = 512 << 10
	opts.TargetSegmentBytes = 64 << 10
	opts.EvictInterval = 10 * time.Millisecond
	var commits atomic.Int64
	opts.Observer = commitFunc(func(*meta.Batch, storage.Change) error { commits.Add(1); return nil })
	s := openStore(t, opts)
	const n = 150
	body := func(i int) []byte { return storagetest.Bytes(uint64(i), 8<<10) }
	var infos []storage.Info
	for i := range n {
		infos = append(infos, put(t, s, cas(fmt.Sprint(i)), body(i)).Info)
	}
	testsupport.WaitFor(t, "eviction below the budget", 10*time.Second, func() bool { return s.segs.TotalBytes() <= opts.DiskBudgetBytes })
	// A background pass may still be running on towards its low watermark: hold the eviction
	// lock while comparing listings with reads, so the store cannot change between the two.
	settled := s
	settled.evictMu.Lock()
	locked := true
	defer func() { // a failed check must not leave Close waiting on the evictor
		if locked {
			settled.evictMu.Unlock()
		}
	}()
	if got := commits.Load(); got != n {
		t.Fatalf("OnCommit ran %d times for %d writes: eviction must not replicate anything", got, n)
	}
	// Eviction never changes the digests: every object still counts, evicted or not.
	d, count := bucketDigests(t, s)
	if count != n || !bytes.Equal(d, referenceDigests(t, infos)) {
		t.Fatalf("digests after eviction: %d objects, equal to the written set: %v", count, bytes.Equal(d, referenceDigests(t, infos)))
	}
	sums := listEverything(t, s)
	if len(sums) != n {
		t.Fatalf("listed %d objects, want %d (stubs included)", len(sums), n)
	}
	var evicted []storage.Key
	for _, sum := range sums {
		if sum.Evicted {
			evicted = append(evicted, sum.Info.Key)
		}
		err := statErr(t, s, sum.Info.Key)
		if sum.Evicted != isNotFound(err) {
			t.Fatalf("%v: listed evicted=%v but Stat says %v", sum.Info.Key, sum.Evicted, err)
		}
	}
	if len(evicted) == 0 || len(evicted) == n {
		t.Fatalf("%d of %d objects evicted; the test needs some of each", len(evicted), n)
	}
	t.Logf("%d of %d objects evicted to stubs; %d segment bytes", len(evicted), n, s.segs.TotalBytes())
	missing, err := s.FindMissing(ctx(t), evicted)
	if err != nil || len(missing) != len(evicted) {
		t.Fatalf("FindMissing of the evicted keys = %d of %d, %v", len(missing), len(evicted), err)
	}
	if err := openErr(t, s, evicted[0]); !isNotFound(err) {
		t.Fatalf("Open of an evicted key = %v, want ErrNotFound", err)
	}
	// A stub has no segment-index entry: no segment still names an evicted key.
	for _, si := range s.segs.Segments() {
		keys, _, err := s.db.SegmentRecords(ctx(t), uint64(si.ID), nil, 10000)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if m, err := s.db.GetManifest(k); err == nil && m.Evicted {
				t.Fatalf("segment %s still indexes the stub %v", si.ID, k)
			}
		}
	}

	settled.evictMu.Unlock() // before Close, which waits for the background evictor
	locked = false

	// Stubs survive a restart, and so do the digests.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	opts.DiskBudgetBytes = 0 // room to bring one back
	s = openStore(t, opts)
	d2, count2 := bucketDigests(t, s)
	if count2 != n || !bytes.Equal(d2, d) {
		t.Fatal("digests changed across the restart")
	}
	if err := statErr(t, s, evicted[0]); !isNotFound(err) {
		t.Fatalf("evicted key readable after restart: %v", err)
	}
	// A new Put fills the stub (first writer wins treats it as absent); same body, same digest.
	i, err := strconv.Atoi(evicted[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	res := put(t, s, evicted[0], body(i))
	if !res.Created {
		t.Fatal("Put over a stub was not created")
	}
	if got, err := read(t, s, evicted[0]); err != nil || !bytes.Equal(got, body(i)) {
		t.Fatalf("refilled object: %v", err)
	}
	if d3, count3 := bucketDigests(t, s); count3 != n || !bytes.Equal(d3, d) {
		t.Fatal("filling a stub with the same body changed the digests")
	}
	assertDigestsMatchListing(t, s)
}

// Rebuilds racing with every kind of write end with exactly the digests a quiet rebuild
// computes: the gate puts each commit wholly before or wholly after a rebuild's view.
func TestDigestRebuildRacingWrites(t *testing.T) {
	s := openStore(t, testOpts(t))
	bucketDigests(t, s) // first build done
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var writes atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ns := fmt.Sprintf("ns%d", rng.IntN(3))
				var err error
				switch r := rng.IntN(300); {
				case r == 0:
					err = s.DeleteNamespace(ctx(t), "acme", ns, 0)
				case r < 45:
					err = s.ApplyStub(ctx(t), storage.Info{
						Key:  storage.Key{Tenant: "acme", Namespace: ns, Kind: storage.KindAC, Name: fmt.Sprint(rng.IntN(50))},
						Size: 1, SHA256: [32]byte{byte(i)}, Version: storage.MakeVersion(time.Now().UnixMilli(), 0),
					})
				default:
					kind := []storage.Kind{storage.KindCAS, storage.KindKeyValue, storage.KindAC}[rng.IntN(3)]
					key := storage.Key{Tenant: "acme", Namespace: ns, Kind: kind, Name: fmt.Sprint(rng.IntN(50))}
					_, err = s.Put(ctx(t), key, strings.NewReader(fmt.Sprint(i)), storage.PutOptions{Size: storage.UnknownSize})
				}
				if err != nil && !errors.Is(err, storage.ErrStale) {
					t.Errorf("write: %v", err)
					return
				}
				writes.Add(1)
			}
		}()
	}
	// Rebuild over and over while the writers run, until both enough rebuilds and enough
	// writes happened.
	rebuilds := 0
	deadline := time.Now().Add(30 * time.Second)
	for rebuilds < 5 || writes.Load() < 300 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d rebuilds and %d writes in 30s", rebuilds, writes.Load())
		}
		if err := s.rebuildDigests(ctx(t)); err != nil {
			t.Fatal(err)
		}
		rebuilds++
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	incremental, n := bucketDigests(t, s)
	if err := s.rebuildDigests(ctx(t)); err != nil {
		t.Fatal(err)
	}
	rebuilt, n2 := bucketDigests(t, s)
	if n != n2 || !bytes.Equal(incremental, rebuilt) {
		t.Fatalf("after %d racing writes: incremental %d objects vs rebuilt %d, %d buckets differ",
			writes.Load(), n, n2, countDiff(incremental, rebuilt))
	}
	assertDigestsMatchListing(t, s)
	t.Logf("%d writes raced %d rebuilds; %d objects", writes.Load(), rebuilds, n)
}

func countDiff(a, b []byte) int {
	n := 0
	for i := 0; i+32 <= len(a) && i+32 <= len(b); i += 32 {
		if !bytes.Equal(a[i:i+32], b[i:i+32]) {
			n++
		}
	}
	return n
}

// A narrow bucket filter over a store larger than one call's scan budget returns a short
// page with a token instead of scanning everything, and paging still finds every object once.
func TestListObjectsBoundsWorkPerCall(t *testing.T) {
	s := openStore(t, testOpts(t))
	const n = minListScan + 2000
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= n; i = next.Add(1) {
				key := storage.Key{Tenant: "acme", Namespace: "big", Kind: storage.KindKeyValue, Name: fmt.Sprintf("%06d", i)}
				if _, err := s.Put(ctx(t), key, strings.NewReader("{}"), storage.PutOptions{Size: 2}); err != nil {
					t.Errorf("put: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	target := meta.DigestBucket(meta.ManifestKey(storage.Key{Tenant: "acme", Namespace: "big", Kind: storage.KindKeyValue, Name: "000001"}), storage.DigestBucketBits)
	want := 0
	for i := 1; i <= n; i++ {
		k := storage.Key{Tenant: "acme", Namespace: "big", Kind: storage.KindKeyValue, Name: fmt.Sprintf("%06d", i)}
		if meta.DigestBucket(meta.ManifestKey(k), storage.DigestBucketBits) == target {
			want++
		}
	}
	var token []byte
	seen := map[storage.Key]bool{}
	calls, shortWithToken := 0, 0
	for {
		page, tok, err := s.ListObjects(ctx(t), storage.DigestBucketBits, []uint32{target}, token, 100)
		if err != nil {
			t.Fatal(err)
		}
		calls++
		for _, sum := range page {
			if seen[sum.Info.Key] {
				t.Fatalf("%v listed twice", sum.Info.Key)
			}
			seen[sum.Info.Key] = true
		}
		if tok == nil {
			break
		}
		if len(page) < 100 {
			shortWithToken++
		}
		token = tok
	}
	if len(seen) != want {
		t.Fatalf("listed %d objects of bucket %d, want %d", len(seen), target, want)
	}
	if shortWithToken == 0 || calls < 2 {
		t.Fatalf("%d calls, %d short pages with a token: the scan budget did not bound a call", calls, shortWithToken)
	}
}

func TestChangeTellsLocalFromReplicated(t *testing.T) {
	opts := testOpts(t)
	var mu sync.Mutex
	var changes []storage.Change
	opts.Observer = commitFunc(func(b *meta.Batch, c storage.Change) error {
		mu.Lock()
		changes = append(changes, c)
		seq := uint64(len(changes))
		mu.Unlock()
		return b.PutOutbox("peer", seq, []byte(c.Info.Key.Name))
	})
	s := openStore(t, opts)
	past := storage.MakeVersion(time.Now().Add(-time.Minute).UnixMilli(), 0)
	put(t, s, cas("local"), []byte("l"))
	if _, err := s.Put(ctx(t), cas("pushed"), strings.NewReader("p"), storage.PutOptions{Size: 1, Version: past}); err != nil {
		t.Fatal(err)
	}
	stub := storage.Info{Key: cas("stubbed"), Size: 1, SHA256: [32]byte{9}, Version: past + 1}
	if err := s.ApplyStub(ctx(t), stub); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx(t), cas("stubbed"), strings.NewReader("s"), storage.PutOptions{Size: 1, Version: past + 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNamespace(ctx(t), "acme", "other", past+5); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNamespace(ctx(t), "acme", "mine", 0); err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(changes))
	for i, c := range changes {
		got[i] = fmt.Sprintf("%d %s%s/%s replicated=%v replaced=%v", c.Op, c.Info.Key.Name, c.Tenant, c.Namespace, c.Replicated, c.Replaced)
	}
	want := []string{
		fmt.Sprintf("%d local/ replicated=false replaced=false", storage.ChangePut),
		fmt.Sprintf("%d pushed/ replicated=true replaced=false", storage.ChangePut),
		fmt.Sprintf("%d stubbed/ replicated=true replaced=false", storage.ChangePut), // the fill; ApplyStub itself is silent
		fmt.Sprintf("%d acme/other replicated=true replaced=false", storage.ChangeDeleteNamespace),
		fmt.Sprintf("%d acme/mine replicated=false replaced=false", storage.ChangeDeleteNamespace),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if changes[1].Version != past || changes[3].Version != past+5 {
		t.Fatalf("versions not carried: %v, %v", changes[1].Version, changes[3].Version)
	}
	// The outbox reads its entries from the data directory's database.
	entries, err := s.dir.DB().ScanOutbox(ctx(t), "peer", 0, 100)
	if err != nil || len(entries) != len(want) {
		t.Fatalf("ScanOutbox through DataDir.DB = %d entries, %v; want %d", len(entries), err, len(want))
	}
}

func TestBucketDigestsAfterClose(t *testing.T) {
	s := openStore(t, testOpts(t))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.BucketDigests(ctx(t), storage.DigestBucketBits); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("BucketDigests after Close = %v, want ErrUnavailable", err)
	}
	if _, _, err := s.ListObjects(ctx(t), storage.DigestBucketBits, nil, nil, 10); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("ListObjects after Close = %v, want ErrUnavailable", err)
	}
}

// The rebuild spreads decoding over workers in batches of digestWalkBatch: a store spanning
// several batches rebuilds to exactly the incremental digests.
func TestDigestRebuildOverManyBatches(t *testing.T) {
	s := openStore(t, testOpts(t))
	n := 2*digestWalkBatch + 77
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 32 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				kind := []storage.Kind{storage.KindCAS, storage.KindKeyValue, storage.KindAC}[i%3]
				key := storage.Key{Tenant: "acme", Namespace: fmt.Sprintf("ns%d", i%5), Kind: kind, Name: fmt.Sprint(i)}
				if _, err := s.Put(ctx(t), key, strings.NewReader(fmt.Sprint(i)), storage.PutOptions{Size: storage.UnknownSize}); err != nil {
					t.Errorf("put: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	incremental, count := bucketDigests(t, s)
	if count != uint64(n) {
		t.Fatalf("%d objects counted, want %d", count, n)
	}
	if err := s.rebuildDigests(ctx(t)); err != nil {
		t.Fatal(err)
	}
	rebuilt, count2 := bucketDigests(t, s)
	if count2 != count || !bytes.Equal(incremental, rebuilt) {
		t.Fatalf("rebuilt %d objects (incremental %d), %d buckets differ", count2, count, countDiff(incremental, rebuilt))
	}
	assertDigestsMatchListing(t, s)
}
