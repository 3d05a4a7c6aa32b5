package antientropy

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
)

// TestReadThroughLeavesExpiredKeysAlone: node b expired an object by its retention rule while
// peer a still holds it. Neither b's reads, nor its Stat, nor its FindMissing (which would
// vouch for a's copy and pull it) bring it back, and a's copy arriving as a replicated Put
// is refused; an object b never had is still read through.
func TestReadThroughLeavesExpiredKeysAlone(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	a := openDisk(t, "a", "us")
	s, err := local.Open(local.Options{
		DataDir:    t.TempDir(),
		Registerer: prometheus.NewRegistry(),
		Metadata:   meta.Options{BlockCacheBytes: 4 << 20, MemTableBytes: 4 << 20},
		Now:        clock,
		Retention:  &local.RetentionOptions{MaxAge: func(string) time.Duration { return time.Hour }, SweepInterval: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	b := &node{Peer: Peer{Name: "b", Region: "us", Addr: "b:7443"}, store: s, disk: s}

	k := key("app", storage.KindCAS, "expired-on-b")
	info := put(t, a.store, k, "kept on a", 0)
	if _, err := b.store.Put(testCtx(t), k, strings.NewReader("kept on a"), storage.PutOptions{Size: 9, Version: info.Version, ExpectedSHA256: &info.SHA256}); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(2 * time.Hour))
	if st, err := s.SweepRetention(testCtx(t)); err != nil || st.Expired != 1 {
		t.Fatalf("sweep on b: %+v, %v", st, err)
	}
	rt, _ := newReadThrough(t, b, newSource(a, b), newPeers(a), nil)
	if _, err := rt.Open(testCtx(t), k, 0, -1); !errors.Is(err, storage.ErrExpired) {
		t.Fatalf("Open of an expired key through read-through: %v, want expired", err)
	}
	if _, err := rt.Stat(testCtx(t), k); !errors.Is(err, storage.ErrExpired) {
		t.Fatalf("Stat of an expired key through read-through: %v, want expired", err)
	}
	other := key("app", storage.KindCAS, "only-on-a")
	put(t, a.store, other, "only on a", 0)
	missing, err := rt.FindMissing(testCtx(t), []storage.Key{k, other})
	if err != nil || len(missing) != 1 || missing[0] != k {
		t.Fatalf("FindMissing = %v, %v; want only the expired key missing (a vouches for the other)", missing, err)
	}
	if res, err := b.store.Put(testCtx(t), k, strings.NewReader("kept on a"), storage.PutOptions{Size: 9, Version: info.Version, ExpectedSHA256: &info.SHA256}); err != nil || res.Created {
		t.Fatalf("a's copy pushed to b: %+v, %v; want refused", res, err)
	}
	if got := mustRead(t, rt, other); got != "only on a" {
		t.Fatalf("read through of a key b never had: %q", got)
	}
	if _, err := s.Stat(testCtx(t), k); !errors.Is(err, storage.ErrExpired) {
		t.Fatalf("b after all that: %v, want still expired", err)
	}
}
