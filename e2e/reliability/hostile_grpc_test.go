package reliability

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// Item 8 over gRPC and across a cluster: decompression bombs, bodies that do not hash to the
// digest they claim, and messages over the receive limit.

// grpcConn dials addr in plaintext (the hostile nodes serve no TLS); closed with the test.
func grpcConn(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(256<<20), grpc.MaxCallRecvMsgSize(64<<20))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func rpcContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// zstdOf compresses n zero bytes: about 1:10,000, the shape of a decompression bomb.
func zstdOf(t *testing.T, n int64) []byte {
	t.Helper()
	var out bytes.Buffer
	enc, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(enc, zeroReader{}, n); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// casMissing asks a node's REAPI which of the digests it lacks.
func casMissing(t *testing.T, conn *grpc.ClientConn, digests ...*repb.Digest) map[string]bool {
	t.Helper()
	resp, err := repb.NewContentAddressableStorageClient(conn).FindMissingBlobs(rpcContext(t), &repb.FindMissingBlobsRequest{BlobDigests: digests})
	if err != nil {
		t.Fatal(err)
	}
	missing := map[string]bool{}
	for _, d := range resp.GetMissingBlobDigests() {
		missing[d.GetHash()] = true
	}
	return missing
}

// TestReliabilityHostileZstdBomb sends compressed blobs that decompress far past their
// declared size, over ByteStream Write and BatchUpdateBlobs: each is refused with
// INVALID_ARGUMENT, nothing is stored, and the node's memory does not follow the bomb.
func TestReliabilityHostileZstdBomb(t *testing.T) {
	node := harness.StartNode(t, harness.NodeOptions{})
	conn := grpcConn(t, node.GRPCAddr())
	const declared = 1 << 20
	bombSize := figures.Pick(int64(512<<20), int64(4<<30))
	bomb := zstdOf(t, bombSize)
	// The declared digest is that of the first declared bytes: a decoder that stopped late
	// would find it matching.
	digest := &repb.Digest{Hash: sha256Hex(make([]byte, declared)), SizeBytes: declared}
	t.Logf("bomb: %d bytes of zstd expanding to %d MiB, declared as %d bytes", len(bomb), bombSize>>20, declared)

	rssBefore, err := node.RSSBytes()
	if err != nil {
		t.Fatal(err)
	}
	stopped := 0
	start := time.Now()
	// ByteStream Write on compressed-blobs/zstd.
	w, err := bspb.NewByteStreamClient(conn).Write(rpcContext(t))
	if err != nil {
		t.Fatal(err)
	}
	resource := fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s/%d", uuid.NewString(), digest.Hash, digest.SizeBytes)
	const chunk = 64 << 10
	for off := 0; off < len(bomb); off += chunk {
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: bomb[off:min(off+chunk, len(bomb))], FinishWrite: off+chunk >= len(bomb)}
		if off == 0 {
			req.ResourceName = resource
		}
		if w.Send(req) != nil {
			break // refused mid-stream; CloseAndRecv has the status
		}
	}
	_, err = w.CloseAndRecv()
	bsTook := time.Since(start)
	if status.Code(err) == codes.InvalidArgument {
		stopped++
	} else {
		t.Errorf("ByteStream Write of a zstd bomb: %v, want INVALID_ARGUMENT", err)
	}
	t.Logf("ByteStream Write: %v after %v", err, bsTook)

	// BatchUpdateBlobs with a zstd item.
	start = time.Now()
	resp, err := repb.NewContentAddressableStorageClient(conn).BatchUpdateBlobs(rpcContext(t), &repb.BatchUpdateBlobsRequest{
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: digest, Data: bomb, Compressor: repb.Compressor_ZSTD}},
	})
	batchTook := time.Since(start)
	switch {
	case err != nil:
		t.Errorf("BatchUpdateBlobs of a zstd bomb: %v, want a per-item INVALID_ARGUMENT", err)
	case codes.Code(resp.GetResponses()[0].GetStatus().GetCode()) != codes.InvalidArgument:
		t.Errorf("BatchUpdateBlobs of a zstd bomb: item status %v, want INVALID_ARGUMENT", resp.GetResponses()[0].GetStatus())
	default:
		stopped++
		t.Logf("BatchUpdateBlobs: %v after %v", resp.GetResponses()[0].GetStatus(), batchTook)
	}
	rssAfter, err := node.RSSBytes()
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	if !casMissing(t, conn, digest)[digest.Hash] {
		stored++
	}
	figures.Check(t, hostileItem, fmt.Sprintf("zstd bombs (%d MiB declared as 1 MiB) stopped with INVALID_ARGUMENT", bombSize>>20), fmt.Sprintf("%d/2", stopped), "2/2")
	figures.Check(t, hostileItem, "zstd bombs stored", stored, 0)
	figures.Report(t, hostileItem, "time to stop a zstd bomb (ByteStream / batch)", fmt.Sprintf("%v / %v", bsTook.Round(time.Millisecond), batchTook.Round(time.Millisecond)))
	// Decoding the bomb whole would take seconds and its size in memory; stopping at the
	// declared size costs milliseconds and the decoder's window.
	growth := rssAfter - rssBefore
	bound := int64(128 << 20)
	figures.Record(t, hostileItem, "RSS growth while refusing the zstd bombs", fmt.Sprintf("%.1f MiB", float64(growth)/(1<<20)), fmt.Sprintf("<= %d MiB", bound>>20), growth <= bound)
	if growth > bound {
		t.Errorf("RSS grew by %d MiB refusing a bomb", growth>>20)
	}
}

// TestReliabilityHostileDigestMismatch runs two nodes and sends, on the first, bodies that do
// not hash to the digest they name (Bazel HTTP /cas/, BatchUpdateBlobs, ByteStream Write),
// then a good blob; once the good blob has reached the second node (so replication ran past
// the bad ones) and both nodes have finished anti-entropy sweeps, neither node holds any bad
// digest, under the claimed hash or the real one.
func TestReliabilityHostileDigestMismatch(t *testing.T) {
	nodes := harness.StartCluster(t, 2, func(_ int, o *harness.NodeOptions) {
		o.Env = map[string]string{"KURA_ANTI_ENTROPY_INTERVAL_MS": "1000", "KURA_GOSSIP_REJOIN_INTERVAL_MS": "1000"}
	})
	a, b := nodes[0], nodes[1]
	harness.PollUntil(t, 60*time.Second, "the two nodes see each other", func() (bool, string) {
		for _, n := range nodes {
			up, err := n.Up(context.Background())
			if err != nil || len(up.ConnectedNodes) != 1 {
				return false, fmt.Sprintf("%s: %v %v", n.Name, up.ConnectedNodes, err)
			}
		}
		return true, ""
	})
	reapiA := grpcConn(t, a.GRPCAddr())
	var bad []*repb.Digest // claimed digests; the real hashes are checked too
	var real []string
	refused := 0
	attempt := func(what string, ok bool, detail any) {
		if ok {
			refused++
		} else {
			t.Errorf("%s: %v, want a refusal", what, detail)
		}
	}

	// Bazel HTTP /cas/: the body hashes to something else.
	body := []byte("http cas body that is not what its key says " + uniqueID(t))
	claimed := sha256Hex([]byte("something else " + uniqueID(t)))
	req, _ := http.NewRequest(http.MethodPut, a.URL()+"/cas/"+claimed, bytes.NewReader(body))
	resp, err := a.Client(30 * time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	attempt("HTTP PUT /cas/ with a wrong hash", resp.StatusCode >= 400 && resp.StatusCode < 500, resp.StatusCode)
	bad, real = append(bad, &repb.Digest{Hash: claimed, SizeBytes: int64(len(body))}), append(real, sha256Hex(body))

	// BatchUpdateBlobs: a wrong hash, and a right hash with a wrong size.
	body2 := []byte("batch body " + uniqueID(t))
	body3 := []byte("batch body with a lying size " + uniqueID(t))
	wrongHash := &repb.Digest{Hash: sha256Hex([]byte("not body2 " + uniqueID(t))), SizeBytes: int64(len(body2))}
	wrongSize := &repb.Digest{Hash: sha256Hex(body3), SizeBytes: int64(len(body3)) + 1}
	batch, err := repb.NewContentAddressableStorageClient(reapiA).BatchUpdateBlobs(rpcContext(t), &repb.BatchUpdateBlobsRequest{
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: wrongHash, Data: body2}, {Digest: wrongSize, Data: body3}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range batch.GetResponses() {
		attempt(fmt.Sprintf("BatchUpdateBlobs item %d", i), codes.Code(r.GetStatus().GetCode()) == codes.InvalidArgument, r.GetStatus())
	}
	bad, real = append(bad, wrongHash, wrongSize), append(real, sha256Hex(body2), sha256Hex(body3))

	// ByteStream Write: a wrong hash.
	body4 := bytes.Repeat([]byte("bytestream "+uniqueID(t)), 1000)
	wrong4 := &repb.Digest{Hash: sha256Hex([]byte("not body4 " + uniqueID(t))), SizeBytes: int64(len(body4))}
	attempt("ByteStream Write with a wrong hash", status.Code(byteStreamWrite(t, reapiA, wrong4, body4)) == codes.InvalidArgument, "")
	bad, real = append(bad, wrong4), append(real, sha256Hex(body4))

	// A good blob after the bad ones: when it is on B, the outbox has carried everything A
	// accepted before it.
	good := []byte("the good blob " + uniqueID(t))
	goodDigest := &repb.Digest{Hash: sha256Hex(good), SizeBytes: int64(len(good))}
	if err := byteStreamWrite(t, reapiA, goodDigest, good); err != nil {
		t.Fatalf("ByteStream Write of a good blob: %v", err)
	}
	internalB := peerpb.NewReplicationClient(grpcConn(t, b.InternalAddr()))
	casKey := func(hash string) *peerpb.ObjectKey {
		return &peerpb.ObjectKey{Tenant: "default", Namespace: "default", Kind: "cas", Name: hash}
	}
	harness.PollUntil(t, 60*time.Second, "the good blob replicated to B", func() (bool, string) {
		found, err := internalB.FindObjects(rpcContext(t), &peerpb.FindObjectsRequest{Keys: []*peerpb.ObjectKey{casKey(goodDigest.Hash)}})
		if err != nil {
			return false, err.Error()
		}
		return len(found.GetPresent()) == 1, fmt.Sprintf("%d present", len(found.GetPresent()))
	})
	// Two more anti-entropy sweeps on each node: a bad object held anywhere would be pulled.
	sweeps := func(n *harness.Node) float64 {
		return harness.ScrapeMetrics(t, n).Sum("kura_antientropy_runs_total", nil)
	}
	startA, startB := sweeps(a), sweeps(b)
	harness.PollUntil(t, 60*time.Second, "two anti-entropy sweeps on each node", func() (bool, string) {
		ga, gb := sweeps(a), sweeps(b)
		return ga >= startA+2 && gb >= startB+2, fmt.Sprintf("A %v→%v, B %v→%v", startA, ga, startB, gb)
	})

	var keys []*peerpb.ObjectKey
	for i, d := range bad {
		keys = append(keys, casKey(d.Hash), casKey(real[i]))
	}
	stored := 0
	for _, n := range nodes {
		found, err := peerpb.NewReplicationClient(grpcConn(t, n.InternalAddr())).FindObjects(rpcContext(t), &peerpb.FindObjectsRequest{Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range found.GetPresent() {
			stored++
			t.Errorf("%s stores %s, written with a digest it does not match", n.Name, h.GetKey().GetName())
		}
	}
	attempts := len(bad)
	figures.Check(t, hostileItem, "digest mismatches refused", fmt.Sprintf("%d/%d", refused, attempts), fmt.Sprintf("%d/%d", attempts, attempts))
	figures.Check(t, hostileItem, "digest mismatches stored or replicated (2 nodes, claimed and real hash)", stored, 0)
}

// byteStreamWrite uploads body under d in one stream and returns the status.
func byteStreamWrite(t *testing.T, conn *grpc.ClientConn, d *repb.Digest, body []byte) error {
	t.Helper()
	w, err := bspb.NewByteStreamClient(conn).Write(rpcContext(t))
	if err != nil {
		return err
	}
	err = w.Send(&bspb.WriteRequest{ResourceName: fmt.Sprintf("uploads/%s/blobs/%s/%d", uuid.NewString(), d.Hash, d.SizeBytes), Data: body, FinishWrite: true})
	if err != nil && err != io.EOF {
		return err
	}
	_, err = w.CloseAndRecv()
	return err
}

// TestReliabilityHostileGRPCOverLimit sends messages over the receive limits: a
// BatchUpdateBlobs larger than the REAPI's advertised batch size plus framing, and an
// internal-plane push chunk larger than the plane's; both are RESOURCE_EXHAUSTED and store
// nothing.
func TestReliabilityHostileGRPCOverLimit(t *testing.T) {
	node := harness.StartNode(t, harness.NodeOptions{})
	conn := grpcConn(t, node.GRPCAddr())
	caps, err := repb.NewCapabilitiesClient(conn).GetCapabilities(rpcContext(t), &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	maxBatch := caps.GetCacheCapabilities().GetMaxBatchTotalSizeBytes()
	big := bytes.Repeat([]byte("x"), int(maxBatch)+4<<20) // past the batch limit and its 1 MiB of framing headroom
	bigDigest := &repb.Digest{Hash: sha256Hex(big), SizeBytes: int64(len(big))}
	refused := 0
	_, err = repb.NewContentAddressableStorageClient(conn).BatchUpdateBlobs(rpcContext(t), &repb.BatchUpdateBlobsRequest{
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: bigDigest, Data: big}},
	})
	if status.Code(err) == codes.ResourceExhausted {
		refused++
	} else {
		t.Errorf("BatchUpdateBlobs of %d bytes (max batch %d): %v, want RESOURCE_EXHAUSTED", len(big), maxBatch, err)
	}
	t.Logf("REAPI: %d-byte message: %v", len(big), status.Code(err))

	// The internal plane (open on this node, no key): a push whose chunk is over the limit.
	internal := peerpb.NewReplicationClient(grpcConn(t, node.InternalAddr()))
	chunk := bytes.Repeat([]byte("y"), 8<<20)
	sum := sha256.Sum256(chunk)
	push, err := internal.PushObject(rpcContext(t))
	if err != nil {
		t.Fatal(err)
	}
	hdr := &peerpb.ObjectHeader{
		Key:  &peerpb.ObjectKey{Tenant: "default", Namespace: "hostile", Kind: "gradle", Name: "oversize-chunk"},
		Size: int64(len(chunk)), ContentType: "application/octet-stream", Sha256: sum[:], Version: uint64(time.Now().UnixMilli()) << 16,
	}
	if push.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Header{Header: hdr}}) == nil {
		_ = push.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Chunk{Chunk: chunk}})
	}
	_, err = push.CloseAndRecv()
	if status.Code(err) == codes.ResourceExhausted {
		refused++
	} else {
		t.Errorf("internal PushObject with an 8 MiB chunk: %v, want RESOURCE_EXHAUSTED", err)
	}
	t.Logf("internal plane: 8 MiB chunk: %v", status.Code(err))
	found, err := internal.FindObjects(rpcContext(t), &peerpb.FindObjectsRequest{Keys: []*peerpb.ObjectKey{hdr.Key}})
	if err != nil {
		t.Fatal(err)
	}
	stored := len(found.GetPresent())
	if !casMissing(t, conn, bigDigest)[bigDigest.Hash] {
		stored++
	}
	figures.Check(t, hostileItem, "gRPC messages over the limit refused (RESOURCE_EXHAUSTED)", fmt.Sprintf("%d/2", refused), "2/2")
	figures.Check(t, hostileItem, "gRPC messages over the limit stored", stored, 0)
}
