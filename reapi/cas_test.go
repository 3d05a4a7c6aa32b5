package reapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

func TestGetCapabilities(t *testing.T) {
	h := newHarness(t, Config{MaxBatchTotalSizeBytes: 8 << 20, MaxCASBlobSizeBytes: 1 << 30}, nil)
	caps, err := h.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cc := caps.GetCacheCapabilities()
	if got := cc.GetDigestFunctions(); len(got) != 2 || got[0] != repb.DigestFunction_SHA256 || got[1] != repb.DigestFunction_BLAKE3 {
		t.Errorf("digest functions %v", got)
	}
	if !cc.GetActionCacheUpdateCapabilities().GetUpdateEnabled() {
		t.Error("action cache updates not enabled")
	}
	if cc.GetMaxBatchTotalSizeBytes() != 8<<20 {
		t.Errorf("max batch %d", cc.GetMaxBatchTotalSizeBytes())
	}
	if cc.GetMaxCasBlobSizeBytes() != 1<<30 {
		t.Errorf("max cas blob %d", cc.GetMaxCasBlobSizeBytes())
	}
	if cc.GetSymlinkAbsolutePathStrategy() != repb.SymlinkAbsolutePathStrategy_ALLOWED {
		t.Errorf("symlink strategy %v", cc.GetSymlinkAbsolutePathStrategy())
	}
	for name, list := range map[string][]repb.Compressor_Value{
		"supported_compressors":              cc.GetSupportedCompressors(),
		"supported_batch_update_compressors": cc.GetSupportedBatchUpdateCompressors(),
	} {
		if len(list) != 2 || list[0] != repb.Compressor_IDENTITY || list[1] != repb.Compressor_ZSTD {
			t.Errorf("%s = %v, want [IDENTITY ZSTD]", name, list)
		}
	}
	if l, hi := caps.GetLowApiVersion(), caps.GetHighApiVersion(); l.GetMajor() != 2 || l.GetMinor() != 0 || hi.GetMajor() != 2 || hi.GetMinor() != 3 {
		t.Errorf("API versions %v..%v", l, hi)
	}
	if caps.GetExecutionCapabilities() != nil {
		t.Error("a cache-only server advertises execution capabilities")
	}
	_, err = h.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{InstanceName: "a/blobs"})
	wantCode(t, err, codes.InvalidArgument)

	// The default batch limit is the 4 MiB minimum.
	h2 := newHarness(t, Config{}, nil)
	caps, err = h2.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{InstanceName: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if got := caps.GetCacheCapabilities().GetMaxBatchTotalSizeBytes(); got != 4<<20 {
		t.Errorf("default max batch %d", got)
	}
}

func TestFindMissingBlobs(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	present, absent := randomBlob(100, 1), randomBlob(100, 2)
	h.upload("", present)
	empty := digestOf(nil)

	resp, err := h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		BlobDigests: []*repb.Digest{digestOf(present), digestOf(absent), empty, digestOf(absent)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetMissingBlobDigests(); len(got) != 1 || !proto.Equal(got[0], digestOf(absent)) {
		t.Fatalf("missing = %v, want only %v", got, digestOf(absent))
	}
	// Reported once each, in request order: the same hash with another size is another digest.
	otherSize := &repb.Digest{Hash: digestOf(absent).GetHash(), SizeBytes: 7}
	resp, err = h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		BlobDigests: []*repb.Digest{digestOf(absent), otherSize, digestOf(present), digestOf(absent), otherSize, digestOf(absent)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetMissingBlobDigests(); len(got) != 2 || !proto.Equal(got[0], digestOf(absent)) || !proto.Equal(got[1], otherSize) {
		t.Fatalf("missing = %v, want %v and %v", got, digestOf(absent), otherSize)
	}

	// Explicit SHA256 is accepted; the blob is absent from another instance.
	resp, err = h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		InstanceName: "other/team", DigestFunction: repb.DigestFunction_SHA256,
		BlobDigests: []*repb.Digest{digestOf(present), empty},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetMissingBlobDigests(); len(got) != 1 || !proto.Equal(got[0], digestOf(present)) {
		t.Fatalf("other instance: missing = %v", got)
	}
	// "default" and "" are the same namespace.
	resp, err = h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: "default", BlobDigests: []*repb.Digest{digestOf(present)}})
	if err != nil || len(resp.GetMissingBlobDigests()) != 0 {
		t.Fatalf("instance default: %v %v", resp, err)
	}

	good := digestOf(present)
	for name, req := range map[string]*repb.FindMissingBlobsRequest{
		"sha1 digest function": {DigestFunction: repb.DigestFunction_SHA1, BlobDigests: []*repb.Digest{good}},
		"md5":                  {DigestFunction: repb.DigestFunction_MD5, BlobDigests: []*repb.Digest{good}},
		"upper-case hash":      {BlobDigests: []*repb.Digest{{Hash: strings.ToUpper(good.Hash), SizeBytes: 100}}},
		"short hash":           {BlobDigests: []*repb.Digest{{Hash: good.Hash[:40], SizeBytes: 100}}},
		"non-hex hash":         {BlobDigests: []*repb.Digest{{Hash: "z" + good.Hash[1:], SizeBytes: 100}}},
		"negative size":        {BlobDigests: []*repb.Digest{{Hash: good.Hash, SizeBytes: -1}}},
		"nil digest":           {BlobDigests: []*repb.Digest{good, nil}},
		"empty path segment":   {InstanceName: "a//b", BlobDigests: []*repb.Digest{good}},
		"reserved instance":    {InstanceName: "team/uploads", BlobDigests: []*repb.Digest{good}},
		"leading slash":        {InstanceName: "/abs", BlobDigests: []*repb.Digest{good}},
		"instance with NUL":    {InstanceName: "a\x00b", BlobDigests: []*repb.Digest{good}},
		"instance too long":    {InstanceName: strings.Repeat("x", 1025), BlobDigests: []*repb.Digest{good}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := h.cas.FindMissingBlobs(ctx, req)
			wantCode(t, err, codes.InvalidArgument)
		})
	}
}

func TestBatchUpdateBlobs(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	good := randomBlob(1000, 10)
	compressible := bytes.Repeat([]byte("kura compresses this "), 500)
	existing := randomBlob(300, 11)
	h.upload("", existing)
	wrongData := randomBlob(1000, 12)
	bombPlain := make([]byte, 64<<20) // 64 MiB of zeros: a few KiB compressed
	bombDeclared := bombPlain[:1024]
	corrupt := append([]byte{}, zstdCompress(t, compressible)...)
	corrupt[len(corrupt)/2] ^= 0xff

	type item struct {
		name   string
		req    *repb.BatchUpdateBlobsRequest_Request
		want   codes.Code
		stored []byte // checked present (want OK) or absent (otherwise)
	}
	items := []item{
		{"identity", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(good), Data: good}, codes.OK, good},
		{"zstd", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(compressible), Data: zstdCompress(t, compressible), Compressor: repb.Compressor_ZSTD}, codes.OK, compressible},
		{"empty", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(nil)}, codes.OK, nil},
		{"empty zstd", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(nil), Data: zstdCompress(t, nil), Compressor: repb.Compressor_ZSTD}, codes.OK, nil},
		{"hash mismatch", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(wrongData), Data: good}, codes.InvalidArgument, wrongData},
		{"size mismatch", &repb.BatchUpdateBlobsRequest_Request{Digest: &repb.Digest{Hash: digestOf(wrongData).Hash, SizeBytes: 999}, Data: wrongData}, codes.InvalidArgument, wrongData},
		{"bad digest", &repb.BatchUpdateBlobsRequest_Request{Digest: &repb.Digest{Hash: "xyz", SizeBytes: 3}, Data: []byte("abc")}, codes.InvalidArgument, nil},
		{"missing digest", &repb.BatchUpdateBlobsRequest_Request{Data: []byte("abc")}, codes.InvalidArgument, nil},
		{"deflate", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(wrongData), Data: wrongData, Compressor: repb.Compressor_DEFLATE}, codes.InvalidArgument, wrongData},
		{"decompression bomb", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(bombDeclared), Data: zstdCompress(t, bombPlain), Compressor: repb.Compressor_ZSTD}, codes.InvalidArgument, bombDeclared},
		{"corrupt zstd", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(compressible[:5000]), Data: corrupt, Compressor: repb.Compressor_ZSTD}, codes.InvalidArgument, compressible[:5000]},
		{"zstd of other data", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(wrongData), Data: zstdCompress(t, good), Compressor: repb.Compressor_ZSTD}, codes.InvalidArgument, wrongData},
		{"existing with wrong data", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(existing), Data: wrongData[:300]}, codes.InvalidArgument, nil},
		{"existing zstd with wrong data", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(existing), Data: zstdCompress(t, wrongData[:300]), Compressor: repb.Compressor_ZSTD}, codes.InvalidArgument, nil},
		{"existing zstd", &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(existing), Data: zstdCompress(t, existing), Compressor: repb.Compressor_ZSTD}, codes.OK, existing},
	}
	req := &repb.BatchUpdateBlobsRequest{}
	for _, it := range items {
		req.Requests = append(req.Requests, it.req)
	}
	resp, err := h.cas.BatchUpdateBlobs(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResponses()) != len(items) {
		t.Fatalf("%d responses for %d items", len(resp.GetResponses()), len(items))
	}
	for i, it := range items {
		t.Run(it.name, func(t *testing.T) {
			r := resp.GetResponses()[i]
			if !proto.Equal(r.GetDigest(), it.req.GetDigest()) {
				t.Errorf("response digest %v, want %v", r.GetDigest(), it.req.GetDigest())
			}
			wantItemCode(t, r.GetStatus(), it.want)
			if len(it.stored) > 0 {
				if got := h.casStored("default", it.stored); got != (it.want == codes.OK) {
					t.Errorf("stored = %v", got)
				}
			}
		})
	}
	if h.casStored("default", bombPlain) {
		t.Error("the bomb's expansion was stored")
	}

	t.Run("over the batch limit", func(t *testing.T) {
		// Just over the advertised limit (the message itself still fits): INVALID_ARGUMENT.
		req := &repb.BatchUpdateBlobsRequest{}
		for i := range 5 {
			b := randomBlob(1<<20-200<<10, uint64(100+i))
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(b), Data: b})
		}
		_, err := h.cas.BatchUpdateBlobs(ctx, req)
		wantCode(t, err, codes.InvalidArgument)
		if h.casStored("default", req.Requests[0].Data) {
			t.Error("an item of a refused batch was stored")
		}
		// Far over it, gRPC refuses the message before it is decoded: RESOURCE_EXHAUSTED.
		b := randomBlob(2<<20, 150)
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(b), Data: b})
		_, err = h.cas.BatchUpdateBlobs(ctx, req)
		wantCode(t, err, codes.ResourceExhausted)
	})
	t.Run("a full batch fits the message limit", func(t *testing.T) {
		req := &repb.BatchUpdateBlobsRequest{InstanceName: "full"}
		for i := range 4 {
			b := randomBlob(1<<20, uint64(200+i))
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(b), Data: b})
		}
		resp, err := h.cas.BatchUpdateBlobs(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResponses() {
			wantItemCode(t, r.GetStatus(), codes.OK)
		}
	})
	t.Run("over the decompressed limit", func(t *testing.T) {
		req := &repb.BatchUpdateBlobsRequest{}
		for i := range 3 {
			plain := bytes.Repeat([]byte{byte(i)}, 30<<20)
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(plain), Data: zstdCompress(t, plain), Compressor: repb.Compressor_ZSTD})
		}
		_, err := h.cas.BatchUpdateBlobs(ctx, req)
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("digest function", func(t *testing.T) {
		_, err := h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_MD5})
		wantCode(t, err, codes.InvalidArgument)
	})
}

func TestBatchReadBlobs(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	a, b := randomBlob(5000, 20), bytes.Repeat([]byte("ab"), 10000)
	h.upload("ci", a, b)
	missing := randomBlob(10, 21)
	wrongSize := &repb.Digest{Hash: digestOf(a).Hash, SizeBytes: 4999}

	req := &repb.BatchReadBlobsRequest{InstanceName: "ci", Digests: []*repb.Digest{
		digestOf(a), digestOf(missing), digestOf(nil), {Hash: "nothex", SizeBytes: 1}, wrongSize, digestOf(b),
	}}
	resp, err := h.cas.BatchReadBlobs(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		code codes.Code
		data []byte
	}{{codes.OK, a}, {codes.NotFound, nil}, {codes.OK, nil}, {codes.InvalidArgument, nil}, {codes.NotFound, nil}, {codes.OK, b}}
	for i, w := range want {
		r := resp.GetResponses()[i]
		if !proto.Equal(r.GetDigest(), req.Digests[i]) {
			t.Errorf("item %d: digest %v", i, r.GetDigest())
		}
		wantItemCode(t, r.GetStatus(), w.code)
		if r.GetCompressor() != repb.Compressor_IDENTITY || !bytes.Equal(r.GetData(), w.data) {
			t.Errorf("item %d: compressor %v, %d bytes, want %d identity bytes", i, r.GetCompressor(), len(r.GetData()), len(w.data))
		}
	}

	// With zstd acceptable the data comes back compressed.
	resp, err = h.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{InstanceName: "ci", Digests: []*repb.Digest{digestOf(b), digestOf(a)},
		AcceptableCompressors: []repb.Compressor_Value{repb.Compressor_ZSTD}})
	if err != nil {
		t.Fatal(err)
	}
	for i, blob := range [][]byte{b, a} {
		r := resp.GetResponses()[i]
		wantItemCode(t, r.GetStatus(), codes.OK)
		if r.GetCompressor() != repb.Compressor_ZSTD {
			t.Fatalf("item %d: compressor %v", i, r.GetCompressor())
		}
		if got := zstdDecompress(t, r.GetData()); !bytes.Equal(got, blob) {
			t.Fatalf("item %d: decompressed data differs", i)
		}
	}
	if len(resp.GetResponses()[0].GetData()) >= len(b) {
		t.Error("a compressible blob did not shrink")
	}

	// The sum of the requested sizes is bounded.
	big := &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{{Hash: digestOf(a).Hash, SizeBytes: 3 << 20}, {Hash: digestOf(b).Hash, SizeBytes: 2 << 20}}}
	_, err = h.cas.BatchReadBlobs(ctx, big)
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{DigestFunction: repb.DigestFunction_SHA512})
	wantCode(t, err, codes.InvalidArgument)
}

// directoryBlob encodes a Directory the way clients hash it.
func directoryBlob(t *testing.T, d *repb.Directory) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGetTree(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	file := randomBlob(10, 30)
	c := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: digestOf(file)}}}
	cBlob := directoryBlob(t, c)
	a := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "c", Digest: digestOf(cBlob)}}}
	b := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "c2", Digest: digestOf(cBlob)}}, Files: []*repb.FileNode{{Name: "g", Digest: digestOf(file)}}}
	ghost := directoryBlob(t, &repb.Directory{Files: []*repb.FileNode{{Name: "never uploaded", Digest: digestOf(file)}}})
	aBlob, bBlob := directoryBlob(t, a), directoryBlob(t, b)
	root := &repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "a", Digest: digestOf(aBlob)}, {Name: "b", Digest: digestOf(bBlob)}, {Name: "ghost", Digest: digestOf(ghost)},
	}}
	rootBlob := directoryBlob(t, root)
	h.upload("", rootBlob, aBlob, bBlob, cBlob, file)

	collect := func(req *repb.GetTreeRequest) ([]*repb.GetTreeResponse, error) {
		stream, err := h.cas.GetTree(ctx, req)
		if err != nil {
			return nil, err
		}
		var pages []*repb.GetTreeResponse
		for {
			p, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return pages, nil
			}
			if err != nil {
				return pages, err
			}
			pages = append(pages, p)
		}
	}
	wantDirs := []*repb.Directory{root, a, b, c} // breadth first, the ghost omitted

	pages, err := collect(&repb.GetTreeRequest{RootDigest: digestOf(rootBlob), PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) != 2 || len(pages[0].GetDirectories()) != 2 || len(pages[1].GetDirectories()) != 2 {
		t.Fatalf("pages %v", pages)
	}
	if pages[0].GetNextPageToken() == "" || pages[1].GetNextPageToken() != "" {
		t.Fatalf("tokens %q %q", pages[0].GetNextPageToken(), pages[1].GetNextPageToken())
	}
	got := append(pages[0].GetDirectories(), pages[1].GetDirectories()...)
	for i := range wantDirs {
		if !proto.Equal(got[i], wantDirs[i]) {
			t.Fatalf("directory %d = %v, want %v", i, got[i], wantDirs[i])
		}
	}

	// Resuming from the first page's token yields the rest.
	rest, err := collect(&repb.GetTreeRequest{RootDigest: digestOf(rootBlob), PageSize: 2, PageToken: pages[0].GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 1 || !proto.Equal(rest[0].GetDirectories()[0], b) || !proto.Equal(rest[0].GetDirectories()[1], c) {
		t.Fatalf("resumed pages %v", rest)
	}

	// Without a page size, one page holds everything.
	all, err := collect(&repb.GetTreeRequest{InstanceName: "", RootDigest: digestOf(rootBlob)})
	if err != nil || len(all) != 1 || len(all[0].GetDirectories()) != 4 || all[0].GetNextPageToken() != "" {
		t.Fatalf("single page: %v %v", all, err)
	}

	// The empty directory is always present.
	emptyTree, err := collect(&repb.GetTreeRequest{RootDigest: digestOf(nil)})
	if err != nil || len(emptyTree) != 1 || len(emptyTree[0].GetDirectories()) != 1 {
		t.Fatalf("empty root: %v %v", emptyTree, err)
	}

	_, err = collect(&repb.GetTreeRequest{RootDigest: digestOf(ghost)})
	wantCode(t, err, codes.NotFound)
	_, err = collect(&repb.GetTreeRequest{RootDigest: digestOf(rootBlob), PageToken: "garbage!"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = collect(&repb.GetTreeRequest{RootDigest: digestOf(rootBlob), PageSize: -1})
	wantCode(t, err, codes.InvalidArgument)
	_, err = collect(&repb.GetTreeRequest{RootDigest: &repb.Digest{Hash: "abc"}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = collect(&repb.GetTreeRequest{RootDigest: digestOf(rootBlob), DigestFunction: repb.DigestFunction_SHA1})
	wantCode(t, err, codes.InvalidArgument)
	notADirectory := []byte{0xff, 0xff, 0xff} // an unterminated varint tag: no proto message
	h.upload("", notADirectory)
	_, err = collect(&repb.GetTreeRequest{RootDigest: digestOf(notADirectory)})
	wantCode(t, err, codes.InvalidArgument)
	// The tree of another instance is not visible.
	_, err = collect(&repb.GetTreeRequest{InstanceName: "elsewhere", RootDigest: digestOf(rootBlob)})
	wantCode(t, err, codes.NotFound)
}

func TestPageTokens(t *testing.T) {
	for _, n := range []int{0, 1, 999, 1 << 30} {
		got, err := parsePageToken(pageToken(n))
		if err != nil || got != n {
			t.Fatalf("round trip of %d: %d %v", n, got, err)
		}
	}
	for _, bad := range []string{"!", "dA", pageToken(-1), "eDE"} {
		if _, err := parsePageToken(bad); err == nil {
			t.Errorf("token %q accepted", bad)
		}
	}
	sum := sha256.Sum256(nil)
	if hex.EncodeToString(sum[:]) != emptyDigest.hex() {
		t.Fatal("empty digest constant is wrong")
	}
}

// TestParseHash: exactly the 64-digit lowercase hex strings parse, to the bytes they encode.
func TestParseHash(t *testing.T) {
	base := strings.Repeat("0123456789abcdef", 4)
	for _, pos := range []int{0, 31, 63} {
		for c := range 256 {
			s := base[:pos] + string([]byte{byte(c)}) + base[pos+1:]
			h, err := parseHash(s)
			want, werr := hex.DecodeString(s)
			valid := werr == nil && strings.ToLower(s) == s
			if valid != (err == nil) || valid && !bytes.Equal(h[:], want) {
				t.Fatalf("parseHash(%q) = %x, %v; valid %v", s, h, err, valid)
			}
		}
	}
}
