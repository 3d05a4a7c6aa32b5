package local

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

func mkey(tenant, ns, name string) storage.Key {
	return storage.Key{Tenant: tenant, Namespace: ns, Kind: storage.KindCAS, Name: name}
}

// admitFresh admits m for key the way a reader that just read Pebble would.
func admitFresh(c *manifestCache, key storage.Key, m meta.Manifest) {
	ek := meta.ManifestKey(key)
	c.admit(key, ek, m, c.token(key, ek))
}

func cached(c *manifestCache, key storage.Key) (meta.Manifest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[string(meta.ManifestKey(key))]
	if !ok {
		return meta.Manifest{}, false
	}
	return e.m, true
}

func TestManifestCacheUnit(t *testing.T) {
	c := newManifestCache(64 << 10)
	a, b := mkey("t", "ns1", "a"), mkey("t", "ns2", "b")
	ma := meta.Manifest{Size: 10, ContentType: "x", Version: 1}
	admitFresh(c, a, ma)
	admitFresh(c, b, meta.Manifest{Size: 20, Version: 1})
	if m, ok := c.get(meta.ManifestKey(a)); !ok || m.Size != 10 {
		t.Fatalf("get after admit = %+v, %v", m, ok)
	}
	if _, ok := c.get(meta.ManifestKey(mkey("t", "ns1", "zz"))); ok {
		t.Fatal("hit on a key never admitted")
	}
	if c.hits.Load() != 1 || c.misses.Load() != 1 || testutil.ToFloat64(c.admitted) != 2 {
		t.Fatalf("hits %d misses %d admitted %v", c.hits.Load(), c.misses.Load(), testutil.ToFloat64(c.admitted))
	}

	// A writer's update replaces the entry; invalidate drops it.
	c.update(meta.ManifestKey(a), meta.Manifest{Size: 11, Version: 2})
	if m, _ := cached(c, a); m.Size != 11 {
		t.Fatalf("after update: %+v", m)
	}
	c.invalidate(meta.ManifestKey(a))
	if _, ok := cached(c, a); ok {
		t.Fatal("entry survived invalidate")
	}
	// An update of an absent key does not admit it (writes do not push read-hot entries out).
	c.update(meta.ManifestKey(a), ma)
	if _, ok := cached(c, a); ok {
		t.Fatal("update admitted an absent key")
	}

	// A reader whose Pebble read raced a change must not bring the old value back.
	ek := meta.ManifestKey(a)
	tok := c.token(a, ek)
	c.update(ek, meta.Manifest{Size: 12, Version: 3}) // the change commits after the read
	c.admit(a, ek, ma, tok)
	if _, ok := cached(c, a); ok {
		t.Fatal("a stale read was admitted after a concurrent update")
	}
	tok = c.token(a, ek)
	c.invalidateNamespace("t", "ns1") // a clean of the key's namespace
	c.admit(a, ek, ma, tok)
	if _, ok := cached(c, a); ok {
		t.Fatal("a stale read was admitted after a concurrent namespace clean")
	}
	if testutil.ToFloat64(c.skipped) != 2 {
		t.Fatalf("skipped admissions %v, want 2", testutil.ToFloat64(c.skipped))
	}

	// A namespace clean drops exactly that namespace.
	for i := range 5 {
		admitFresh(c, mkey("t", "ns1", fmt.Sprint(i)), ma)
	}
	c.invalidateNamespace("t", "ns1")
	if _, ok := cached(c, b); !ok {
		t.Fatal("cleaning ns1 dropped an entry of ns2")
	}
	if _, n := c.stats(); n != 1 {
		t.Fatalf("%d entries after cleaning ns1, want 1", n)
	}
	if _, ok := c.namespaces[nsKey{"t", "ns1"}]; ok {
		t.Fatal("an empty namespace ring was kept")
	}

	// Too large for the cache: refused, counted.
	admitFresh(c, mkey("t", "ns1", "big"), meta.Manifest{Inline: true, Body: make([]byte, 8<<10)})
	if testutil.ToFloat64(c.tooLarge) != 1 {
		t.Fatal("an entry over 1/16 of the cache was admitted")
	}
	// Admission off: nothing new comes in, what is cached stays and is still kept current.
	c.admission.Store(false)
	admitFresh(c, a, ma)
	if _, ok := cached(c, a); ok {
		t.Fatal("admitted with admission off")
	}
	c.update(meta.ManifestKey(b), meta.Manifest{Size: 21, Version: 2})
	if m, ok := cached(c, b); !ok || m.Size != 21 {
		t.Fatal("an existing entry was not updated with admission off")
	}
	c.admission.Store(true)
	if freed := c.trim(); freed <= 0 {
		t.Fatalf("trim freed %d bytes", freed)
	}
	if by, n := c.stats(); by != 0 || n != 0 || len(c.namespaces) != 0 {
		t.Fatalf("after trim: %d bytes, %d entries, %d namespaces", by, n, len(c.namespaces))
	}
}

func TestManifestCacheByteBound(t *testing.T) {
	const max = 32 << 10
	c := newManifestCache(max)
	m := meta.Manifest{Size: 1, ContentType: "application/octet-stream"}
	for i := range 2000 {
		admitFresh(c, mkey("t", fmt.Sprintf("ns%d", i%7), fmt.Sprintf("key-%04d", i)), m)
		if i == 10 {
			// Keep key-0000 hot: it must survive the churn.
			for range 3 {
				c.get(meta.ManifestKey(mkey("t", "ns0", "key-0000")))
			}
		}
		if i > 10 && i%50 == 0 {
			c.get(meta.ManifestKey(mkey("t", "ns0", "key-0000")))
		}
		if by, _ := c.stats(); by > max {
			t.Fatalf("cache holds %d bytes, bound %d", by, max)
		}
	}
	by, n := c.stats()
	if n == 0 || by < max/2 {
		t.Fatalf("cache underused: %d bytes in %d entries", by, n)
	}
	if _, ok := cached(c, mkey("t", "ns0", "key-0000")); !ok {
		t.Fatal("the hot entry was evicted by cold ones (not LRU)")
	}
	if _, ok := cached(c, mkey("t", "ns1", "key-0001")); ok {
		t.Fatal("the oldest cold entry survived")
	}
	// The per-namespace rings hold exactly the cached entries.
	total := 0
	for _, ring := range c.namespaces {
		for e := ring.nsNext; e != ring; e = e.nsNext {
			total++
		}
	}
	if total != n {
		t.Fatalf("namespace rings hold %d entries, the map %d", total, n)
	}

	off := newManifestCache(0)
	admitFresh(off, mkey("t", "n", "k"), m)
	if _, ok := off.get(meta.ManifestKey(mkey("t", "n", "k"))); ok || off.misses.Load() != 0 {
		t.Fatal("a disabled cache cached or counted")
	}
}

// checkCoherent fails if any cached manifest differs from what Pebble holds.
func checkCoherent(t *testing.T, s *Store) int {
	t.Helper()
	c := s.mcache
	c.mu.Lock()
	type pair struct {
		ek string
		m  meta.Manifest
	}
	var all []pair
	for ek, e := range c.entries {
		all = append(all, pair{ek, e.m})
	}
	c.mu.Unlock()
	for _, p := range all {
		key, err := meta.DecodeManifestKey([]byte(p.ek))
		if err != nil {
			t.Fatal(err)
		}
		cur, err := s.db.GetManifest(key)
		if err != nil {
			t.Fatalf("cache holds %s, which Pebble does not: %v", key, err)
		}
		if cur.Version != p.m.Version || cur.Location != p.m.Location || cur.Evicted != p.m.Evicted ||
			cur.SHA256 != p.m.SHA256 || !bytes.Equal(cur.Body, p.m.Body) {
			t.Fatalf("stale cache entry for %s: cached %+v, stored %+v", key, p.m, cur)
		}
	}
	return len(all)
}

// Every kind of manifest change reaches the cache: put, replace, clean, eviction, corrupt drop,
// stub from a peer.
func TestManifestCacheFollowsEveryChange(t *testing.T) {
	opts := testOpts(t)
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	s := openStore(t, opts)
	c := s.mcache

	k := cas("one")
	put(t, s, k, []byte("body one"))
	for range 3 {
		if _, err := s.Stat(ctx(t), k); err != nil {
			t.Fatal(err)
		}
	}
	if c.hits.Load() < 2 {
		t.Fatalf("repeated Stat did not hit the cache: hits %d misses %d", c.hits.Load(), c.misses.Load())
	}

	// Replace (last writer wins): readers see the new document at once.
	kv := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "doc"}
	for i := range 3 {
		body := fmt.Sprintf(`{"v":%d}`, i)
		if _, err := s.Put(ctx(t), kv, bytes.NewReader([]byte(body)), storage.PutOptions{Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		if got, err := read(t, s, kv); err != nil || string(got) != body {
			t.Fatalf("after replace %d: %q, %v", i, got, err)
		}
		checkCoherent(t, s)
	}

	// Stub from a peer (a newer version of a last-writer-wins key).
	info, err := s.Stat(ctx(t), kv)
	if err != nil {
		t.Fatal(err)
	}
	info.Version = s.clock.Now()
	if err := s.ApplyStub(ctx(t), info); err != nil {
		t.Fatal(err)
	}
	if err := statErr(t, s, kv); !isNotFound(err) {
		t.Fatalf("Stat after a newer stub = %v, want not found", err)
	}
	checkCoherent(t, s)

	// Namespace clean.
	if err := s.DeleteNamespace(ctx(t), "acme", "app", 0); err != nil {
		t.Fatal(err)
	}
	for _, key := range []storage.Key{k, kv} {
		if err := statErr(t, s, key); !isNotFound(err) {
			t.Fatalf("Stat %s after the clean = %v", key, err)
		}
	}
	checkCoherent(t, s)
	put(t, s, k, []byte("body one again"))
	if got, err := read(t, s, k); err != nil || string(got) != "body one again" {
		t.Fatalf("after re-put: %q %v", got, err)
	}

	// Corrupt drop: the record fails verification, the manifest goes, the cache with it.
	victim := cas("victim")
	body := storagetest.Bytes(5, 200<<10)
	put(t, s, victim, body)
	if _, err := s.Stat(ctx(t), victim); err != nil {
		t.Fatal(err)
	}
	m, _ := s.db.GetManifest(victim)
	flipByte(t, segmentPath(s, m.Location.Segment), m.Location.Offset+70000)
	if _, err := read(t, s, victim); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("read of a damaged record = %v", err)
	}
	if err := statErr(t, s, victim); !isNotFound(err) {
		t.Fatalf("Stat after the corrupt drop = %v (stale cache?)", err)
	}
	checkCoherent(t, s)

	// Eviction: records become stubs or move; the cache follows.
	ev := testOpts(t)
	ev.DiskBudgetBytes = 256 << 10
	ev.TargetSegmentBytes = 32 << 10
	ev.EvictInterval = 5 * time.Millisecond
	s2 := openStore(t, ev)
	for i := range 100 {
		key := cas(fmt.Sprint(i))
		put(t, s2, key, storagetest.Bytes(uint64(i), 8<<10))
		if _, err := s2.Stat(ctx(t), key); err != nil && !isNotFound(err) {
			t.Fatal(err)
		}
		if i%10 == 0 {
			// Keep some records hot so eviction moves them (a cached location changes).
			_, _ = read(t, s2, cas("0"))
		}
	}
	testsupport.WaitFor(t, "eviction below the budget", 10*time.Second, func() bool { return s2.segs.TotalBytes() <= ev.DiskBudgetBytes })
	if counterValue(s2.metrics.dropped) == 0 || counterValue(s2.metrics.moved) == 0 {
		t.Fatalf("eviction did not both move and drop (moved %v dropped %v)", counterValue(s2.metrics.moved), counterValue(s2.metrics.dropped))
	}
	// Holding the eviction lock waits out a pass still in flight (it goes on to the low
	// watermark) and keeps the next from starting while the cache is compared.
	s2.evictMu.Lock()
	n := checkCoherent(t, s2)
	s2.evictMu.Unlock()
	if n == 0 {
		t.Fatal("nothing cached: the eviction check checked nothing")
	}
	for i := range 100 {
		got, err := read(t, s2, cas(fmt.Sprint(i)))
		if err != nil && !isNotFound(err) || err == nil && !bytes.Equal(got, storagetest.Bytes(uint64(i), 8<<10)) {
			t.Fatalf("record %d after eviction: %v", i, err)
		}
	}

	// The metrics are registered and move.
	want := map[string]bool{
		"kura_manifest_cache_bytes": false, "kura_manifest_cache_entries": false,
		"kura_manifest_cache_hits_total": false, "kura_manifest_cache_misses_total": false,
		"kura_manifest_cache_admissions_total": false,
		"kura_segment_handle_cache_hits_total": false, "kura_segment_handle_cache_misses_total": false,
		"kura_segment_handle_cache_evictions_total": false, "kura_segment_handle_cache_open": false,
		"kura_fd_pool_in_use": false, "kura_fd_pool_capacity": false, "kura_fd_pool_waiters": false,
		"kura_fd_pool_timeouts_total": false,
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		if _, ok := want[mf.GetName()]; !ok {
			continue
		}
		want[mf.GetName()] = true
		for _, m := range mf.GetMetric() {
			values[mf.GetName()+labelsOf(m)] = sampleValue(mf, m)
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("metric %s is not registered", name)
		}
	}
	t.Logf("metrics: %v", values)
	if values["kura_manifest_cache_hits_total"] == 0 || values["kura_manifest_cache_entries"] == 0 ||
		values[`kura_manifest_cache_admissions_total{outcome="admitted"}`] == 0 ||
		values["kura_segment_handle_cache_hits_total"] == 0 || values["kura_fd_pool_capacity"] != 256 {
		t.Errorf("metrics do not reflect the activity: %v", values)
	}
}

func labelsOf(m *dto.Metric) string {
	if len(m.GetLabel()) == 0 {
		return ""
	}
	s := "{"
	for i, l := range m.GetLabel() {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
	}
	return s + "}"
}

func sampleValue(mf *dto.MetricFamily, m *dto.Metric) float64 {
	switch mf.GetType() {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	}
	return 0
}

// Writers, readers and namespace cleans race on a small cache (so entries churn): a reader
// never sees a body that does not match its Info, and afterwards every cached manifest equals
// Pebble's.
func TestManifestCacheNeverStale(t *testing.T) {
	opts := testOpts(t)
	opts.ManifestCacheMaxBytes = 16 << 10
	s := openStore(t, opts)
	keys := make([]storage.Key, 40)
	for i := range keys {
		keys[i] = storage.Key{Tenant: "t", Namespace: fmt.Sprintf("ns%d", i%3), Kind: storage.KindAC, Name: fmt.Sprintf("k%d", i)}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads, hits atomic.Int64
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; !stop.Load(); i++ {
				k := keys[rng.IntN(len(keys))]
				body := []byte(fmt.Sprintf("%s written by %d at %d", k.Name, w, i))
				if _, err := s.Put(ctx(t), k, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil && !errors.Is(err, storage.ErrStale) {
					t.Errorf("put: %v", err)
					return
				}
			}
		})
	}
	for r := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			for !stop.Load() {
				k := keys[rng.IntN(len(keys))]
				rd, err := s.Open(ctx(t), k, 0, -1)
				if isNotFound(err) {
					continue
				}
				if err != nil {
					t.Errorf("open: %v", err)
					return
				}
				got, err := io.ReadAll(rd)
				_ = rd.Close()
				if err != nil {
					// Eviction is off and nothing is damaged: every open record reads.
					t.Errorf("read %s: %v", k, err)
					return
				}
				if sha256.Sum256(got) != rd.Info().SHA256 {
					t.Errorf("read %s: body does not match its manifest", k)
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Go(func() {
		for i := 0; !stop.Load(); i++ {
			if err := s.DeleteNamespace(ctx(t), "t", fmt.Sprintf("ns%d", i%3), 0); err != nil {
				t.Errorf("clean: %v", err)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && !t.Failed() {
		time.Sleep(50 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	hits.Store(int64(s.mcache.hits.Load()))
	n := checkCoherent(t, s)
	for _, k := range keys {
		want, werr := s.db.GetManifest(k)
		got, gerr := s.Stat(ctx(t), k)
		switch {
		case werr != nil:
			if !isNotFound(gerr) {
				t.Fatalf("%s: Pebble has none, Stat = %+v %v", k, got, gerr)
			}
		case gerr != nil || got.Version != want.Version || got.SHA256 != want.SHA256:
			t.Fatalf("%s: Stat %+v %v, Pebble %+v", k, got, gerr, want)
		}
	}
	t.Logf("%d verified reads, %d cache hits, %d entries cached at the end", reads.Load(), hits.Load(), n)
	if reads.Load() == 0 || hits.Load() == 0 {
		t.Fatal("the race exercised nothing")
	}
}

func TestCacheAdmissionSwitchAndTrim(t *testing.T) {
	s := openStore(t, testOpts(t))
	keys := make([]storage.Key, 10)
	for i := range keys {
		keys[i] = cas(fmt.Sprint(i))
		put(t, s, keys[i], []byte(fmt.Sprint("body ", i)))
	}
	s.SetCacheAdmission(false)
	for _, k := range keys {
		if _, err := read(t, s, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, n := s.mcache.stats(); n != 0 {
		t.Fatalf("%d entries admitted with admission off", n)
	}
	if v := testutil.ToFloat64(s.mcache.skipped); v != float64(len(keys)) {
		t.Fatalf("skipped admissions %v, want %d", v, len(keys))
	}
	s.SetCacheAdmission(true)
	for _, k := range keys {
		if _, err := read(t, s, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, n := s.mcache.stats(); n != len(keys) {
		t.Fatalf("%d entries after reading %d keys with admission on", n, len(keys))
	}
	if s.segs.HandleStats().Open == 0 {
		t.Fatal("no segment handle cached after reads")
	}
	s.TrimCaches()
	if b, n := s.mcache.stats(); b != 0 || n != 0 {
		t.Fatalf("after TrimCaches: %d bytes, %d entries", b, n)
	}
	if st := s.segs.HandleStats(); st.Open != 0 {
		t.Fatalf("after TrimCaches: %+v", st)
	}
	// The store works on: caches refill.
	for i, k := range keys {
		if got, err := read(t, s, k); err != nil || string(got) != fmt.Sprint("body ", i) {
			t.Fatalf("read after trim: %q %v", got, err)
		}
	}
	if _, n := s.mcache.stats(); n != len(keys) {
		t.Fatal("the cache did not refill after a trim")
	}
}
