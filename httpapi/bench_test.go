package httpapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
)

// Benchmarks of the full HTTP path (keep-alive client → loopback → echo → store), on the
// in-memory store (the API's own overhead) and on the real disk store, storage/local (Pebble
// and segment files, every write fsynced before it is acknowledged). Each runs sequentially
// (one client) and in parallel (benchClients concurrent clients). They report ops/s and MB/s.
//
//	go test -run '^$' -bench . -benchtime 2s ./httpapi/

var benchSizes = []struct {
	name string
	size int
	// objects is how many distinct objects GET benchmarks cycle through: a realistic hot set
	// rather than one object that stays in every cache.
	objects int
}{{"1KiB", 1 << 10, 256}, {"4MiB", 4 << 20, 16}}

var benchBackends = []struct {
	name string
	disk bool
}{{"memory", false}, {"disk", true}}

// benchClients is the number of concurrent clients of the parallel benchmarks: what a busy
// node sees from a CI fleet, and enough for the disk store's group commit to batch fsyncs.
const benchClients = 32

// setBenchParallelism makes RunParallel start about benchClients goroutines whatever
// GOMAXPROCS is (RunParallel starts parallelism × GOMAXPROCS).
func setBenchParallelism(b *testing.B) {
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism(max(1, (benchClients+procs-1)/procs))
}

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkPut(b *testing.B) {
	benchEach(b, func(b *testing.B, h *harness, size, _ int, parallel bool) {
		payload := bytes.Repeat([]byte{'p'}, size)
		var seq atomic.Int64
		put := func() error {
			i := seq.Add(1)
			if h.mem != nil && size > 64<<10 && i%64 == 0 {
				// Keep the in-memory store small: every key is new, so memory would grow by
				// the whole benchmark's volume otherwise. The disk store keeps everything.
				if err := h.mem.DeleteNamespace(context.Background(), "bench", "put", 0); err != nil {
					return err
				}
			}
			url := fmt.Sprintf("%s/api/cache/cas/k%d?tenant_id=bench&namespace_id=put", h.base, i)
			resp, err := h.client.Post(url, "application/octet-stream", bytes.NewReader(payload))
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				return fmt.Errorf("PUT %s: status %d", url, resp.StatusCode)
			}
			return nil
		}
		b.SetBytes(int64(size))
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := put(); err != nil {
						b.Error(err) // Fatal may only stop the benchmark's own goroutine
						return
					}
				}
			})
		} else {
			for b.Loop() {
				if err := put(); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportOps(b)
	})
}

func BenchmarkGet(b *testing.B) {
	benchEach(b, func(b *testing.B, h *harness, size, objects int, parallel bool) {
		urls := make([]string, objects)
		for i := range urls {
			urls[i] = fmt.Sprintf("%s/api/cache/cas/obj%d?tenant_id=bench&namespace_id=get", h.base, i)
			payload := bytes.Repeat([]byte{byte('a' + i%26)}, size)
			resp, err := h.client.Post(urls[i], "application/octet-stream", bytes.NewReader(payload))
			if err != nil {
				b.Fatalf("seed: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				b.Fatalf("seed: status %d", resp.StatusCode)
			}
		}
		var seq atomic.Int64
		get := func(buf []byte) error {
			url := urls[seq.Add(1)%int64(objects)]
			resp, err := h.client.Get(url)
			if err != nil {
				return err
			}
			n, _ := io.CopyBuffer(io.Discard, resp.Body, buf)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || n != int64(size) {
				return fmt.Errorf("GET %s: status %d, %d bytes", url, resp.StatusCode, n)
			}
			return nil
		}
		b.SetBytes(int64(size))
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 64<<10)
				for pb.Next() {
					if err := get(buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		} else {
			buf := make([]byte, 64<<10)
			for b.Loop() {
				if err := get(buf); err != nil {
					b.Fatal(err)
				}
			}
		}
		reportOps(b)
	})
}

// benchEach runs fn as backend/size/{sequential,parallel} sub-benchmarks, each on a fresh
// server (and, on disk, a fresh store in b.TempDir(), closed at the end).
func benchEach(b *testing.B, fn func(b *testing.B, h *harness, size, objects int, parallel bool)) {
	for _, be := range benchBackends {
		for _, sz := range benchSizes {
			for _, parallel := range []bool{false, true} {
				mode := "sequential"
				if parallel {
					mode = "parallel"
				}
				b.Run(be.name+"/"+sz.name+"/"+mode, func(b *testing.B) {
					h := newHarness(b, harnessOpts{disk: be.disk})
					if parallel {
						setBenchParallelism(b)
					}
					fn(b, h, sz.size, sz.objects, parallel)
				})
			}
		}
	}
}
