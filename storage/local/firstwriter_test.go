package local

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

// Concurrent writers of the same immutable keys with different bodies, half through Put and
// half through PutBatch, while the existence index answers the first-writer check: each key
// is created exactly once, and every writer is answered with the body that won.
func TestFirstWriterWithExistenceIndex(t *testing.T) {
	s := openStore(t, testOpts(t))
	waitExistence(t, s)
	const writers, keys = 16, 20
	key := func(i int) storage.Key {
		return storage.Key{Tenant: "acme", Namespace: "race", Kind: storage.KindXcode, Name: fmt.Sprint("k", i)}
	}
	var (
		mu      sync.Mutex
		created = map[int][]byte{} // key → the body whose write was created
		answers = map[int][][32]byte{}
		wg      sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := range keys {
				body := storagetest.Bytes(uint64(w*keys+i), 300+w)
				var res storage.PutResult
				var err error
				if w%2 == 0 {
					res, err = s.Put(ctx(t), key(i), bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))})
				} else {
					r := s.PutBatch(ctx(t), []storage.PutItem{{Key: key(i), Body: body, Opts: storage.PutOptions{Size: int64(len(body))}}})[0]
					res, err = r.PutResult, r.Err
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if res.Created {
					if _, dup := created[i]; dup {
						t.Errorf("%v created twice", key(i))
					}
					created[i] = body
				}
				answers[i] = append(answers[i], res.Info.SHA256)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for i := range keys {
		won, ok := created[i]
		if !ok {
			t.Fatalf("%v was never created", key(i))
		}
		if got, err := read(t, s, key(i)); err != nil || !bytes.Equal(got, won) {
			t.Fatalf("%v stores %d bytes (%v), not the body whose write was created", key(i), len(got), err)
		}
		for _, sum := range answers[i] {
			if sum != sha256.Sum256(won) {
				t.Fatalf("a writer of %v was answered with SHA-256 %x, the stored body's is %x", key(i), sum, sha256.Sum256(won))
			}
		}
	}
	assertAbsentAgrees(t, s, []storage.Key{key(0), key(keys)}, "after the race")
}

// A manifest the digest walk cannot decode is unknown to the index, never "no manifest"; and
// past maxExistStubs stubs the index stops answering "no manifest" at all (the writers ask
// Pebble), while FindMissing's answers stay.
func TestExistenceAbsentOnlyWhenAuthoritative(t *testing.T) {
	var x existenceIndex
	x.init()
	stored := meta.ManifestKey(storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "stored"})
	damaged := meta.ManifestKey(storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "damaged"})
	stub := meta.ManifestKey(storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "stub"})
	never := meta.ManifestKey(storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "never"})
	if x.absent(never) {
		t.Fatal("an index not built yet answers absent")
	}
	b := x.begin()
	b.add(stored, &meta.Manifest{Size: 1})
	b.add(damaged, nil)
	b.add(stub, &meta.Manifest{Evicted: true})
	b.finish(true)
	for _, c := range []struct {
		name string
		ek   []byte
		want bool
	}{{"stored", stored, false}, {"damaged", damaged, false}, {"stub", stub, false}, {"never written", never, true}} {
		if got := x.absent(c.ek); got != c.want {
			t.Errorf("absent(%s) = %v, want %v", c.name, got, c.want)
		}
	}
	// Refilling the stub and dropping the stored object move both.
	x.update(stub, &meta.Manifest{Size: 2})
	x.change(stored, existAbsent)
	if x.absent(stub) || !x.absent(stored) {
		t.Errorf("after refill and drop: absent(stub) = %v, absent(stored) = %v", x.absent(stub), x.absent(stored))
	}
	x.mu.Lock()
	x.sets.nStubs = maxExistStubs // as if that many stubs were indexed
	x.mu.Unlock()
	x.update(never, &meta.Manifest{Evicted: true})
	other := meta.ManifestKey(storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "other"})
	if x.absent(other) {
		t.Error("past maxExistStubs the index still answers absent")
	}
	missing, _, ok := x.findMissing([]storage.Key{{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "stub"}}, nil)
	if !ok || len(missing) != 0 {
		t.Errorf("FindMissing of a stored object past the stub bound: %v (ready %v)", missing, ok)
	}
}
