package local

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

// waitExistence waits until the existence index is built (the first digest walk).
func waitExistence(t testing.TB, s *Store) {
	t.Helper()
	testsupport.WaitFor(t, "existence index built", 30*time.Second, func() bool {
		_, ready := s.exists.stats()
		return ready
	})
}

// assertIndexAgrees checks that FindMissing from the existence index answers exactly what
// the manifests (cache, then Pebble) answer for keys.
func assertIndexAgrees(t testing.TB, s *Store, keys []storage.Key, step string) {
	t.Helper()
	if _, ready := s.exists.stats(); !ready {
		t.Fatalf("%s: the existence index is not ready", step)
	}
	got, err := s.FindMissing(ctx(t), keys)
	if err != nil {
		t.Fatalf("%s: FindMissing: %v", step, err)
	}
	want, err := s.findMissingStored(keys)
	if err != nil {
		t.Fatalf("%s: FindMissing from the manifests: %v", step, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: the existence index answers %d missing, the manifests %d\nindex: %v\nmanifests: %v",
			step, len(got), len(want), got, want)
	}
	assertAbsentAgrees(t, s, keys, step)
}

// assertAbsentAgrees checks the writers' use of the index: it says "no manifest" (absent)
// exactly for the keys Pebble holds no manifest of (stubs and damaged ones count as
// manifests), except keys whose state it does not know, and never for a key Pebble holds.
func assertAbsentAgrees(t testing.TB, s *Store, keys []storage.Key, step string) {
	t.Helper()
	for _, k := range keys {
		ek := meta.ManifestKey(k)
		_, err := s.db.GetManifest(k)
		none := errors.Is(err, storage.ErrNotFound)
		s.exists.mu.RLock()
		_, unknown := s.exists.unknown[string(ek)]
		s.exists.mu.RUnlock()
		switch absent := s.exists.absent(ek); {
		case absent && !none:
			t.Fatalf("%s: the index says %v has no manifest, Pebble answers %v", step, k, err)
		case !absent && none && !unknown:
			t.Fatalf("%s: the index does not know that %v has no manifest", step, k)
		}
	}
}

// TestExistenceIndexAgreesWithPebble drives a store through seeded random mutations — puts,
// last-writer-wins replacements, replicated first-writer replacements, stubs from peers,
// eviction to stubs, corrupt records dropped on read, namespace deletions with and without a
// version — and after every step compares FindMissing answered by the existence index with
// FindMissing answered by Pebble, over every key ever used (and some never used). Then it
// reopens the store and compares again once the index is rebuilt.
func TestExistenceIndexAgreesWithPebble(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { testExistenceRandom(t, seed) })
	}
}

func testExistenceRandom(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 11))
	opts := testOpts(t)
	opts.TargetSegmentBytes = 32 << 10
	opts.EvictInterval = time.Hour // eviction runs only when the test asks (evictTo)
	s := openStore(t, opts)
	waitExistence(t, s)

	namespaces := []string{"app", "lib", "tools"}
	kinds := []storage.Kind{storage.KindCAS, storage.KindAC, storage.KindGradle, storage.KindKeyValue}
	var universe []storage.Key
	for _, ns := range namespaces {
		for _, kind := range kinds {
			for i := range 12 {
				universe = append(universe, storage.Key{Tenant: "acme", Namespace: ns, Kind: kind, Name: fmt.Sprintf("obj-%d", i)})
			}
		}
	}
	// Same names in another tenant, never written: they must always be missing.
	for _, k := range universe[:20] {
		k.Tenant = "other"
		universe = append(universe, k)
	}
	pick := func() storage.Key { return universe[rng.IntN(len(universe)-20)] }
	base := storage.MakeVersion(time.Now().UnixMilli(), 0)
	ops := map[string]int{}
	for step := range 400 {
		var op string
		switch r := rng.IntN(100); {
		case r < 55:
			op = "put"
			k := pick()
			body := storagetest.Bytes(rng.Uint64(), 100+rng.IntN(3000))
			if _, err := s.Put(ctx(t), k, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
				t.Fatalf("put %v: %v", k, err)
			}
		case r < 65:
			op = "replicated put"
			k := pick()
			body := storagetest.Bytes(rng.Uint64(), 100+rng.IntN(3000))
			sum := sha256.Sum256(body)
			v := base - storage.Version(rng.IntN(1000))
			if _, err := s.Put(ctx(t), k, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body)), ExpectedSHA256: &sum, Version: v}); err != nil &&
				!strings.Contains(err.Error(), storage.ErrStale.Error()) {
				t.Fatalf("replicated put %v: %v", k, err)
			}
		case r < 72:
			op = "stub from a peer"
			k := pick()
			err := s.ApplyStub(ctx(t), storage.Info{Key: k, Size: 10, SHA256: sha256.Sum256([]byte(k.Name)), Version: base + storage.Version(rng.IntN(1000))})
			if err != nil {
				t.Fatalf("apply stub %v: %v", k, err)
			}
		case r < 82:
			op = "evict"
			k := pick()
			_, _ = read(t, s, k) // some records are recently read and move forward instead
			if err := s.evictTo(ctx(t), s.segs.TotalBytes()*3/4); err != nil {
				t.Fatalf("evict: %v", err)
			}
		case r < 96:
			op = "corrupt"
			var k storage.Key
			var m meta.Manifest
			for _, i := range rng.Perm(len(universe) - 20) {
				if cur, err := s.db.GetManifest(universe[i]); err == nil && cur.InSegment() && cur.Size >= 200 {
					k, m = universe[i], cur
					break
				}
			}
			if k.Name == "" {
				continue
			}
			flipByte(t, segmentPath(s, m.Location.Segment), m.Location.Offset+m.Size/2)
			if _, err := read(t, s, k); err == nil {
				t.Fatalf("read of a corrupted %v succeeded", k)
			}
		case r < 98:
			op = "delete namespace"
			if err := s.DeleteNamespace(ctx(t), "acme", namespaces[rng.IntN(len(namespaces))], 0); err != nil {
				t.Fatal(err)
			}
		default:
			op = "delete namespace at a version"
			// Some objects are newer than the tombstone and survive it.
			if err := s.DeleteNamespace(ctx(t), "acme", namespaces[rng.IntN(len(namespaces))], base-storage.Version(rng.IntN(1000))); err != nil {
				t.Fatal(err)
			}
		}
		ops[op]++
		assertIndexAgrees(t, s, universe, fmt.Sprintf("step %d (%s)", step, op))
	}
	present, _ := s.exists.stats()
	t.Logf("operations %v; %d objects indexed", ops, present)
	if ops["evict"] == 0 || ops["corrupt"] == 0 || ops["delete namespace at a version"] == 0 {
		t.Fatalf("the random walk missed an operation: %v", ops)
	}
	if counterValue(s.metrics.dropped) == 0 {
		t.Fatal("eviction dropped no record to a stub")
	}

	// Reopen: the index is rebuilt by the first digest walk; until then Pebble answers.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	waitExistence(t, s)
	assertIndexAgrees(t, s, universe, "after reopen")
}

// TestExistenceIndexBuildRacesWrites rebuilds the index from scratch (reset, then the digest
// loop's walk) again and again while writers put, replace, stub and delete: the changes
// recorded during a walk are replayed onto its result, so each rebuilt index agrees with
// Pebble.
func TestExistenceIndexBuildRacesWrites(t *testing.T) {
	s := openStore(t, testOpts(t))
	waitExistence(t, s)
	const n = 4000
	var keys []storage.Key
	for i := range n {
		keys = append(keys, storage.Key{Tenant: "acme", Namespace: fmt.Sprintf("ns%d", i%4), Kind: storage.KindAC, Name: fmt.Sprintf("k%05d", i)})
	}
	parallel := func(fn func(w int) error) {
		t.Helper()
		errs := make(chan error, 8)
		for w := range 8 {
			go func() { errs <- fn(w) }()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	parallel(func(w int) error {
		for i := w; i < n/2; i += 8 {
			if _, err := s.Put(ctx(t), keys[i], strings.NewReader(keys[i].Name), storage.PutOptions{Size: storage.UnknownSize}); err != nil {
				return err
			}
		}
		return nil
	})
	for round := range 6 {
		s.exists.reset()
		s.kickDigestRebuild()
		parallel(func(w int) error {
			rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
			for j := 0; j < 40; j++ {
				k := keys[rng.IntN(n)]
				var err error
				switch w % 4 {
				case 0, 1:
					_, err = s.Put(ctx(t), k, strings.NewReader("v"), storage.PutOptions{Size: storage.UnknownSize})
				case 2:
					err = s.ApplyStub(ctx(t), storage.Info{Key: k, Size: 1, SHA256: sha256.Sum256(nil), Version: s.clock.Now() + 1e6})
				default:
					if j%20 == 0 {
						err = s.DeleteNamespace(ctx(t), "acme", k.Namespace, 0)
					}
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		waitExistence(t, s)
		assertIndexAgrees(t, s, keys, fmt.Sprintf("round %d", round))
	}
}

// TestExistenceUnknownOutcome: a key whose change failed with an unknown outcome is answered
// from Pebble, never from a stale "present", until its next change.
func TestExistenceUnknownOutcome(t *testing.T) {
	s := openStore(t, testOpts(t))
	waitExistence(t, s)
	k := cas("maybe")
	put(t, s, k, []byte("body"))
	ek := meta.ManifestKey(k)
	s.mcache.invalidate(ek) // what a failed commit does
	if _, ok := s.exists.unknown[string(ek)]; !ok {
		t.Fatal("invalidate did not mark the key unknown")
	}
	other := cas("absent")
	keys := []storage.Key{other, k, other}
	if m, err := s.FindMissing(ctx(t), keys); err != nil || !slices.Equal(m, []storage.Key{other, other}) {
		t.Fatalf("FindMissing = %v, %v; want the absent key twice (the unknown one is in Pebble)", m, err)
	}
	// Deleted behind the index's back (as a failed-then-applied deletion would leave it).
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteManifest(k, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	s.mcache.invalidate(ek)
	if m, err := s.FindMissing(ctx(t), keys); err != nil || !slices.Equal(m, keys) {
		t.Fatalf("FindMissing = %v, %v; want every key", m, err)
	}
	put(t, s, k, []byte("body"))
	if _, ok := s.exists.unknown[string(ek)]; ok {
		t.Fatal("a committed put left the key unknown")
	}
	assertIndexAgrees(t, s, keys, "after the put")
	// A failed namespace deletion forgets everything until the next walk rebuilds it.
	s.exists.reset()
	if m, err := s.FindMissing(ctx(t), keys); err != nil || !slices.Equal(m, []storage.Key{other, other}) {
		t.Fatalf("FindMissing after reset = %v, %v", m, err)
	}
	s.kickDigestRebuild()
	waitExistence(t, s)
	assertIndexAgrees(t, s, keys, "after the rebuild")
}
