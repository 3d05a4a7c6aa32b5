package local

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
	"github.com/kuracache/kura/storage/storagetest"
)

// TestPutBatchItemsStandAlone: one batch mixing every case; each item gets what Put would
// answer, bad items fail alone, and every created item's outbox entry is in the one batch
// that committed the items' manifests.
func TestPutBatchItemsStandAlone(t *testing.T) {
	o := testOpts(t)
	o.SpillThreshold = 64 << 10
	var mu sync.Mutex
	batches := map[*meta.Batch][]string{}
	seq := uint64(0)
	o.Observer = commitFunc(func(b *meta.Batch, c storage.Change) error {
		mu.Lock()
		defer mu.Unlock()
		batches[b] = append(batches[b], c.Info.Key.Name)
		seq++
		return b.PutOutbox("peer", seq, []byte(c.Info.Key.Name))
	})
	s := openStore(t, o)
	ac := func(name string) storage.Key {
		return storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindAC, Name: name}
	}
	put(t, s, cas("old"), []byte("stored before"))
	put(t, s, ac("result"), []byte("old result"))
	mu.Lock()
	clear(batches)
	mu.Unlock()

	body := func(i int) []byte { return storagetest.Bytes(uint64(i), 1000+i) }
	sumOf := func(b []byte) *[32]byte { s := sha256.Sum256(b); return &s }
	wrong := sha256.Sum256([]byte("something else"))
	large := storagetest.Bytes(99, 200<<10) // above the spill threshold: written with Put
	items := []storage.PutItem{
		{Key: cas("a"), Body: body(0), Opts: storage.PutOptions{Size: 1000, ExpectedSHA256: sumOf(body(0))}},
		{Key: cas("old"), Body: []byte("another body"), Opts: storage.PutOptions{Size: storage.UnknownSize}},
		{Key: cas("bad-digest"), Body: body(2), Opts: storage.PutOptions{Size: 1002, ExpectedSHA256: &wrong}},
		{Key: cas("bad-size"), Body: body(3), Opts: storage.PutOptions{Size: 5}},
		{Key: cas("too-large"), Body: body(4), Opts: storage.PutOptions{Size: storage.UnknownSize, Limit: 100}},
		{Key: storage.Key{Tenant: "acme", Kind: storage.KindCAS, Name: "no-namespace"}, Body: body(5)},
		{Key: cas("a"), Body: body(0), Opts: storage.PutOptions{Size: 1000}}, // again: exists by then
		{Key: ac("result"), Body: []byte("new result"), Opts: storage.PutOptions{Size: storage.UnknownSize}},
		{Key: storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "doc"}, Body: []byte(`{}`), Opts: storage.PutOptions{Size: 2}},
		{Key: cas("large"), Body: large, Opts: storage.PutOptions{Size: int64(len(large))}},
		{Key: cas("b"), Body: body(10), Opts: storage.PutOptions{Size: storage.UnknownSize}},
	}
	res := s.PutBatch(ctx(t), items)
	if len(res) != len(items) {
		t.Fatalf("%d results for %d items", len(res), len(items))
	}
	want := []struct {
		created bool
		err     error
	}{
		{true, nil}, {false, nil}, {false, storage.ErrDigestMismatch}, {false, storage.ErrDigestMismatch},
		{false, storage.ErrTooLarge}, {false, storage.ErrInvalidKey}, {false, nil}, {true, nil},
		{true, nil}, {true, nil}, {true, nil},
	}
	for i, w := range want {
		r := res[i]
		if r.Created != w.created || (w.err == nil) != (r.Err == nil) || w.err != nil && !errors.Is(r.Err, w.err) {
			t.Errorf("item %d (%v): created %v, err %v; want created %v, err %v", i, items[i].Key, r.Created, r.Err, w.created, w.err)
		}
	}
	if res[1].Info.Size != int64(len("stored before")) {
		t.Errorf("existing item answered with %+v, want the stored object", res[1].Info)
	}
	for i, c := range map[int][]byte{0: body(0), 7: []byte("new result"), 8: []byte(`{}`), 9: large, 10: body(10), 1: []byte("stored before")} {
		if got, err := read(t, s, items[i].Key); err != nil || !bytes.Equal(got, c) {
			t.Errorf("item %d (%v) reads %d bytes, %v", i, items[i].Key, len(got), err)
		}
	}
	for _, i := range []int{2, 3, 4} {
		if _, err := read(t, s, items[i].Key); !isNotFound(err) {
			t.Errorf("refused item %d (%v) is readable: %v", i, items[i].Key, err)
		}
	}
	// The batched items (a, result, b) share one metadata batch with their outbox entries;
	// keyvalue and the large body went through Put, one batch each.
	mu.Lock()
	defer mu.Unlock()
	shared := false
	for _, names := range batches {
		if fmt.Sprint(names) == "[a result b]" {
			shared = true
		}
	}
	if !shared || len(batches) != 3 {
		t.Errorf("observer batches %v, want [a result b] in one of three", batches)
	}
	entries, err := s.db.ScanOutbox(ctx(t), "peer", 0, 100)
	if err != nil || len(entries) != 2+5 {
		t.Errorf("outbox holds %d entries (%v), want one per created item (2 before, 5 of the batch)", len(entries), err)
	}
}

// TestPutBatchConcurrent: batches over overlapping keys, from many goroutines, interleaved
// with single Puts of the same keys (and a namespace deletion), never deadlock, and every
// stored object is whole.
func TestPutBatchConcurrent(t *testing.T) {
	s := openStore(t, testOpts(t))
	const keys = 300
	body := func(i int) []byte { return storagetest.Bytes(uint64(i), 500+i%700) }
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 10 {
				var items []storage.PutItem
				for j := range 40 {
					i := (g*37 + round*53 + j*7) % keys
					items = append(items, storage.PutItem{Key: cas(fmt.Sprint(i)), Body: body(i), Opts: storage.PutOptions{Size: int64(len(body(i)))}})
				}
				for k, r := range s.PutBatch(ctx(t), items) {
					if r.Err != nil && !errors.Is(r.Err, storage.ErrStale) {
						t.Errorf("batch item %v: %v", items[k].Key, r.Err)
					}
				}
				i := (g + round*11) % keys
				if _, err := s.Put(ctx(t), cas(fmt.Sprint(i)), bytes.NewReader(body(i)), storage.PutOptions{Size: int64(len(body(i)))}); err != nil && !errors.Is(err, storage.ErrStale) {
					t.Errorf("put: %v", err)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.DeleteNamespace(ctx(t), "acme", "app", 0); err != nil {
			t.Errorf("DeleteNamespace: %v", err)
		}
	}()
	wg.Wait()
	for i := range keys {
		got, err := read(t, s, cas(fmt.Sprint(i)))
		if err != nil && !isNotFound(err) || err == nil && !bytes.Equal(got, body(i)) {
			t.Fatalf("key %d: %d bytes, %v", i, len(got), err)
		}
	}
}

// TestPutBatchRechecksAfterARacingWrite: a key found absent by the batch's first-writer check
// and then written by someone else before the batch commits is not overwritten: the commit
// sees the stripe count moved and asks Pebble again (the first writer wins).
func TestPutBatchRechecksAfterARacingWrite(t *testing.T) {
	s := openStore(t, testOpts(t))
	key := cas("raced")
	mine := []byte("the batch's body")
	it := storage.PutItem{Key: key, Body: mine, Opts: storage.PutOptions{Size: int64(len(mine))}}
	p := batchedPut{i: 0, key: key, ek: meta.ManifestKey(key)}
	if _, done, err := s.judgeBatchItem(&it, &p); done || err != nil || !p.absent {
		t.Fatalf("judge: done %v, err %v, absent %v", done, err, p.absent)
	}
	put(t, s, key, []byte("the racing writer's body")) // between the check and the commit
	out := make([]storage.PutItemResult, 1)
	s.putBatchPart(ctx(t), []storage.PutItem{it}, []batchedPut{p},
		[]segment.Record{{Name: p.ek, Body: mine, SHA256: p.sum}}, segment.RecordSize(int64(len(mine)), len(p.ek)), out)
	if out[0].Err != nil || out[0].Created {
		t.Fatalf("batch after a racing write: %+v", out[0])
	}
	if got, err := read(t, s, key); err != nil || string(got) != "the racing writer's body" {
		t.Fatalf("stored %q, %v; want the first writer's body", got, err)
	}
}
