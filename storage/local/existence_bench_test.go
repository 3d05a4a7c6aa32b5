package local

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// BenchmarkFindMissing is FindMissing of 1,000 CAS keys (64-hex names, 500 stored) answered
// from the existence index and, for comparison, from the manifests (cache, then Pebble), which
// is how every call was answered before the index.
//
//	go test -run '^$' -bench 'FindMissing$' -benchmem ./storage/local/
func BenchmarkFindMissing(b *testing.B) {
	s := benchStore(b)
	waitExistence(b, s)
	keys := make([]storage.Key, 1000)
	for i := range keys {
		keys[i] = storage.Key{Tenant: "bench", Namespace: "ns", Kind: storage.KindCAS, Name: fmt.Sprintf("%064x", i)}
		if i%2 == 0 {
			if _, err := s.Put(ctx(b), keys[i], strings.NewReader(keys[i].Name), storage.PutOptions{Size: 64}); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		name string
		find func([]storage.Key) ([]storage.Key, error)
	}{
		{"index", func(k []storage.Key) ([]storage.Key, error) { return s.FindMissing(ctx(b), k) }},
		{"manifests", s.findMissingStored},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if m, err := c.find(keys); err != nil || len(m) != 500 {
					b.Fatalf("FindMissing: %d missing, %v", len(m), err)
				}
			}
		})
	}
}

// BenchmarkExistenceBuild is the startup walk over 200,000 manifests (the anti-entropy
// digests alone, and with the existence index built alongside), and the index's heap bytes
// per object: what the index adds to the background build after Open, and to memory.
//
//	go test -run '^$' -bench ExistenceBuild -benchtime 5x ./storage/local/
func BenchmarkExistenceBuild(b *testing.B) {
	const n = 200_000
	s := benchStore(b)
	waitExistence(b, s)
	for start := 0; start < n; start += 10_000 {
		batch := s.db.NewBatch()
		for i := start; i < start+10_000; i++ {
			k := storage.Key{Tenant: "bench", Namespace: fmt.Sprintf("ns%d", i%8), Kind: storage.KindCAS, Name: fmt.Sprintf("%064x", i)}
			if err := batch.PutManifest(k, meta.Manifest{Inline: true, Version: storage.Version(i + 1)}, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
		batch.Close()
	}
	for _, withIndex := range []bool{false, true} {
		name := "digests"
		if withIndex {
			name = "digests+index"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if withIndex {
					s.exists.reset()
				}
				if err := s.rebuildDigests(ctx(b)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/object")
		})
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	with := heap()
	s.exists.reset()
	without := heap()
	b.Logf("existence index of %d objects: %.1f heap bytes per object", n, float64(int64(with)-int64(without))/n)
	s.kickDigestRebuild()
}
