package reapi

import (
	"context"
	"fmt"
	"io"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
)

// Read-path benchmarks over loopback gRPC on the real disk store (storage/local): ByteStream
// Read of 64 MiB blobs and BatchReadBlobs of one 1 KiB blob, sequential and parallel. They
// report MB/s (ByteStream) and ops/s; profile them with -cpuprofile.
//
//	go test -run '^$' -bench 'Read' -benchmem ./reapi/

func BenchmarkByteStreamRead64MiB(b *testing.B) {
	for _, parallel := range []bool{false, true} {
		b.Run(map[bool]string{false: "sequential", true: "parallel"}[parallel], func(b *testing.B) {
			h := newDiskHarness(b)
			const size, objects = 64 << 20, 2
			names := make([]string, objects)
			for i := range names {
				blob := randomBlob(size, uint64(i+1))
				d := digestOf(blob)
				if _, err := h.write(context.Background(), uploadName("", false, d), blob, 1<<20); err != nil {
					b.Fatalf("seed: %v", err)
				}
				names[i] = fmt.Sprintf("blobs/%s/%d", d.Hash, d.SizeBytes)
			}
			read := func(i int) error {
				stream, err := h.bs.Read(context.Background(), &bspb.ReadRequest{ResourceName: names[i%objects]})
				if err != nil {
					return err
				}
				n := 0
				for {
					resp, err := stream.Recv()
					if err == io.EOF {
						break
					}
					if err != nil {
						return err
					}
					n += len(resp.GetData())
				}
				if n != size {
					return fmt.Errorf("read %d bytes, want %d", n, size)
				}
				return nil
			}
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			if parallel {
				b.SetParallelism(1)
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						if err := read(i); err != nil {
							b.Error(err)
							return
						}
						i++
					}
				})
				return
			}
			i := 0
			for b.Loop() {
				if err := read(i); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkBatchRead1KiB(b *testing.B) {
	for _, parallel := range []bool{false, true} {
		b.Run(map[bool]string{false: "sequential", true: "parallel"}[parallel], func(b *testing.B) {
			h := newDiskHarness(b)
			const objects = 256
			digests := make([]*repb.Digest, objects)
			for i := range digests {
				blob := randomBlob(1<<10, uint64(i+1))
				h.upload("", blob)
				digests[i] = digestOf(blob)
			}
			read := func(i int) error {
				resp, err := h.cas.BatchReadBlobs(context.Background(), &repb.BatchReadBlobsRequest{Digests: digests[i%objects : i%objects+1]})
				if err != nil {
					return err
				}
				if r := resp.GetResponses(); len(r) != 1 || len(r[0].GetData()) != 1<<10 {
					return fmt.Errorf("unexpected answer %v", r)
				}
				return nil
			}
			b.ReportAllocs()
			b.ResetTimer()
			if parallel {
				b.SetParallelism(32)
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						if err := read(i); err != nil {
							b.Error(err)
							return
						}
						i++
					}
				})
			} else {
				i := 0
				for b.Loop() {
					if err := read(i); err != nil {
						b.Fatal(err)
					}
					i++
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
