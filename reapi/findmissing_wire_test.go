package reapi

import (
	"slices"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// sameAsProto fails t unless decoding b gives what proto.Unmarshal gives: both refuse it, or
// both accept it with the same instance name, digest function and digests.
func sameAsProto(t *testing.T, b []byte) {
	t.Helper()
	var want repb.FindMissingBlobsRequest
	wantErr := proto.Unmarshal(b, &want)
	var got findMissingRequest
	gotErr := got.decode(b)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("%x: proto says %v, decode says %v", b, wantErr, gotErr)
	}
	if wantErr != nil {
		return
	}
	if got.instanceName != want.GetInstanceName() || got.digestFunction != want.GetDigestFunction() || len(got.digests) != len(want.GetBlobDigests()) {
		t.Fatalf("%x: decoded %q/%v/%d digests, proto %q/%v/%d", b, got.instanceName, got.digestFunction, len(got.digests),
			want.GetInstanceName(), want.GetDigestFunction(), len(want.GetBlobDigests()))
	}
	for i, d := range got.digests {
		w := want.GetBlobDigests()[i]
		if d.hash != w.GetHash() || d.size != w.GetSizeBytes() {
			t.Fatalf("%x: digest %d decoded %s/%d, proto %s/%d", b, i, d.hash, d.size, w.GetHash(), w.GetSizeBytes())
		}
		// The message's bytes, echoed in a response, decode to the same digest.
		var echoed repb.Digest
		if err := proto.Unmarshal([]byte(got.wire[d.start:d.end]), &echoed); err != nil || !proto.Equal(&echoed, w) {
			t.Fatalf("%x: digest %d's bytes decode to %v (%v), want %v", b, i, &echoed, err, w)
		}
	}
}

// TestFindMissingWireDecodesAsProto: the wire decoder agrees with the proto codec on
// requests as Bazel sends them and on the proto3 corners (fields repeated, out of order,
// unknown, of an unexpected wire type; malformed input; invalid UTF-8).
func TestFindMissingWireDecodesAsProto(t *testing.T) {
	d1, d2 := digestOf([]byte("one")), digestOf([]byte("two"))
	plain, _ := proto.Marshal(&repb.FindMissingBlobsRequest{
		InstanceName: "main", BlobDigests: []*repb.Digest{d1, d2, d1}, DigestFunction: repb.DigestFunction_SHA256,
	})
	empty, _ := proto.Marshal(&repb.FindMissingBlobsRequest{})
	var odd []byte
	odd = protowire.AppendTag(odd, findMissingDigestFunction, protowire.VarintType)
	odd = protowire.AppendVarint(odd, uint64(repb.DigestFunction_MD5))
	odd = protowire.AppendTag(odd, 7, protowire.BytesType) // unknown field
	odd = protowire.AppendBytes(odd, []byte("ignored"))
	odd = protowire.AppendTag(odd, findMissingInstanceName, protowire.VarintType) // wrong wire type: unknown
	odd = protowire.AppendVarint(odd, 5)
	odd = protowire.AppendTag(odd, findMissingInstanceName, protowire.BytesType)
	odd = protowire.AppendBytes(odd, []byte("first"))
	odd = protowire.AppendTag(odd, findMissingInstanceName, protowire.BytesType) // the last one wins
	odd = protowire.AppendBytes(odd, []byte("second"))
	var digest []byte // size before hash, the hash twice, an unknown fixed32
	digest = protowire.AppendTag(digest, digestSizeBytes, protowire.VarintType)
	digest = protowire.AppendVarint(digest, 42)
	digest = protowire.AppendTag(digest, digestHash, protowire.BytesType)
	digest = protowire.AppendBytes(digest, []byte("stale"))
	digest = protowire.AppendTag(digest, 9, protowire.Fixed32Type)
	digest = protowire.AppendFixed32(digest, 7)
	digest = protowire.AppendTag(digest, digestHash, protowire.BytesType)
	digest = protowire.AppendBytes(digest, []byte(d2.GetHash()))
	odd = protowire.AppendTag(odd, findMissingBlobDigests, protowire.BytesType)
	odd = protowire.AppendBytes(odd, digest)
	cases := map[string][]byte{
		"as Bazel sends it":        plain,
		"empty":                    empty,
		"proto3 corners":           odd,
		"truncated":                plain[:len(plain)-3],
		"bad tag":                  {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"instance not UTF-8":       append(protowire.AppendTag(nil, findMissingInstanceName, protowire.BytesType), 2, 0xc3, 0x28),
		"digest longer than input": append(protowire.AppendTag(nil, findMissingBlobDigests, protowire.BytesType), 9, 1),
		"hash not UTF-8": protowire.AppendBytes(protowire.AppendTag(nil, findMissingBlobDigests, protowire.BytesType),
			append(protowire.AppendTag(nil, digestHash, protowire.BytesType), 1, 0xff)),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) { sameAsProto(t, b) })
	}
}

// FuzzFindMissingWire: on any input, the wire decoder agrees with the proto codec.
func FuzzFindMissingWire(f *testing.F) {
	for _, n := range []int{0, 1, 3} {
		req := &repb.FindMissingBlobsRequest{InstanceName: "ns"}
		for i := range n {
			req.BlobDigests = append(req.BlobDigests, digestOf([]byte{byte(i)}))
		}
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { sameAsProto(t, b) })
}

// TestFindMissingOverTheWire: over gRPC, the wire-decoded FindMissingBlobs answers exactly the
// missing digests, each once, as the client sent them, and refuses what the typed path refuses.
func TestFindMissingOverTheWire(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	stored, absent := []byte("stored blob"), []byte("absent blob")
	if _, err := h.cas.BatchUpdateBlobs(t.Context(), &repb.BatchUpdateBlobsRequest{
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: digestOf(stored), Data: stored}},
	}); err != nil {
		t.Fatal(err)
	}
	req := &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{
		digestOf(absent), digestOf(stored), digestOf(nil), digestOf(absent), {Hash: digestOf(absent).GetHash(), SizeBytes: 99},
	}}
	resp, err := h.cas.FindMissingBlobs(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []*repb.Digest{digestOf(absent), {Hash: digestOf(absent).GetHash(), SizeBytes: 99}}
	if !slices.EqualFunc(resp.GetMissingBlobDigests(), want, func(a, b *repb.Digest) bool { return proto.Equal(a, b) }) {
		t.Fatalf("missing %v, want %v", resp.GetMissingBlobDigests(), want)
	}
	// Nothing missing: an empty response.
	resp, err = h.cas.FindMissingBlobs(t.Context(), &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{digestOf(stored)}})
	if err != nil || len(resp.GetMissingBlobDigests()) != 0 {
		t.Fatalf("stored digest: %v, %v", resp, err)
	}
	for name, bad := range map[string]*repb.FindMissingBlobsRequest{
		"uppercase hash":  {BlobDigests: []*repb.Digest{{Hash: "AB" + digestOf(absent).GetHash()[2:], SizeBytes: 1}}},
		"negative size":   {BlobDigests: []*repb.Digest{{Hash: digestOf(absent).GetHash(), SizeBytes: -1}}},
		"empty digest":    {BlobDigests: []*repb.Digest{{}}},
		"digest function": {DigestFunction: repb.DigestFunction_MD5},
	} {
		_, err := h.cas.FindMissingBlobs(t.Context(), bad)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", name, err)
		}
	}
}
