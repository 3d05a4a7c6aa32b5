package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

// Benchmarks of the durable write path (segment group commit + synced Pebble batch) and of
// verified reads. Run with: go test -run '^$' -bench . ./storage/local/
func BenchmarkPut(b *testing.B) {
	for _, size := range []int{1 << 10, 4 << 20} {
		body := storagetest.Bytes(1, size)
		name := sizeName(size)
		b.Run(name+"/sequential", func(b *testing.B) {
			s := benchStore(b)
			var n atomic.Int64
			b.SetBytes(int64(size))
			b.ResetTimer()
			for b.Loop() {
				benchPut(b, s, n.Add(1), body)
			}
			reportOps(b)
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			s := benchStore(b)
			var n atomic.Int64
			if size <= 64<<10 {
				b.SetParallelism(32) // 64 writers on 2 cores: group commit needs concurrency
			} else {
				b.SetParallelism(2)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					benchPut(b, s, n.Add(1), body)
				}
			})
			reportOps(b)
		})
	}
}

func BenchmarkGet(b *testing.B) {
	for _, size := range []int{1 << 10, 4 << 20} {
		name := sizeName(size)
		objects := 1000
		if size > 1<<20 {
			objects = 16
		}
		setup := func(b *testing.B) *Store {
			s := benchStore(b)
			body := storagetest.Bytes(2, size)
			for i := range objects {
				benchPut(b, s, int64(i), body)
			}
			return s
		}
		b.Run(name+"/sequential", func(b *testing.B) {
			s := setup(b)
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(size))
			i := 0
			b.ResetTimer()
			for b.Loop() {
				benchGet(b, s, int64(i%objects), size, buf)
				i++
			}
			reportOps(b)
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			s := setup(b)
			var n atomic.Int64
			b.SetParallelism(8)
			b.SetBytes(int64(size))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 64<<10)
				for pb.Next() {
					benchGet(b, s, n.Add(1)%int64(objects), size, buf)
				}
			})
			reportOps(b)
		})
	}
}

func sizeName(size int) string {
	if size >= 1<<20 {
		return fmt.Sprintf("%dMiB", size>>20)
	}
	return fmt.Sprintf("%dKiB", size>>10)
}

func benchStore(b *testing.B) *Store {
	o := testOpts(b)
	o.Metadata.MemTableBytes = 64 << 20
	return openStore(b, o)
}

func benchPut(b *testing.B, s *Store, i int64, body []byte) {
	key := storage.Key{Tenant: "bench", Namespace: "ns", Kind: storage.KindCAS, Name: fmt.Sprintf("obj-%d", i)}
	res, err := s.Put(context.Background(), key, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))})
	if err != nil || !res.Created {
		b.Fatalf("put %v: %+v %v", key, res, err)
	}
}

func benchGet(b *testing.B, s *Store, i int64, size int, buf []byte) {
	key := storage.Key{Tenant: "bench", Namespace: "ns", Kind: storage.KindCAS, Name: fmt.Sprintf("obj-%d", i)}
	r, err := s.Open(context.Background(), key, 0, -1)
	if err != nil {
		b.Fatalf("open %v: %v", key, err)
	}
	n, err := io.CopyBuffer(io.Discard, onlyReader{r}, buf)
	_ = r.Close()
	if err != nil || n != int64(size) {
		b.Fatalf("read %v: %d bytes, %v", key, n, err)
	}
}

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkDigestUpdate is the work the commit path added for the anti-entropy digests: the
// bucket and entry hashes of the new and the replaced version, and the update under the
// rebuild gate. Compare it with the tens of microseconds of a synced Put.
func BenchmarkDigestUpdate(b *testing.B) {
	s := benchStore(b)
	bucketDigests(b, s)
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := storage.Key{Tenant: "bench", Namespace: "ns", Kind: storage.KindAC, Name: fmt.Sprintf("obj-%d", n.Add(1))}
			ek := meta.ManifestKey(key)
			add := entryDigest{bucket: meta.DigestBucket(ek, storage.DigestBucketBits), hash: meta.EntryHash(ek, key.Kind, [32]byte{1}, 2)}
			remove := entryDigest{bucket: add.bucket, hash: meta.EntryHash(ek, key.Kind, [32]byte{1}, 1)}
			s.digests.gate.RLock()
			s.digests.apply(&remove, &add)
			s.digests.gate.RUnlock()
		}
	})
	reportOps(b)
}

// BenchmarkDigestBuild measures the walk that builds the digests at Open, per object.
func BenchmarkDigestBuild(b *testing.B) {
	s := benchStore(b)
	const objects = 200_000
	for start := 0; start < objects; start += 10_000 {
		batch := s.db.NewBatch()
		for i := start; i < start+10_000; i++ {
			key := storage.Key{Tenant: "bench", Namespace: "ns", Kind: storage.KindCAS, Name: fmt.Sprintf("sha256-%064d", i)}
			m := meta.Manifest{Evicted: true, Size: 1000, SHA256: [32]byte{byte(i)}, Version: storage.Version(i + 1)}
			if err := batch.PutManifest(key, m, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
		batch.Close()
	}
	bucketDigests(b, s)
	b.ResetTimer()
	for b.Loop() {
		if err := s.rebuildDigests(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/objects, "ns/object")
}
