package reapi

import (
	"fmt"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
)

// BenchmarkFindMissingBlobs1000 is the bench suite's FindMissing row in process: one
// FindMissingBlobs of 1,000 digests, 500 of them stored, against a disk store (Pebble and
// segments in a temporary directory), over loopback gRPC and as a direct call of the handler
// (no transport: digest parsing, key building, the store's lookups and the response).
//
//	go test -run '^$' -bench FindMissingBlobs1000 -benchmem ./reapi/
func BenchmarkFindMissingBlobs1000(b *testing.B) {
	const n, present = 1000, 500
	var disk *local.Store
	h := newHarness(b, Config{}, func(storage.Store) storage.Store {
		s, err := local.Open(local.Options{
			DataDir:    b.TempDir(),
			Registerer: prometheus.NewRegistry(),
			Metadata:   meta.Options{BlockCacheBytes: 8 << 20, MemTableBytes: 8 << 20},
		})
		if err != nil {
			b.Fatal(err)
		}
		disk = s
		return s
	})
	b.Cleanup(func() { _ = disk.Close() })
	req := &repb.FindMissingBlobsRequest{}
	var batch []*repb.BatchUpdateBlobsRequest_Request
	for i := range n {
		blob := fmt.Appendf(nil, "find-missing blob %d", i)
		req.BlobDigests = append(req.BlobDigests, digestOf(blob))
		if i%2 == 0 {
			batch = append(batch, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(blob), Data: blob})
		}
	}
	for len(batch) > 0 {
		m := min(len(batch), 100)
		resp, err := h.cas.BatchUpdateBlobs(b.Context(), &repb.BatchUpdateBlobsRequest{Requests: batch[:m]})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				b.Fatalf("update: %v", r.GetStatus())
			}
		}
		batch = batch[m:]
	}
	check := func(resp *repb.FindMissingBlobsResponse, err error) {
		if err != nil || len(resp.GetMissingBlobDigests()) != n-present {
			b.Fatalf("FindMissingBlobs: %d missing, %v", len(resp.GetMissingBlobDigests()), err)
		}
	}
	b.Run("grpc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			check(h.cas.FindMissingBlobs(b.Context(), req))
		}
	})
	b.Run("handler", func(b *testing.B) {
		c := &casServer{s: h.srv}
		b.ReportAllocs()
		for b.Loop() {
			check(c.FindMissingBlobs(b.Context(), req))
		}
	})
}
