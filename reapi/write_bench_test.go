package reapi

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
)

// Benchmarks of the REAPI write path against the real disk store (Pebble and segment files
// in a temporary directory, fsync on) over loopback gRPC, the way cmd/kura wires it (the
// store is both Store and Local). Run with:
//
//	go test -run '^$' -bench 'BatchUpdate|ByteStreamWrite' -benchmem ./reapi/
//
// Profile the server side with -cpuprofile: client and server share the process, so the
// profile holds both; the client's share is the proto marshalling and the transport.

// BenchmarkBatchUpdateBlobs100x1KiB: one op is a BatchUpdateBlobs of 100 new 1 KiB blobs;
// blobs/s is the figure to compare with the bench suite's batch-update-1k scenario.
func BenchmarkBatchUpdateBlobs100x1KiB(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			h := newDiskHarness(b)
			var seq atomic.Uint64
			b.SetBytes(100 << 10)
			b.ReportAllocs()
			b.SetParallelism(max(clients/runtime.GOMAXPROCS(0), 1))
			b.ResetTimer()
			run := func() {
				req := &repb.BatchUpdateBlobsRequest{Requests: make([]*repb.BatchUpdateBlobsRequest_Request, 100)}
				for i := range req.Requests {
					data := randomBlob(1<<10, seq.Add(1))
					req.Requests[i] = &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(data), Data: data}
				}
				resp, err := h.cas.BatchUpdateBlobs(context.Background(), req)
				if err != nil {
					b.Error(err)
					return
				}
				for _, r := range resp.GetResponses() {
					if r.GetStatus().GetCode() != int32(codes.OK) {
						b.Errorf("item %s: %v", r.GetDigest().GetHash(), r.GetStatus())
						return
					}
				}
			}
			if clients == 1 {
				for b.Loop() {
					run()
				}
			} else {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						run()
					}
				})
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "blobs/s")
		})
	}
}

// BenchmarkByteStreamWrite64MiB: one op uploads a new 64 MiB blob in 1 MiB messages (what
// Bazel sends is 16 KiB to 1 MiB; larger messages are the client-friendly end).
func BenchmarkByteStreamWrite64MiB(b *testing.B) {
	h := newDiskHarness(b)
	const size = 64 << 20
	const chunk = 1 << 20
	data := randomBlob(size, 1)
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// A different blob each time: the first 8 bytes carry the iteration.
		for j := range 8 {
			data[j] = byte(uint64(i) >> (8 * j))
		}
		d := digestOf(data)
		ws, err := h.bs.Write(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		name := uploadName("", false, d)
		for off := 0; off < size; off += chunk {
			req := &bspb.WriteRequest{WriteOffset: int64(off), Data: data[off : off+chunk], FinishWrite: off+chunk == size}
			if off == 0 {
				req.ResourceName = name
			}
			if err := ws.Send(req); err != nil {
				if err == io.EOF {
					break
				}
				b.Fatal(err)
			}
		}
		resp, err := ws.CloseAndRecv()
		if err != nil || resp.GetCommittedSize() != size {
			b.Fatalf("write: %v %v", resp, err)
		}
	}
}
