package local

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

// A replicated copy that is the cluster's first writer replaces a stored immutable body in
// one batch: the manifest moves to the new record (the old segment no longer indexes the key,
// so eviction reclaims it like a replaced last-writer-wins body), the replication hook joins
// the batch and learns it was replicated, the digests swap the entries, the manifest cache and
// ETag show the new body at once, and a reopen keeps it.
func TestReplicatedFirstWriterReplacesImmutableBody(t *testing.T) {
	opts := testOpts(t)
	opts.TargetSegmentBytes = 32 << 10 // each body below fills a segment: the replacement lands in another
	var mu sync.Mutex
	var changes []storage.Change
	opts.Observer = commitFunc(func(b *meta.Batch, c storage.Change) error {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, c)
		return b.PutOutbox("peer", uint64(len(changes)), []byte(c.Info.Key.Name))
	})
	s := openStore(t, opts)
	key := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindGradle, Name: "task-output"}
	mine, theirs, later := storagetest.Bytes(1, 40<<10), storagetest.Bytes(2, 41<<10), storagetest.Bytes(3, 42<<10)
	local := put(t, s, key, mine)
	old, err := s.db.GetManifest(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := read(t, s, key); err != nil { // cached now
		t.Fatal(err)
	}

	replicated := func(body []byte, v storage.Version) storage.PutResult {
		t.Helper()
		sum := sha256.Sum256(body)
		res, err := s.Put(ctx(t), key, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body)), ExpectedSHA256: &sum, Version: v})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// Another node's earlier write of the key wins.
	early := local.Info.Version - 1000
	res := replicated(theirs, early)
	if !res.Created || res.Info.Version != early || res.Info.SHA256 != sha256.Sum256(theirs) {
		t.Fatalf("replicated first writer = %+v; want Created at %v", res, early)
	}
	r, err := s.Open(ctx(t), key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Info().ETag() == local.Info.ETag() || r.Info() != res.Info {
		t.Fatalf("Open after the replace serves %+v (ETag %s), want %+v", r.Info(), r.Info().ETag(), res.Info)
	}
	_ = r.Close()
	if got, err := read(t, s, key); err != nil || !bytes.Equal(got, theirs) {
		t.Fatalf("read after the replace: %d bytes, %v; want the first writer's body", len(got), err)
	}
	checkCoherent(t, s)
	assertDigestsMatchListing(t, s)
	cur, err := s.db.GetManifest(key)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Location.Segment == old.Location.Segment {
		t.Fatalf("the replacement landed in the old body's segment %d; the test needs another", old.Location.Segment)
	}
	if has, err := s.db.SegmentHasRecords(ctx(t), old.Location.Segment); err != nil || has {
		t.Fatalf("the old body's segment still indexes records (%v, %v): eviction would not reclaim it", has, err)
	}
	if keys, _, err := s.db.SegmentRecords(ctx(t), cur.Location.Segment, nil, 10); err != nil || len(keys) != 1 || keys[0] != key {
		t.Fatalf("new segment index = %v, %v; want [%v]", keys, err, key)
	}

	// A later replicated copy and a local write change nothing; neither reaches the hook.
	if res := replicated(later, early+1); res.Created {
		t.Fatalf("later replicated copy = %+v; want not created", res)
	}
	if res := put(t, s, key, later); res.Created {
		t.Fatalf("local write over the first writer = %+v; want not created", res)
	}
	mu.Lock()
	if len(changes) != 2 || changes[0].Replicated || !changes[1].Replicated || !changes[1].Replaced || changes[1].Version != early {
		t.Fatalf("changes = %+v; want the local write, then the replicated replacement at %v", changes, early)
	}
	mu.Unlock()
	entries, err := s.db.ScanOutbox(ctx(t), "peer", 0, 10)
	if err != nil || len(entries) != 2 {
		t.Fatalf("outbox holds %d entries (%v); the hook's additions must commit with each change", len(entries), err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	info, err := s.Stat(ctx(t), key)
	if err != nil || info.Version != early {
		t.Fatalf("after reopen Stat = %+v, %v; want version %v", info, err, early)
	}
	if got, err := read(t, s, key); err != nil || !bytes.Equal(got, theirs) {
		t.Fatalf("after reopen: %d bytes, %v; want the first writer's body", len(got), err)
	}
	assertDigestsMatchListing(t, s)
}

// A batch of replicated writes (a peer's PushBatch) is judged per item exactly as replicated
// Puts are: each committed item keeps its origin's version and is reported to the hook as
// replicated, an immutable first writer replaces a stored body, a later copy of an immutable
// key or an older last-writer-wins copy does not, and a copy older than its namespace's
// tombstone is stale; the batch's winners commit together (one metadata batch) and survive a
// reopen.
func TestPutBatchReplicatedItemsFollowTheConflictRule(t *testing.T) {
	opts := testOpts(t)
	var mu sync.Mutex
	replicated := map[string]bool{}
	batchOf := map[string]*meta.Batch{}
	opts.Observer = commitFunc(func(b *meta.Batch, c storage.Change) error {
		mu.Lock()
		defer mu.Unlock()
		replicated[c.Info.Key.Name] = c.Replicated
		batchOf[c.Info.Key.Name] = b
		return nil
	})
	s := openStore(t, opts)
	ac := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindAC, Name: "result"}
	stored := put(t, s, cas("mine"), []byte("my local body"))
	storedAC := put(t, s, ac, []byte("local result"))
	gone := storage.Key{Tenant: "acme", Namespace: "cleaned", Kind: storage.KindCAS, Name: "old"}
	tomb := stored.Info.Version + 10
	if err := s.DeleteNamespace(ctx(t), "acme", "cleaned", tomb); err != nil {
		t.Fatal(err)
	}

	item := func(key storage.Key, body string, v storage.Version) storage.PutItem {
		sum := sha256.Sum256([]byte(body))
		return storage.PutItem{Key: key, Body: []byte(body), Opts: storage.PutOptions{Size: int64(len(body)), Limit: int64(len(body)), ExpectedSHA256: &sum, Version: v}}
	}
	v := stored.Info.Version
	items := []storage.PutItem{
		item(cas("fresh"), "a fresh body", v+5),
		item(cas("mine"), "the first writer", v-1000), // earlier elsewhere: replaces
		item(cas("late"), "late", v+1),
		item(ac, "an older result", storedAC.Info.Version-1), // older: loses
		item(gone, "before the clean", tomb-1),               // under the tombstone: stale
	}
	items = append(items, item(cas("late"), "another late body", v+2)) // same key twice: after the batch
	res := s.PutBatch(ctx(t), items)
	want := []struct {
		created bool
		err     error
		version storage.Version
	}{
		{true, nil, v + 5}, {true, nil, v - 1000}, {true, nil, v + 1},
		{false, nil, storedAC.Info.Version}, {false, storage.ErrStale, 0},
		{false, nil, v + 1}, // the immutable key keeps its earlier copy
	}
	for i, w := range want {
		r := res[i]
		if r.Created != w.created || (w.err == nil) != (r.Err == nil) || w.err != nil && !errors.Is(r.Err, w.err) || w.err == nil && r.Info.Version != w.version {
			t.Errorf("item %d (%v): created %v at %v, err %v; want created %v at %v, err %v", i, items[i].Key, r.Created, r.Info.Version, r.Err, w.created, w.version, w.err)
		}
	}
	mu.Lock()
	for _, name := range []string{"fresh", "mine", "late"} {
		if !replicated[name] {
			t.Errorf("the hook saw %s as a local write; a replicated item must not be queued again", name)
		}
		if batchOf[name] != batchOf["fresh"] {
			t.Errorf("%s committed apart from the batch's other winners", name)
		}
	}
	mu.Unlock()
	check := func(s *Store) {
		t.Helper()
		for key, body := range map[storage.Key]string{cas("fresh"): "a fresh body", cas("mine"): "the first writer", cas("late"): "late", ac: "local result"} {
			if got, err := read(t, s, key); err != nil || string(got) != body {
				t.Errorf("%v reads %q, %v; want %q", key, got, err, body)
			}
		}
		if _, err := read(t, s, gone); !isNotFound(err) {
			t.Errorf("the stale item is readable: %v", err)
		}
		assertDigestsMatchListing(t, s)
	}
	check(s)
	checkCoherent(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	check(openStore(t, opts))
}
