package httpapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
)

// Benchmarks of the full HTTP path (client → loopback → echo → store) against the in-memory
// store. They measure the API's own overhead; the lead re-runs them on the disk store.
//
//	go test -run '^$' -bench . -benchtime 2s ./httpapi/

var benchSizes = []struct {
	name string
	size int
}{{"1KiB", 1 << 10}, {"4MiB", 4 << 20}}

func BenchmarkPut(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			h := newHarness(b, harnessOpts{})
			payload := bytes.Repeat([]byte{'p'}, sz.size)
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if sz.size > 64<<10 && i > 0 && i%32 == 0 {
					// Keep the in-memory store small: every key is new, so memory would grow
					// by the whole benchmark's volume otherwise.
					b.StopTimer()
					if err := h.mem.DeleteNamespace(context.Background(), "bench", "put", 0); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				url := fmt.Sprintf("%s/api/cache/cas/k%d?tenant_id=bench&namespace_id=put", h.base, i)
				resp, err := h.client.Post(url, "application/octet-stream", bytes.NewReader(payload))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

func BenchmarkGet(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			h := newHarness(b, harnessOpts{})
			payload := bytes.Repeat([]byte{'g'}, sz.size)
			url := h.base + "/api/cache/cas/obj?tenant_id=bench&namespace_id=get"
			resp, err := h.client.Post(url, "application/octet-stream", bytes.NewReader(payload))
			if err != nil || resp.StatusCode != http.StatusNoContent {
				b.Fatalf("seed: %v %v", resp, err)
			}
			resp.Body.Close()
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp, err := h.client.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || n != int64(sz.size) {
					b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
