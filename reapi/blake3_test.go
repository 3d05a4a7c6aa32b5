package reapi

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"lukechampine.com/blake3"
)

// BLAKE3 is exercised through the project's own client over loopback gRPC, against a real
// disk store: Bazel 4.2 cannot send it.

const blake3Fn = repb.DigestFunction_BLAKE3

func blake3Of(data []byte) *repb.Digest {
	sum := blake3.Sum256(data)
	return &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
}

func blake3UploadName(instance string, compressed bool, d *repb.Digest) string {
	kind := "blobs"
	if compressed {
		kind = "compressed-blobs/zstd"
	}
	name := fmt.Sprintf("uploads/3b2e7d0c-5d1e-4c55-8c5e-0b9f1a2c3d4e/%s/blake3/%s/%d", kind, d.GetHash(), d.GetSizeBytes())
	if instance != "" {
		name = instance + "/" + name
	}
	return name
}

func blake3ReadName(compressed bool, d *repb.Digest) string {
	if compressed {
		return fmt.Sprintf("compressed-blobs/zstd/blake3/%s/%d", d.GetHash(), d.GetSizeBytes())
	}
	return fmt.Sprintf("blobs/blake3/%s/%d", d.GetHash(), d.GetSizeBytes())
}

func TestBLAKE3EmptyBlobIsKnown(t *testing.T) {
	// The library's empty hash is the published BLAKE3 of zero bytes.
	if got := blake3Of(nil).GetHash(); got != "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" {
		t.Fatalf("BLAKE3 of nothing = %s", got)
	}
	h := newDiskHarness(t)
	ctx := ctxT(t)
	resp, err := h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: blake3Fn, BlobDigests: []*repb.Digest{blake3Of(nil)}})
	if err != nil || len(resp.GetMissingBlobDigests()) != 0 {
		t.Fatalf("empty BLAKE3 blob: %v, %v", resp, err)
	}
	data, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: blake3ReadName(false, blake3Of(nil))})
	if err != nil || len(data) != 0 {
		t.Fatalf("read of the empty BLAKE3 blob: %q, %v", data, err)
	}
	// The SHA-256 empty hash under BLAKE3 is an ordinary (missing) blob of size 0.
	resp, err = h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: blake3Fn, BlobDigests: []*repb.Digest{digestOf(nil)}})
	if err != nil || len(resp.GetMissingBlobDigests()) != 1 {
		t.Fatalf("SHA-256 empty hash as a BLAKE3 digest: %v, %v", resp, err)
	}
}

func TestBLAKE3BatchesAreASeparateIdentity(t *testing.T) {
	h := newDiskHarness(t)
	ctx := ctxT(t)
	blob := []byte("hashed with blake3")
	b3 := blake3Of(blob)
	// A SHA-256 digest with BLAKE3's hex: the same name in a naive store.
	sameHex := &repb.Digest{Hash: b3.GetHash(), SizeBytes: b3.GetSizeBytes()}

	up, err := h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: blake3Fn, Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: b3, Data: blob},
		{Digest: digestOf(blob), Data: blob}, // SHA-256 hash sent as BLAKE3: refused
		{Digest: blake3Of([]byte("zstd item")), Data: zstdCompress(t, []byte("zstd item")), Compressor: repb.Compressor_ZSTD},
		{Digest: blake3Of([]byte("zstd liar")), Data: zstdCompress(t, []byte("zstd other")), Compressor: repb.Compressor_ZSTD},
	}})
	if err != nil {
		t.Fatal(err)
	}
	wantItemCode(t, up.GetResponses()[0].GetStatus(), codes.OK)
	wantItemCode(t, up.GetResponses()[1].GetStatus(), codes.InvalidArgument)
	wantItemCode(t, up.GetResponses()[2].GetStatus(), codes.OK)
	wantItemCode(t, up.GetResponses()[3].GetStatus(), codes.InvalidArgument)

	missing := func(fn repb.DigestFunction_Value, ds ...*repb.Digest) int {
		t.Helper()
		resp, err := h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: fn, BlobDigests: ds})
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.GetMissingBlobDigests())
	}
	if n := missing(blake3Fn, b3, blake3Of([]byte("zstd item"))); n != 0 {
		t.Fatalf("%d stored BLAKE3 blobs reported missing", n)
	}
	if n := missing(blake3Fn, digestOf(blob), blake3Of([]byte("zstd liar"))); n != 2 {
		t.Fatalf("refused blobs: %d missing, want 2", n)
	}
	if n := missing(repb.DigestFunction_SHA256, sameHex); n != 1 {
		t.Fatal("a BLAKE3 blob is found under SHA-256 with the same hex")
	}
	if n := missing(repb.DigestFunction_UNKNOWN, sameHex); n != 1 {
		t.Fatal("an unset digest function is not SHA-256")
	}

	rd, err := h.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{DigestFunction: blake3Fn, Digests: []*repb.Digest{b3}})
	if err != nil || !bytes.Equal(rd.GetResponses()[0].GetData(), blob) {
		t.Fatalf("BatchReadBlobs BLAKE3: %v, %v", rd, err)
	}
	rd, err = h.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{sameHex}})
	if err != nil {
		t.Fatal(err)
	}
	wantItemCode(t, rd.GetResponses()[0].GetStatus(), codes.NotFound)

	// And the other way round: a SHA-256 blob is not a BLAKE3 one.
	h.upload("", blob)
	if n := missing(blake3Fn, &repb.Digest{Hash: digestOf(blob).GetHash(), SizeBytes: int64(len(blob))}); n != 1 {
		t.Fatal("a SHA-256 blob is found under BLAKE3 with the same hex")
	}
}

func TestBLAKE3ByteStream(t *testing.T) {
	h, _ := newResumableHarness(t)
	ctx := ctxT(t)
	for _, size := range []int{1000, 300 << 10} { // direct and resumable uploads
		blob := randomBlob(size, uint64(size))
		d := blake3Of(blob)
		resp, err := h.write(ctx, blake3UploadName("b3", false, d), blob, 64<<10)
		if err != nil || resp.GetCommittedSize() != int64(size) {
			t.Fatalf("write %d bytes: %v, %v", size, resp, err)
		}
		got, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: "b3/" + blake3ReadName(false, d)})
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("read back %d of %d bytes: %v", len(got), size, err)
		}
		got, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: "b3/" + blake3ReadName(true, d)})
		if err != nil || !bytes.Equal(zstdDecompress(t, got), blob) {
			t.Fatalf("compressed read of %d bytes: %v", size, err)
		}
		// Not readable as SHA-256 with the same hex.
		_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: "b3/" + readName("", false, d)})
		wantCode(t, err, codes.NotFound)
		st, err := h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: blake3UploadName("b3", false, d)})
		if err != nil || !st.GetComplete() {
			t.Fatalf("status: %v, %v", st, err)
		}

		// Data that does not hash to the digest is refused, for both paths.
		bad := bytes.Clone(blob)
		bad[0] ^= 0xff
		badName := blake3UploadName("b3", false, &repb.Digest{Hash: blake3Of(blob).GetHash(), SizeBytes: int64(size)})
		_, err = h.write(ctx, "bad"+badName[2:], bad, 64<<10) // another instance, where nothing is stored
		wantCode(t, err, codes.InvalidArgument)
		_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: "bad/" + blake3ReadName(false, d)})
		wantCode(t, err, codes.NotFound)
	}
	// Compressed uploads are verified with BLAKE3 too.
	blob := randomBlob(5000, 99)
	d := blake3Of(blob)
	if _, err := h.write(ctx, blake3UploadName("z", true, d), zstdCompress(t, blob), 1<<10); err != nil {
		t.Fatal(err)
	}
	got, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: "z/" + blake3ReadName(false, d)})
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("compressed upload read back: %v", err)
	}
	_, err = h.write(ctx, blake3UploadName("z2", true, d), zstdCompress(t, randomBlob(5000, 98)), 1<<10)
	wantCode(t, err, codes.InvalidArgument)
}

func TestBLAKE3ActionCacheAndTree(t *testing.T) {
	h := newDiskHarness(t)
	ctx := ctxT(t)
	out := []byte("output of a BLAKE3 action")
	file := []byte("a file in a tree")
	child := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: blake3Of(file)}}}
	childBlob, _ := proto.Marshal(child)
	root := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: blake3Of(childBlob)}}}
	rootBlob, _ := proto.Marshal(root)
	tree := &repb.Tree{Root: root, Children: []*repb.Directory{child}}
	treeBlob, _ := proto.Marshal(tree)
	var reqs []*repb.BatchUpdateBlobsRequest_Request
	for _, b := range [][]byte{out, childBlob, rootBlob, treeBlob} {
		reqs = append(reqs, &repb.BatchUpdateBlobsRequest_Request{Digest: blake3Of(b), Data: b})
	}
	if _, err := h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: blake3Fn, Requests: reqs}); err != nil {
		t.Fatal(err)
	}
	action := blake3Of([]byte("action"))
	ar := &repb.ActionResult{
		OutputFiles:       []*repb.OutputFile{{Path: "out", Digest: blake3Of(out)}},
		OutputDirectories: []*repb.OutputDirectory{{Path: "dir", TreeDigest: blake3Of(treeBlob)}},
	}
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{DigestFunction: blake3Fn, ActionDigest: action, ActionResult: ar}); err != nil {
		t.Fatal(err)
	}
	// The tree's file is missing: not a hit.
	_, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{DigestFunction: blake3Fn, ActionDigest: action})
	wantCode(t, err, codes.NotFound)
	if _, err := h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: blake3Fn,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: blake3Of(file), Data: file}}}); err != nil {
		t.Fatal(err)
	}
	got, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{DigestFunction: blake3Fn, ActionDigest: action, InlineOutputFiles: []string{"out"}})
	if err != nil || !bytes.Equal(got.GetOutputFiles()[0].GetContents(), out) {
		t.Fatalf("GetActionResult BLAKE3: %v, %v", got, err)
	}
	// The same action hex under SHA-256 names another entry.
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action})
	wantCode(t, err, codes.NotFound)
	// A result whose digests are not BLAKE3 (wrong length) is refused.
	_, err = h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{DigestFunction: blake3Fn, ActionDigest: action,
		ActionResult: &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "x", Digest: &repb.Digest{Hash: "abc", SizeBytes: 1}}}}})
	wantCode(t, err, codes.InvalidArgument)

	stream, err := h.cas.GetTree(ctx, &repb.GetTreeRequest{DigestFunction: blake3Fn, RootDigest: blake3Of(rootBlob)})
	if err != nil {
		t.Fatal(err)
	}
	var dirs []*repb.Directory
	for {
		page, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, page.GetDirectories()...)
	}
	if len(dirs) != 2 || !proto.Equal(dirs[0], root) || !proto.Equal(dirs[1], child) {
		t.Fatalf("BLAKE3 tree: %v", dirs)
	}
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{DigestFunction: repb.DigestFunction_MD5, ActionDigest: action})
	wantCode(t, err, codes.InvalidArgument)
}
