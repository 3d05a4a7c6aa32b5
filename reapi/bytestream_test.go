package reapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

func TestByteStreamLargeRoundTrip(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	data := randomBlob(20_000_000, 40)
	d := digestOf(data)

	resp, err := h.write(ctx, uploadName("", false, d), data, 64<<10)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	if resp.GetCommittedSize() != int64(len(data)) {
		t.Fatalf("committed %d", resp.GetCommittedSize())
	}
	if !h.casStored("default", data) {
		t.Fatal("blob not stored under the shared CAS name")
	}
	got, sizes, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, d)})
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back different bytes")
	}
	if len(sizes) < 20 {
		t.Errorf("%d messages for 20 MB", len(sizes))
	}
	for _, n := range sizes {
		if n > readChunkBytes {
			t.Fatalf("a message carried %d bytes", n)
		}
	}
	// The blob is visible to the CAS API too.
	fm, err := h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{d}})
	if err != nil || len(fm.GetMissingBlobDigests()) != 0 {
		t.Fatalf("FindMissingBlobs after write: %v %v", fm, err)
	}
}

func TestByteStreamReadRanges(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	data := randomBlob(3<<20+17, 41)
	d := digestOf(data)
	h.upload("ranges", data[:10]) // unrelated blob, same instance
	if _, err := h.write(ctx, uploadName("ranges", false, d), data, 1<<20); err != nil {
		t.Fatal(err)
	}
	size := int64(len(data))
	for _, tc := range []struct {
		offset, limit int64
		want          []byte
	}{
		{0, 0, data},
		{1000, 5000, data[1000:6000]},
		{1 << 20, 0, data[1<<20:]},
		{size - 1, 10, data[size-1:]},
		{size, 0, nil},
		{5, size * 2, data[5:]},
	} {
		t.Run(fmt.Sprintf("offset %d limit %d", tc.offset, tc.limit), func(t *testing.T) {
			got, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("ranges", false, d), ReadOffset: tc.offset, ReadLimit: tc.limit})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
		})
	}
	_, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("ranges", false, d), ReadOffset: size + 1})
	wantCode(t, err, codes.OutOfRange)
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("ranges", false, d), ReadOffset: -1})
	wantCode(t, err, codes.OutOfRange)
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("ranges", false, d), ReadLimit: -1})
	wantCode(t, err, codes.InvalidArgument)

	// Namespaces are separate; missing blobs and wrong sizes are NOT_FOUND.
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, d)})
	wantCode(t, err, codes.NotFound)
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("ranges", false, digestOf(randomBlob(5, 42)))})
	wantCode(t, err, codes.NotFound)
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: fmt.Sprintf("ranges/blobs/%s/%d", d.Hash, size-1)})
	wantCode(t, err, codes.NotFound)
	absent := digestOf(randomBlob(5, 43))
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("ranges", false, absent), ReadOffset: 5})
	wantCode(t, err, codes.NotFound) // even when nothing would be sent

	// The empty blob reads as nothing, in either form, without having been written.
	got, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, digestOf(nil))})
	if err != nil || len(got) != 0 {
		t.Fatalf("empty blob: %d bytes, %v", len(got), err)
	}
	got, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", true, digestOf(nil))})
	if err != nil || len(zstdDecompress(t, got)) != 0 {
		t.Fatalf("empty compressed blob: %v", err)
	}
}

func TestByteStreamCompressed(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	data := bytes.Repeat(randomBlob(4096, 50), 1500) // ~6 MB, compressible
	d := digestOf(data)
	compressed := zstdCompress(t, data)

	resp, err := h.write(ctx, uploadName("inst1", true, d), compressed, 100<<10)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCommittedSize() != int64(len(compressed)) {
		t.Fatalf("committed %d, want the %d compressed bytes received", resp.GetCommittedSize(), len(compressed))
	}
	if !h.casStored("inst1", data) {
		t.Fatal("decompressed blob not stored")
	}
	plain, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("inst1", false, d)})
	if err != nil || !bytes.Equal(plain, data) {
		t.Fatalf("uncompressed read: %v", err)
	}
	got, sizes, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("inst1", true, d)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(zstdDecompress(t, got), data) {
		t.Fatal("compressed read does not decompress to the blob")
	}
	if len(got) >= len(data)/10 {
		t.Errorf("compressed read is %d bytes for %d", len(got), len(data))
	}
	for _, n := range sizes {
		if n > readChunkBytes {
			t.Fatalf("a message carried %d bytes", n)
		}
	}
	// read_offset counts uncompressed bytes.
	got, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("inst1", true, d), ReadOffset: 12345})
	if err != nil || !bytes.Equal(zstdDecompress(t, got), data[12345:]) {
		t.Fatalf("compressed read at an offset: %v", err)
	}
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("inst1", true, d), ReadLimit: 10})
	wantCode(t, err, codes.InvalidArgument)

	// A blob written uncompressed can be read compressed.
	other := randomBlob(200_000, 51)
	h.upload("inst1", other)
	got, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("inst1", true, digestOf(other))})
	if err != nil || !bytes.Equal(zstdDecompress(t, got), other) {
		t.Fatalf("compressed read of an uncompressed upload: %v", err)
	}
}

func TestByteStreamWriteRejections(t *testing.T) {
	h := newHarness(t, Config{MaxCASBlobSizeBytes: 10 << 20}, nil)
	ctx := ctxT(t)
	data := randomBlob(300_000, 60)
	d := digestOf(data)
	other := randomBlob(300_000, 61)

	t.Run("hash mismatch", func(t *testing.T) {
		_, err := h.write(ctx, uploadName("", false, d), other, 64<<10)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("short upload", func(t *testing.T) {
		_, err := h.write(ctx, uploadName("", false, d), data[:len(data)-1], 64<<10)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("too much data", func(t *testing.T) {
		_, err := h.write(ctx, uploadName("", false, d), append(append([]byte{}, data...), 1), 64<<10)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("over max_cas_blob_size_bytes", func(t *testing.T) {
		_, err := h.write(ctx, fmt.Sprintf("uploads/u/blobs/%s/%d", d.Hash, 11<<20), data, 64<<10)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("decompression bomb", func(t *testing.T) {
		plain := make([]byte, 64<<20)
		_, err := h.write(ctx, uploadName("", true, digestOf(plain[:4096])), zstdCompress(t, plain), 64<<10)
		wantCode(t, err, codes.InvalidArgument)
		if h.casStored("default", plain[:4096]) {
			t.Error("bomb stored")
		}
	})
	t.Run("corrupt zstd", func(t *testing.T) {
		c := zstdCompress(t, data)
		c[len(c)/2] ^= 0x55
		_, err := h.write(ctx, uploadName("", true, d), c, 64<<10)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("truncated zstd", func(t *testing.T) {
		c := zstdCompress(t, data)
		_, err := h.write(ctx, uploadName("", true, d), c[:len(c)-100], 64<<10)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("first offset not zero", func(t *testing.T) {
		stream, err := h.bs.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&bspb.WriteRequest{ResourceName: uploadName("", false, d), WriteOffset: 100, Data: data[100:], FinishWrite: true})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("offset gap", func(t *testing.T) {
		stream, err := h.bs.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&bspb.WriteRequest{ResourceName: uploadName("", false, d), Data: data[:1000]})
		_ = stream.Send(&bspb.WriteRequest{WriteOffset: 2000, Data: data[2000:], FinishWrite: true})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("resource name changes", func(t *testing.T) {
		stream, err := h.bs.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&bspb.WriteRequest{ResourceName: uploadName("", false, d), Data: data[:1000]})
		_ = stream.Send(&bspb.WriteRequest{ResourceName: uploadName("x", false, d), WriteOffset: 1000, Data: data[1000:], FinishWrite: true})
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("no request", func(t *testing.T) {
		stream, err := h.bs.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = stream.CloseAndRecv()
		wantCode(t, err, codes.InvalidArgument)
	})
	if h.casStored("default", data) || h.casStored("default", other) {
		t.Fatal("a rejected upload was stored")
	}

	// After all that, a correct upload still works, and without finish_write too: the end of
	// the stream ends the data.
	stream, err := h.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{ResourceName: uploadName("", false, d), Data: data}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != int64(len(data)) || !h.casStored("default", data) {
		t.Fatalf("upload without finish_write: %v %v", resp, err)
	}
}

func TestByteStreamMalformedResourceNames(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	hash := digestOf([]byte("x")).Hash
	for _, name := range []string{
		"", "blobs", "blobs/" + hash, "blobs/" + hash + "/-1", "blobs/" + hash + "/1x", "blobs/" + hash + "/+1",
		"blobs/" + strings.ToUpper(hash) + "/1", "blobs/" + hash[:63] + "/1", "blobs/" + hash + "/1/extra",
		"/blobs/" + hash + "/1", "a//blobs/" + hash + "/1", "uploads/blobs/" + hash + "/1",
		"compressed-blobs/gzip/" + hash + "/1", "compressed-blobs/identity/" + hash + "/1", "compressed-blobs/deflate/" + hash + "/1",
		"blobs/sha1/" + hash + "/1", "blobs/murmur3/" + hash + "/1", "blobs/" + hash + "/99999999999999999999",
		"actions/blobs/" + hash + "/1", "inst/blobs/" + hash,
	} {
		t.Run("read "+name, func(t *testing.T) {
			_, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: name})
			wantCode(t, err, codes.InvalidArgument)
		})
	}
	for _, name := range []string{
		"", "blobs/" + hash + "/1", "uploads/u", "uploads/u/blobs/" + hash, "uploads/u/blobs/" + hash + "/x",
		"uploads//blobs/" + hash + "/1", "uploads/blobs/" + hash + "/1", "uploads/u/compressed-blobs/brotli/" + hash + "/1",
		"operations/uploads/u/blobs/" + hash + "/1", "uploads/u/blobs/md5/" + hash + "/1",
	} {
		t.Run("write "+name, func(t *testing.T) {
			_, err := h.write(ctx, name, []byte("x"), 10)
			wantCode(t, err, codes.InvalidArgument)
			_, err = h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
			wantCode(t, err, codes.InvalidArgument)
		})
	}
	// Accepted variants: an explicit sha256 segment and trailing upload metadata.
	if _, err := h.write(ctx, "uploads/any-id/blobs/sha256/"+hash+"/1/some/metadata", []byte("x"), 10); err != nil {
		t.Fatalf("write with metadata: %v", err)
	}
	if got, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: "blobs/sha256/" + hash + "/1"}); err != nil || string(got) != "x" {
		t.Fatalf("read with a sha256 segment: %q %v", got, err)
	}
}

func TestByteStreamExistingBlobCompletesAtOnce(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	data := randomBlob(2<<20, 70)
	d := digestOf(data)
	h.upload("", data[:10])
	if _, err := h.write(ctx, uploadName("", false, d), data, 1<<20); err != nil {
		t.Fatal(err)
	}
	for _, compressed := range []bool{false, true} {
		t.Run(fmt.Sprintf("compressed=%v", compressed), func(t *testing.T) {
			payload := data
			want := int64(len(data))
			if compressed {
				payload, want = zstdCompress(t, data), -1
			}
			// Send only the first chunk, without finish_write, and wait for the answer: the
			// server must answer without reading the rest.
			stream, err := h.bs.Write(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&bspb.WriteRequest{ResourceName: uploadName("", compressed, d), Data: payload[:64<<10]}); err != nil {
				t.Fatal(err)
			}
			resp := new(bspb.WriteResponse)
			if err := stream.RecvMsg(resp); err != nil {
				t.Fatalf("early response: %v", err)
			}
			if resp.GetCommittedSize() != want {
				t.Fatalf("committed %d, want %d", resp.GetCommittedSize(), want)
			}
		})
	}
	// The empty blob needs no data at all.
	resp, err := h.write(ctx, uploadName("", false, digestOf(nil)), nil, 1)
	if err != nil || resp.GetCommittedSize() != 0 {
		t.Fatalf("empty blob: %v %v", resp, err)
	}
	// An upload naming an existing hash with another size is refused.
	_, err = h.write(ctx, fmt.Sprintf("uploads/u/blobs/%s/%d", d.Hash, len(data)-1), data[:len(data)-1], 1<<20)
	wantCode(t, err, codes.InvalidArgument)
}

func TestByteStreamConcurrentUploadsOfOneBlob(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	data := randomBlob(2<<20, 80)
	d := digestOf(data)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			resp, err := h.write(ctx, uploadName("", i%2 == 1, d), map[bool][]byte{false: data, true: zstdCompress(t, data)}[i%2 == 1], 32<<10)
			if err == nil && resp.GetCommittedSize() == 0 {
				err = fmt.Errorf("committed size 0")
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("upload %d: %v", i, err)
		}
	}
	got, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, d)})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after concurrent uploads: %v", err)
	}
}

func TestByteStreamCancelledUploadStoresNothing(t *testing.T) {
	putStarted := make(chan struct{}, 1)
	h := newHarness(t, Config{}, func(s storage.Store) storage.Store { return &notifyingStore{Store: s, putStarted: putStarted} })
	data := randomBlob(1<<20, 90)
	d := digestOf(data)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{ResourceName: uploadName("", false, d), Data: data[:1000]}); err != nil {
		t.Fatal(err)
	}
	select { // the server is streaming into the store
	case <-putStarted:
	case <-ctxT(t).Done():
		t.Fatal("Put never started")
	}
	cancel()
	// RecvMsg, not CloseAndRecv: a half-close racing the cancellation would end the data
	// instead (the server then rejects the short blob, which is a different test).
	err = stream.RecvMsg(new(bspb.WriteResponse))
	wantCode(t, err, codes.Canceled)
	testsupport.WaitFor(t, "the cancelled Write to be counted", 10*time.Second, func() bool {
		return counterValue(t, h.reg, "kura_grpc_requests_total", map[string]string{"method": "/google.bytestream.ByteStream/Write"}) == 1
	})
	if h.casStored("default", data) {
		t.Fatal("a cancelled upload was stored")
	}
	if n := counterValue(t, h.reg, "kura_artifact_writes_total", nil); n != 0 {
		t.Errorf("a cancelled upload was counted as %v artifact writes", n)
	}
	_, err = h.bs.QueryWriteStatus(ctxT(t), &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", false, d)})
	wantCode(t, err, codes.NotFound)
}

// notifyingStore signals when a Put begins.
type notifyingStore struct {
	storage.Store
	putStarted chan struct{}
}

func (s *notifyingStore) Put(ctx context.Context, k storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	select {
	case s.putStarted <- struct{}{}:
	default:
	}
	return s.Store.Put(ctx, k, body, opts)
}

func TestQueryWriteStatus(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	data := randomBlob(1000, 95)
	d := digestOf(data)
	_, err := h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", false, d)})
	wantCode(t, err, codes.NotFound)
	h.upload("q", data)
	resp, err := h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: uploadName("q", false, d)})
	if err != nil || !resp.GetComplete() || resp.GetCommittedSize() != 1000 {
		t.Fatalf("present blob: %v %v", resp, err)
	}
	resp, err = h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: uploadName("q", true, d)})
	if err != nil || !resp.GetComplete() || resp.GetCommittedSize() != -1 {
		t.Fatalf("present blob, compressed name: %v %v", resp, err)
	}
	resp, err = h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", false, digestOf(nil))})
	if err != nil || !resp.GetComplete() {
		t.Fatalf("empty blob: %v %v", resp, err)
	}
	_, err = h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: fmt.Sprintf("q/uploads/u/blobs/%s/999", d.Hash)})
	wantCode(t, err, codes.NotFound)
}
