package antientropy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// benchObjects writes n objects of size bytes to s (8 writers).
func benchObjects(b *testing.B, s storage.Store, n, size int) {
	b.Helper()
	body := string(storagetest.Bytes(1, size))
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := w; i < n; i += 8 {
				k := key("bench", storage.KindGradle, fmt.Sprintf("obj-%06d", i))
				if _, err := s.Put(b.Context(), k, strings.NewReader(fmt.Sprintf("%08d", i)+body[8:]), storage.PutOptions{Size: int64(len(body))}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSweepPull measures a new node bootstrapping 2,000 objects of 4 KiB from a disk
// peer over the real internal plane (gRPC on loopback) into its own disk store, with the
// default and a higher pull concurrency (every stored object is an fsynced, committed write).
func BenchmarkSweepPull(b *testing.B) {
	const n, size = 2000, 4 << 10
	a := openDisk(b, "a", "us")
	serveInternal(b, a)
	benchObjects(b, a.store, n, size)
	client := newClient(b)
	for _, conc := range []int{DefaultPullConcurrency, 32} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				self := openDisk(b, fmt.Sprintf("self-%d", i), "us")
				sw, _ := newSweeper(b, self, client, newPeers(a), func(c *Config) { c.PullConcurrency = conc })
				b.StartTimer()
				start := time.Now()
				res, err := sw.SweepNow(b.Context())
				total += time.Since(start)
				if err != nil || res.ObjectsPulled != n {
					b.Fatalf("sweep: %+v, %v", res, err)
				}
			}
			b.ReportMetric(float64(n*b.N)/total.Seconds(), "objects/s")
			b.ReportMetric(float64(n*size*b.N)/total.Seconds()/(1<<20), "MiB/s")
		})
	}
}

// BenchmarkSweepIdle measures a sweep that finds nothing to do (the steady state): one
// digest exchange with each of two peers holding 20,000 objects.
func BenchmarkSweepIdle(b *testing.B) {
	const n = 20000
	self, p1, p2 := openDisk(b, "self", "us"), openDisk(b, "p1", "us"), openDisk(b, "p2", "us")
	for _, nd := range []*node{self, p1, p2} {
		benchObjects(b, nd.store, n, 64)
	}
	serveInternal(b, p1)
	serveInternal(b, p2)
	sw, _ := newSweeper(b, self, newClient(b), newPeers(p1, p2), nil)
	for b.Loop() {
		res, err := sw.SweepNow(b.Context())
		if err != nil || res.BucketsDiffering != 0 {
			b.Fatalf("idle sweep: %+v, %v", res, err)
		}
	}
}

// BenchmarkReadThroughMiss measures a local miss served from a disk peer over gRPC: fetch,
// verify, store, then open locally (16 KiB objects).
func BenchmarkReadThroughMiss(b *testing.B) {
	const size = 16 << 10
	a, self := openDisk(b, "a", "us"), openDisk(b, "self", "us")
	serveInternal(b, a)
	benchObjects(b, a.store, max(b.N, 1), size)
	rt := mustReadThrough(b, self.store, newClient(b), newPeers(a), "us", ReadThroughOptions{})
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := read(rt, key("bench", storage.KindGradle, fmt.Sprintf("obj-%06d", i))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFindMissingNoPeers is FindMissing of 1,000 keys (half present) on a disk store,
// raw and through the read-through of a node without peers: the decorator must add nothing
// measurable when there is nobody to ask.
func BenchmarkFindMissingNoPeers(b *testing.B) {
	self := openDisk(b, "self", "us")
	benchObjects(b, self.store, 500, 64)
	keys := make([]storage.Key, 1000)
	for i := range keys {
		keys[i] = key("bench", storage.KindGradle, fmt.Sprintf("obj-%06d", i))
	}
	rt := mustReadThrough(b, self.store, newSource(self), newPeers(), "us", ReadThroughOptions{})
	defer rt.Close()
	for name, s := range map[string]storage.Store{"raw": self.store, "read-through": rt} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if m, err := s.FindMissing(b.Context(), keys); err != nil || len(m) != 500 {
					b.Fatalf("FindMissing: %d missing, %v", len(m), err)
				}
			}
		})
	}
}
