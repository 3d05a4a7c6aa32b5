package local

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// TestRefreshedBlobsSurviveEviction: blobs a client was told exist (Refresh, as
// FindMissingBlobs and GetActionResult call it) are moved forward by the eviction pass that
// drops the blobs written next to them and never read or refreshed.
func TestRefreshedBlobsSurviveEviction(t *testing.T) {
	opts := testOpts(t)
	opts.DiskBudgetBytes = 1 << 20
	opts.TargetSegmentBytes = 64 << 10
	opts.EvictInterval = 10 * time.Millisecond
	s := openStore(t, opts)
	body := func(name string) []byte {
		return storagetest.Bytes(uint64(len(name))*7919+uint64(name[len(name)-1]), 8<<10)
	}
	var vouched, control []storage.Key
	for i := range 16 {
		v, c := cas(fmt.Sprint("vouched-", i)), cas(fmt.Sprint("control-", i))
		put(t, s, v, body(v.Name))
		put(t, s, c, body(c.Name))
		vouched, control = append(vouched, v), append(control, c)
	}
	s.Refresh(vouched)
	allGone := func() bool {
		for _, k := range control {
			if _, err := s.Stat(ctx(t), k); err == nil {
				return false
			}
		}
		return true
	}
	// Write until eviction has dropped every control blob (it sat in the same segments), and
	// no further, so the budget has not cycled past the vouched blobs' new place.
	for i := 0; !allGone(); i++ {
		if i > 4096 {
			t.Fatal("eviction never dropped the control blobs")
		}
		k := cas(fmt.Sprint("filler-", i))
		put(t, s, k, body(k.Name))
		if i%8 == 7 {
			// The background evictor works between writes; give it the chance it has in
			// production, where writes do not arrive back to back.
			testsupport.WaitFor(t, "eviction within the budget", 10*time.Second, func() bool {
				return float64(s.segs.TotalBytes()) <= highWatermark*float64(opts.DiskBudgetBytes)
			})
		}
	}
	for _, k := range vouched {
		got, err := read(t, s, k)
		if err != nil || !bytes.Equal(got, body(k.Name)) {
			t.Fatalf("refreshed blob %s: %v (eviction removed a blob the client was told exists)", k.Name, err)
		}
	}
	if moved := counterValue(s.metrics.moved); moved < float64(len(vouched)) {
		t.Fatalf("eviction moved %v records forward, want at least the %d refreshed", moved, len(vouched))
	}
}

// retentionClock is a settable wall clock for the retention tests.
type retentionClock struct{ ns atomic.Int64 }

func newRetentionClock() *retentionClock {
	c := &retentionClock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *retentionClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *retentionClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// retentionOpts: namespace "app" (cas()) keeps objects an hour after their last use,
// "forever" keeps them, every other namespace two hours. The background sweep never runs on
// its own: the tests call SweepRetention.
func retentionOpts(t *testing.T, clock *retentionClock) Options {
	opts := testOpts(t)
	opts.Now = clock.now
	opts.Retention = &RetentionOptions{
		MaxAge: func(ns string) time.Duration {
			switch ns {
			case "app":
				return time.Hour
			case "forever":
				return 0
			}
			return 2 * time.Hour
		},
		SweepInterval: time.Hour,
	}
	return opts
}

func sweep(t *testing.T, s *Store) RetentionStats {
	t.Helper()
	st, err := s.SweepRetention(ctx(t))
	if err != nil {
		t.Fatalf("SweepRetention: %v", err)
	}
	return st
}

func mustBeExpired(t *testing.T, s *Store, keys ...storage.Key) {
	t.Helper()
	for _, k := range keys {
		if _, err := read(t, s, k); !errors.Is(err, storage.ErrExpired) || !isNotFound(err) {
			t.Errorf("%s: read gives %v, want an expired miss", k.Name, err)
		}
	}
	missing, err := s.FindMissing(ctx(t), keys)
	if err != nil || len(missing) != len(keys) {
		t.Errorf("FindMissing of expired keys = %v, %v; want all missing", missing, err)
	}
	for i, e := range s.Expired(keys) {
		if !e {
			t.Errorf("Expired(%s) = false", keys[i].Name)
		}
	}
}

func mustBeKept(t *testing.T, s *Store, keys ...storage.Key) {
	t.Helper()
	for _, k := range keys {
		if _, err := s.Stat(ctx(t), k); err != nil {
			t.Errorf("%s: %v, want it kept", k.Name, err)
		}
	}
}

// TestRetentionExpiresByLastUse drives retention with an injected clock: objects go a max age
// after their last use — a read, a Refresh or the write — not after their write; per-namespace
// ages apply (0 keeps); the last uses survive a restart once a sweep persisted them; an
// expired object is not brought back by a replicated copy, only by a client's write; and
// segments left with nothing live are removed.
func TestRetentionExpiresByLastUse(t *testing.T) {
	clock := newRetentionClock()
	opts := retentionOpts(t, clock)
	opts.TargetSegmentBytes = 16 << 10
	s := openStore(t, opts)
	waitExistence(t, s)
	read1, vouched, cold := cas("read"), cas("vouched"), cas("cold")
	forever := storage.Key{Tenant: "acme", Namespace: "forever", Kind: storage.KindCAS, Name: "forever"}
	slow := storage.Key{Tenant: "acme", Namespace: "slow", Kind: storage.KindGradle, Name: "slow"}
	doc := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "doc"}
	body := func(k storage.Key) []byte { return storagetest.Bytes(uint64(len(k.Name)), 6<<10) }
	coldInfo := put(t, s, cold, body(cold)).Info
	for _, k := range []storage.Key{read1, vouched, forever, slow} {
		put(t, s, k, body(k))
	}
	put(t, s, doc, []byte(`{"entries":[]}`))

	clock.advance(30 * time.Minute)
	if _, err := read(t, s, read1); err != nil {
		t.Fatal(err)
	}
	s.Refresh([]storage.Key{vouched})
	clock.advance(45 * time.Minute) // 75 min after the writes, 45 after the uses
	st := sweep(t, s)
	if st.Expired != 2 {
		t.Errorf("first sweep expired %d objects, want 2 (cold, doc): %+v", st.Expired, st)
	}
	mustBeExpired(t, s, cold, doc)
	mustBeKept(t, s, read1, vouched, forever, slow)
	if v := counterValue(s.metrics.retentionExpired.WithLabelValues("cas")); v != 1 {
		t.Errorf("kura_storage_retention_expired_total{kind=cas} = %v, want 1", v)
	}

	// A peer's copy of an expired object is refused, whether it arrives as a push or a pull
	// (both are a Put with the origin's version), and so is a peer's stub settling on it.
	sum := coldInfo.SHA256
	res, err := s.Put(ctx(t), cold, bytes.NewReader(body(cold)), storage.PutOptions{
		Size: int64(len(body(cold))), Version: coldInfo.Version, ExpectedSHA256: &sum})
	if err != nil || res.Created {
		t.Fatalf("replicated copy of an expired object: %+v, %v; want refused", res, err)
	}
	if err := s.ApplyStub(ctx(t), coldInfo); err != nil {
		t.Fatal(err)
	}
	mustBeExpired(t, s, cold)

	// Restart: the uses persisted by the sweep count, the ones since are lost only up to the
	// next sweep (here: none).
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	opts.Dir = nil
	s = openStore(t, opts)
	waitExistence(t, s)
	clock.advance(5 * time.Minute) // 80 min after the writes, 50 after the uses
	sweep(t, s)
	mustBeKept(t, s, read1, vouched, forever, slow)
	clock.advance(15 * time.Minute) // 65 min after the uses
	sweep(t, s)
	mustBeExpired(t, s, cold, doc, read1, vouched)
	mustBeKept(t, s, forever, slow)
	clock.advance(time.Hour) // slow: 2 h 35 min after its write
	sweep(t, s)
	mustBeExpired(t, s, slow)
	mustBeKept(t, s, forever)

	// A client's write brings an expired object back (with its first writer's version).
	if res := put(t, s, cold, body(cold)); !res.Created {
		t.Fatalf("client write of an expired object: %+v, want stored", res)
	}
	if got, err := read(t, s, cold); err != nil || !bytes.Equal(got, body(cold)) {
		t.Fatalf("read after the client's write: %v", err)
	}

	// Every record of the first segments expired: the sweep removed those files.
	if counterValue(s.metrics.retired) == 0 {
		t.Error("no segment was retired although every record in the sealed ones expired")
	}
}

// TestRetentionOffLeavesEverything: without retention nothing is tracked or removed, and a
// sweep is a no-op.
func TestRetentionOffLeavesEverything(t *testing.T) {
	clock := newRetentionClock()
	opts := testOpts(t)
	opts.Now = clock.now
	s := openStore(t, opts)
	put(t, s, cas("old"), []byte("old"))
	clock.advance(10000 * time.Hour)
	if st := sweep(t, s); st != (RetentionStats{}) {
		t.Errorf("sweep without retention = %+v", st)
	}
	mustBeKept(t, s, cas("old"))
	if s.Expired([]storage.Key{cas("old")})[0] {
		t.Error("Expired without retention answered true")
	}
}

// TestRetentionSweepRunsInBackground: with a short sweep interval the loop expires an
// object without anybody calling SweepRetention.
func TestRetentionSweepRunsInBackground(t *testing.T) {
	clock := newRetentionClock()
	opts := retentionOpts(t, clock)
	opts.Retention.SweepInterval = 10 * time.Millisecond
	s := openStore(t, opts)
	put(t, s, cas("x"), []byte("x"))
	clock.advance(2 * time.Hour)
	testsupport.WaitFor(t, "the background sweep to expire x", 10*time.Second, func() bool {
		return s.Expired([]storage.Key{cas("x")})[0]
	})
	// The sweep counts itself after its last removal, so the count may trail the expiry.
	testsupport.WaitFor(t, "kura_storage_retention_sweeps_total to count the sweep", 10*time.Second, func() bool {
		return counterValue(s.metrics.retentionSweeps) > 0
	})
}
