package reapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"

	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/outbox/antientropy"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

type staticPeers []antientropy.Peer

func (p staticPeers) Peers() []antientropy.Peer { return p }

// clusterHarness is a server wired as a node wires it: the read path reads through to the
// peers at addrs over the real internal-plane client, the write path gets the raw store.
func clusterHarness(t *testing.T, addrs ...string) (*harness, *antientropy.ReadThrough) {
	t.Helper()
	client := peer.NewClient(peer.ClientConfig{})
	t.Cleanup(func() { _ = client.Close() })
	var peers staticPeers
	for _, a := range addrs {
		peers = append(peers, antientropy.Peer{Name: a, Region: "eu", Addr: a})
	}
	var rt *antientropy.ReadThrough
	h := newHarnessWith(t, Config{}, nil, func(d *Deps) {
		var err error
		rt, err = antientropy.NewReadThrough(d.Store, client, peers, "eu", antientropy.ReadThroughOptions{
			PeerTimeout: 200 * time.Millisecond, FindTimeout: 200 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		d.Local, d.Store = d.Store, rt
	})
	t.Cleanup(func() { _ = rt.Close() }) // runs before the client closes
	return h, rt
}

// Uploads never ask peers whether a blob exists (docs/contract.md §5): with a peer that hangs, every
// write RPC is answered from the local store and the peer receives no call.
func TestWritesNeverAskPeers(t *testing.T) {
	hung := testsupport.NewHangingPeer(t)
	h, _ := clusterHarness(t, hung.Addr)
	ctx := ctxT(t)

	blob := randomBlob(3000, 1)
	d := digestOf(blob)
	if resp, err := h.write(ctx, uploadName("", false, d), blob, 1000); err != nil || resp.GetCommittedSize() != d.GetSizeBytes() {
		t.Fatalf("Write of a new blob = %v, %v", resp, err)
	}
	if resp, err := h.write(ctx, uploadName("", false, d), blob, 1000); err != nil || resp.GetCommittedSize() != d.GetSizeBytes() {
		t.Fatalf("Write of a blob already here = %v, %v", resp, err)
	}
	if _, err := h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", false, digestOf([]byte("never")))}); err == nil {
		t.Fatal("QueryWriteStatus of an unknown upload succeeded")
	}
	h.upload("", randomBlob(100, 2), randomBlob(200, 3))
	ar := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "out", Digest: d}}}
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: digestOf([]byte("action")), ActionResult: ar}); err != nil {
		t.Fatalf("UpdateActionResult: %v", err)
	}
	if n := hung.Total(); n != 0 {
		t.Fatalf("the hanging peer got %d calls from uploads; want none", n)
	}
}

// FindMissingBlobs and the completeness check count what a live peer holds: a blob only the
// peer has is not reported missing (one FindObjects call), an action result whose outputs
// are on the peer is a hit, and the blobs are pulled here in the background. A hanging peer
// cannot stall the answer: its blobs are simply reported missing.
func TestFindMissingAsksPeers(t *testing.T) {
	other := storagetest.NewMemory()
	srv := peer.NewServer(peer.ServerConfig{}, other)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Stop(ctx)
		<-served
	})
	hung := testsupport.NewHangingPeer(t)
	h, _ := clusterHarness(t, ln.Addr().String(), hung.Addr)
	ctx := ctxT(t)

	onPeer, local, nowhere := randomBlob(500, 10), randomBlob(600, 11), randomBlob(700, 12)
	putOn(t, other, onPeer)
	h.upload("", local)
	resp, err := h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		BlobDigests: []*repb.Digest{digestOf(onPeer), digestOf(local), digestOf(nowhere)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m := resp.GetMissingBlobDigests(); len(m) != 1 || m[0].GetHash() != digestOf(nowhere).GetHash() {
		t.Fatalf("missing %v, want only the blob no node has", m)
	}
	if n := hung.Calls("FindObjects"); n != 1 {
		t.Fatalf("the hanging peer got %d FindObjects calls, want 1 (batched)", n)
	}
	testsupport.WaitFor(t, "the background pull of the blob the peer holds", 10*time.Second, func() bool { return h.casStored("default", onPeer) })

	// An action result stored here whose output is only on the peer is a hit.
	out := randomBlob(800, 13)
	putOn(t, other, out)
	ar := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "out", Digest: digestOf(out)}}}
	action := digestOf([]byte("the action"))
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: ar}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action}); err != nil {
		t.Fatalf("GetActionResult with the output on a peer: %v, want a hit", err)
	}
	// Its output is then local (or on its way): a ByteStream read gets the bytes.
	data, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, digestOf(out))})
	if err != nil || !bytes.Equal(data, out) {
		t.Fatalf("read of the output: %d bytes, %v", len(data), err)
	}

	// Missing on every node: the completeness check still answers NOT_FOUND.
	ghost := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "out", Digest: digestOf(nowhere)}}}
	ghostAction := digestOf([]byte("ghost action"))
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: ghostAction, ActionResult: ghost}); err != nil {
		t.Fatal(err)
	}
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: ghostAction})
	wantCode(t, err, codes.NotFound)
}

// putOn stores a CAS blob in another node's store, as its own upload would.
func putOn(t *testing.T, s storage.Store, blob []byte) {
	t.Helper()
	sum := sha256.Sum256(blob)
	k := storage.Key{Tenant: testTenant, Namespace: "default", Kind: storage.KindCAS, Name: hex.EncodeToString(sum[:])}
	if _, err := s.Put(context.Background(), k, bytes.NewReader(blob), storage.PutOptions{Size: int64(len(blob)), ExpectedSHA256: &sum}); err != nil {
		t.Fatal(err)
	}
}
