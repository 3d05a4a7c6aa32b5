package reapi

import (
	"bytes"
	"context"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/kuracache/kura/storage"
)

// TestBatchUpdateBlobsOnDisk: over the disk store a batch is one PutBatch; each item still
// gets its own status (a bad item fails alone) and every good one reads back.
func TestBatchUpdateBlobsOnDisk(t *testing.T) {
	h := newDiskHarness(t)
	good := randomBlob(1000, 1)
	other := randomBlob(2000, 2)
	compressed := randomBlob(3000, 3)
	badHash := randomBlob(500, 4)
	wrongDigest := digestOf(randomBlob(500, 5))
	short := randomBlob(700, 6)
	shortDigest := digestOf(short)
	shortDigest.SizeBytes = 701
	empty := []byte{}
	req := &repb.BatchUpdateBlobsRequest{InstanceName: "main", Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: digestOf(good), Data: good},
		{Digest: &repb.Digest{Hash: wrongDigest.GetHash(), SizeBytes: 500}, Data: badHash},
		{Digest: shortDigest, Data: short},
		{Digest: digestOf(empty), Data: empty},
		{Digest: digestOf(compressed), Data: zstdCompress(t, compressed), Compressor: repb.Compressor_ZSTD},
		{Digest: &repb.Digest{Hash: "not-hex", SizeBytes: 1}, Data: []byte("x")},
		{Digest: digestOf(other), Data: other},
		{Digest: digestOf(good), Data: good}, // twice in one batch
	}}
	resp, err := h.cas.BatchUpdateBlobs(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.InvalidArgument, codes.InvalidArgument, codes.OK, codes.OK, codes.InvalidArgument, codes.OK, codes.OK}
	for i, r := range resp.GetResponses() {
		if got := codes.Code(r.GetStatus().GetCode()); got != want[i] {
			t.Errorf("item %d: %v, want %v", i, r.GetStatus(), want[i])
		}
		if r.GetDigest().GetHash() != req.Requests[i].GetDigest().GetHash() {
			t.Errorf("item %d answers for %s", i, r.GetDigest().GetHash())
		}
	}
	for _, b := range [][]byte{good, other, compressed} {
		d, _ := fnSHA256.parse(digestOf(b))
		got, err := h.stored(casKey(testTenant, "main", d))
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("blob %s reads %d bytes, %v", d, len(got), err)
		}
	}
	for _, pd := range []*repb.Digest{wrongDigest, shortDigest} {
		d, _ := fnSHA256.parse(pd)
		if _, err := h.store.Stat(context.Background(), casKey(testTenant, "main", d)); err == nil {
			t.Errorf("refused blob %s was stored", d)
		}
	}
}

// stored reads what the store holds under key, around the server.
func (h *harness) stored(key storage.Key) ([]byte, error) {
	r, err := h.store.Open(context.Background(), key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(r)
	return buf.Bytes(), err
}
