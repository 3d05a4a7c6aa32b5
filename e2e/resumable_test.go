package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"lukechampine.com/blake3"
)

// resumableBlob is a deterministic random body, its SHA-256 hex and an upload name.
func resumableBlob(size int, seed uint64) ([]byte, string, string) {
	body := make([]byte, size)
	var s [32]byte
	s[0] = byte(seed)
	_, _ = rand.NewChaCha8(s).Read(body)
	sum := sha256.Sum256(body)
	h := hex.EncodeToString(sum[:])
	return body, h, fmt.Sprintf("uploads/%s/blobs/%s/%d", uuid.NewString(), h, size)
}

// writeFrom opens a Write stream on conn at offset off and sends body[off:end] in 1 MiB
// chunks. With finish it sends finish_write and returns the response. Without, it calls cut
// (which cancels the stream or kills the connection) and returns what the stream then says.
func writeFrom(ctx context.Context, conn *grpc.ClientConn, name string, body []byte, off, end int, finish bool, cut func(cancel context.CancelFunc)) (*bspb.WriteResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := bspb.NewByteStreamClient(conn).Write(ctx)
	if err != nil {
		return nil, err
	}
	for first := true; off < end || first; first = false {
		next := min(off+1<<20, end)
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: body[off:next], FinishWrite: finish && next == end}
		if first {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			break // the server answered early: CloseAndRecv says how
		}
		off = next
	}
	if !finish {
		cut(cancel)
	}
	return stream.CloseAndRecv()
}

// awaitCommitted polls QueryWriteStatus until the server reports an unfinished upload with
// more than after bytes (each broken stream is recorded once, as its handler ends) and
// returns that size.
func awaitCommitted(t *testing.T, conn *grpc.ClientConn, name string, after int64) int64 {
	t.Helper()
	var n int64
	PollUntil(t, 30*time.Second, "QueryWriteStatus to report the broken upload", func() (bool, string) {
		resp, err := bspb.NewByteStreamClient(conn).QueryWriteStatus(context.Background(), &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err != nil {
			return false, err.Error()
		}
		if resp.GetComplete() {
			t.Fatalf("an unfinished upload is reported complete: %v", resp)
		}
		n = resp.GetCommittedSize()
		return n > after, resp.String()
	})
	return n
}

// readSHA256 streams a blob over ByteStream Read and returns its SHA-256 hex and size.
func readSHA256(t *testing.T, conn *grpc.ClientConn, resource string) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := bspb.NewByteStreamClient(conn).Read(ctx, &bspb.ReadRequest{ResourceName: resource})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: %v", resource, err)
		}
		h.Write(resp.GetData())
		n += int64(len(resp.GetData()))
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

// httpStatus is the status of a GET on the node.
func httpStatus(t *testing.T, node *Node, path string) int {
	t.Helper()
	resp, err := node.Client(30 * time.Second).Get(node.URL() + path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestByteStreamResumes256MiBUpload cuts a 256 MiB upload twice, once by cancelling the
// stream and once by closing the client's connection, and completes it from the committed
// size QueryWriteStatus reports each time.
func TestByteStreamResumes256MiBUpload(t *testing.T) {
	node := StartNode(t, NodeOptions{})
	body, hash, name := resumableBlob(256<<20, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	conn := plainGRPC(t, node)
	_, err := writeFrom(ctx, conn, name, body, 0, 128<<20, false, func(cancel context.CancelFunc) { cancel() })
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream: %v", err)
	}
	first := awaitCommitted(t, conn, name, 0)
	if first > 128<<20 {
		t.Fatalf("committed %d bytes of the 128 MiB sent", first)
	}
	t.Logf("after the cancelled stream: %d bytes (%.1f MiB) committed", first, float64(first)/(1<<20))
	if got := httpStatus(t, node, "/cas/"+hash); got != http.StatusNotFound {
		t.Fatalf("GET of the partial blob: %d, want 404 (nothing partial is served)", got)
	}

	// The second cut drops the whole connection, as a network failure would.
	conn2 := plainGRPC(t, node)
	_, err = writeFrom(ctx, conn2, name, body, int(first), 200<<20, false, func(context.CancelFunc) { _ = conn2.Close() })
	if err == nil {
		t.Fatal("a stream on a closed connection succeeded")
	}
	second := awaitCommitted(t, conn, name, first)
	t.Logf("after the dropped connection: %d bytes (%.1f MiB) committed", second, float64(second)/(1<<20))

	// A Write elsewhere than the committed size is refused.
	_, err = writeFrom(ctx, conn, name, body, int(second)+1, int(second)+2, true, nil)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("write at a wrong offset: %v, want INVALID_ARGUMENT", err)
	}
	resp, err := writeFrom(ctx, conn, name, body, int(second), len(body), true, nil)
	if err != nil || resp.GetCommittedSize() != int64(len(body)) {
		t.Fatalf("resumed write: %v, %v", resp, err)
	}
	st, err := bspb.NewByteStreamClient(conn).QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || !st.GetComplete() || st.GetCommittedSize() != int64(len(body)) {
		t.Fatalf("status of the finished upload: %v, %v", st, err)
	}
	if got, n := readSHA256(t, conn, fmt.Sprintf("blobs/%s/%d", hash, len(body))); got != hash || n != int64(len(body)) {
		t.Fatalf("read back %d bytes hashing to %s, want %s", n, got, hash)
	}
	t.Logf("256 MiB upload completed after two cuts; the last stream carried %.1f MiB", float64(len(body)-int(second))/(1<<20))
}

// TestByteStreamResumeAfterKill9 kills the server with an upload recorded as partial and with
// a stream in flight: after the restart QueryWriteStatus reports what was durable before the
// in-flight stream (its bytes since were never checkpointed), and the upload completes from
// there.
func TestByteStreamResumeAfterKill9(t *testing.T) {
	node := StartNode(t, NodeOptions{})
	body, hash, name := resumableBlob(64<<20, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn := plainGRPC(t, node)
	if _, err := writeFrom(ctx, conn, name, body, 0, 24<<20, false, func(c context.CancelFunc) { c() }); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream: %v", err)
	}
	durable := awaitCommitted(t, conn, name, 0)

	// A stream in flight when the process dies.
	inFlight, stop := context.WithCancel(ctx)
	defer stop()
	stream, err := bspb.NewByteStreamClient(conn).Write(inFlight)
	if err != nil {
		t.Fatal(err)
	}
	for off := int(durable); off < int(durable)+16<<20; off += 1 << 20 {
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: body[off : off+1<<20]}
		if off == int(durable) {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	node.Kill()
	stop()
	node.Restart()

	conn = plainGRPC(t, node)
	st, err := bspb.NewByteStreamClient(conn).QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || st.GetComplete() || st.GetCommittedSize() != durable {
		t.Fatalf("status after kill -9: %v, %v; want %d bytes, not complete", st, err, durable)
	}
	resp, err := writeFrom(ctx, conn, name, body, int(durable), len(body), true, nil)
	if err != nil || resp.GetCommittedSize() != int64(len(body)) {
		t.Fatalf("write resumed after the restart: %v, %v", resp, err)
	}
	if got, n := readSHA256(t, conn, fmt.Sprintf("blobs/%s/%d", hash, len(body))); got != hash || n != int64(len(body)) {
		t.Fatalf("read back %d bytes hashing to %s, want %s", n, got, hash)
	}
}

// TestBLAKE3AgainstANode drives the BLAKE3 digest function of a real kura process with the
// REAPI client (Bazel 4.2 cannot send BLAKE3): capabilities, batches, FindMissingBlobs, a
// resumable ByteStream upload, and the separate identity of BLAKE3 and SHA-256 names.
func TestBLAKE3AgainstANode(t *testing.T) {
	node := StartNode(t, NodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn := plainGRPC(t, node)
	caps, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if fns := caps.GetCacheCapabilities().GetDigestFunctions(); len(fns) != 2 || fns[1] != repb.DigestFunction_BLAKE3 {
		t.Fatalf("digest_functions %v, want SHA256 and BLAKE3", fns)
	}
	b3 := func(data []byte) *repb.Digest {
		sum := blake3.Sum256(data)
		return &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
	}
	cas := repb.NewContentAddressableStorageClient(conn)
	small := []byte("a small BLAKE3 blob")
	up, err := cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: b3(small), Data: small}}})
	if err != nil || up.GetResponses()[0].GetStatus().GetCode() != 0 {
		t.Fatalf("BatchUpdateBlobs: %v, %v", up, err)
	}
	big, _, _ := resumableBlob(20<<20, 3)
	bigD := b3(big)
	name := fmt.Sprintf("uploads/%s/blobs/blake3/%s/%d", uuid.NewString(), bigD.GetHash(), len(big))
	if _, err := writeFrom(ctx, conn, name, big, 0, 8<<20, false, func(c context.CancelFunc) { c() }); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream: %v", err)
	}
	n := awaitCommitted(t, conn, name, 0)
	if resp, err := writeFrom(ctx, conn, name, big, int(n), len(big), true, nil); err != nil || resp.GetCommittedSize() != int64(len(big)) {
		t.Fatalf("resumed BLAKE3 write: %v, %v", resp, err)
	}
	missing, err := cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3,
		BlobDigests: []*repb.Digest{b3(small), bigD, b3(nil), b3([]byte("never stored"))}})
	if err != nil || len(missing.GetMissingBlobDigests()) != 1 {
		t.Fatalf("FindMissingBlobs BLAKE3: %v, %v", missing, err)
	}
	sha, _ := readSHA256(t, conn, fmt.Sprintf("blobs/blake3/%s/%d", bigD.GetHash(), len(big)))
	if want := sha256.Sum256(big); sha != hex.EncodeToString(want[:]) {
		t.Fatal("the BLAKE3 blob read back differs")
	}
	// The same hex as SHA-256, over gRPC and over the Bazel HTTP cache, names nothing.
	missing, err = cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{b3(small), bigD}})
	if err != nil || len(missing.GetMissingBlobDigests()) != 2 {
		t.Fatalf("BLAKE3 blobs found as SHA-256: %v, %v", missing, err)
	}
	if got := httpStatus(t, node, "/cas/"+bigD.GetHash()); got != http.StatusNotFound {
		t.Fatalf("GET /cas/ of a BLAKE3 hex: %d, want 404", got)
	}
	// A body that is not what its BLAKE3 digest says is refused and not stored.
	bad := bytes.Clone(small)
	bad[0] ^= 1
	up, err = cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: b3(small), Data: bad}, {Digest: b3(bad), Data: small}}})
	if err != nil || up.GetResponses()[1].GetStatus().GetCode() != int32(codes.InvalidArgument) {
		t.Fatalf("mismatching BLAKE3 item: %v, %v", up, err)
	}
	_, err = cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_MD5, BlobDigests: []*repb.Digest{b3(small)}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("MD5: %v, want INVALID_ARGUMENT", err)
	}
}
