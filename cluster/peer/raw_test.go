package peer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

// rawClient speaks the protocol directly, to send what the Client never would.
func rawClient(t testing.TB, addr string) peerpb.ReplicationClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return peerpb.NewReplicationClient(cc)
}

func headerPart(h *peerpb.ObjectHeader) *peerpb.ObjectPart {
	return &peerpb.ObjectPart{Part: &peerpb.ObjectPart_Header{Header: h}}
}

func chunkPart(b []byte) *peerpb.ObjectPart {
	return &peerpb.ObjectPart{Part: &peerpb.ObjectPart_Chunk{Chunk: b}}
}

func reasonOf(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// The server validates every push itself, whatever a peer sends.
func TestServerRejectsMalformedPushes(t *testing.T) {
	store := diskStore(t)
	_, addr := startServer(t, ServerConfig{}, store)
	rc := rawClient(t, addr)
	body := []byte("payload")
	good := func(name string) *peerpb.ObjectHeader {
		return infoToHeader(infoFor(key(storage.KindGradle, name), body, version(1)), false)
	}
	big := bytes.Repeat([]byte("z"), MaxChunkBytes+maxHeaderBytes+1)
	cases := []struct {
		name   string
		key    string // stored under key(gradle, key) if wrongly accepted
		parts  []*peerpb.ObjectPart
		code   codes.Code
		reason string
	}{
		{"empty stream", "", nil, codes.InvalidArgument, "MALFORMED"},
		{"chunk before header", "", []*peerpb.ObjectPart{chunkPart(body)}, codes.InvalidArgument, "MALFORMED"},
		{"invalid key", "", []*peerpb.ObjectPart{headerPart(&peerpb.ObjectHeader{
			Key: &peerpb.ObjectKey{Tenant: "acme", Namespace: "ios\x00", Kind: "gradle", Name: "x"}, Size: 1, Sha256: make([]byte, 32), Version: 1,
		})}, codes.InvalidArgument, "INVALID_KEY"},
		{"short digest", "short-digest", []*peerpb.ObjectPart{headerPart(func() *peerpb.ObjectHeader {
			h := good("short-digest")
			h.Sha256 = h.Sha256[:31]
			return h
		}()), chunkPart(body)}, codes.InvalidArgument, "MALFORMED"},
		{"version zero", "v0", []*peerpb.ObjectPart{headerPart(func() *peerpb.ObjectHeader {
			h := good("v0")
			h.Version = 0
			return h
		}()), chunkPart(body)}, codes.InvalidArgument, "MALFORMED"},
		{"negative size", "neg", []*peerpb.ObjectPart{headerPart(func() *peerpb.ObjectHeader {
			h := good("neg")
			h.Size = -1
			return h
		}())}, codes.InvalidArgument, "MALFORMED"},
		{"second header", "twice", []*peerpb.ObjectPart{headerPart(good("twice")), chunkPart(body[:2]), headerPart(good("twice"))}, codes.InvalidArgument, "MALFORMED"},
		{"bytes past the declared size", "overlong", []*peerpb.ObjectPart{headerPart(good("overlong")), chunkPart(body), chunkPart([]byte("!"))}, codes.InvalidArgument, "DIGEST_MISMATCH"},
		{"body ends early", "short", []*peerpb.ObjectPart{headerPart(good("short")), chunkPart(body[:3])}, codes.InvalidArgument, "DIGEST_MISMATCH"},
		{"chunk over the message limit", "huge", []*peerpb.ObjectPart{headerPart(good("huge")), chunkPart(big)}, codes.ResourceExhausted, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := rc.PushObject(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.parts {
				if err := stream.Send(p); err != nil {
					break // the server already answered; the status is in CloseAndRecv
				}
			}
			_, err = stream.CloseAndRecv()
			if status.Code(err) != tc.code || reasonOf(err) != tc.reason {
				t.Fatalf("PushObject = %v (reason %q), want %v (reason %q)", err, reasonOf(err), tc.code, tc.reason)
			}
			if tc.key != "" {
				if _, err := store.Stat(testCtx(t), key(storage.KindGradle, tc.key)); !isNotFound(err) {
					t.Fatalf("Stat after a refused push = %v, want not found", err)
				}
			}
		})
	}
}

// Empty chunks are allowed (a sender may flush one) and do not count.
func TestServerAcceptsEmptyChunks(t *testing.T) {
	store := diskStore(t)
	_, addr := startServer(t, ServerConfig{}, store)
	rc := rawClient(t, addr)
	body := []byte("abcdef")
	info := infoFor(key(storage.KindGradle, "sparse"), body, version(3))
	stream, err := rc.PushObject(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*peerpb.ObjectPart{headerPart(infoToHeader(info, false)), chunkPart(nil), chunkPart(body[:2]), chunkPart(nil), chunkPart(body[2:]), chunkPart(nil)} {
		if err := stream.Send(p); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || !resp.GetApplied() {
		t.Fatalf("PushObject = %v, %v", resp, err)
	}
	if got, err := store.Stat(testCtx(t), info.Key); err != nil || got.SHA256 != sha256.Sum256(body) {
		t.Fatalf("Stat = %+v, %v", got, err)
	}
}

func TestServerRejectsMalformedRequests(t *testing.T) {
	_, addr := startServer(t, ServerConfig{}, diskStore(t))
	rc := rawClient(t, addr)
	ctx := testCtx(t)
	if _, err := rc.PushTombstone(ctx, &peerpb.Tombstone{Tenant: "acme", Namespace: "ios"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("PushTombstone(version 0) = %v", err)
	}
	if _, err := rc.BucketDigests(ctx, &peerpb.BucketDigestsRequest{BucketBits: 40}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("BucketDigests(40 bits) = %v", err)
	}
	if _, err := rc.ListObjects(ctx, &peerpb.ListObjectsRequest{BucketBits: 4, Buckets: []uint32{16}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ListObjects(bucket out of range) = %v", err)
	}
	stream, err := rc.FetchObject(ctx, &peerpb.FetchObjectRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || reasonOf(err) != "INVALID_KEY" {
		t.Fatalf("FetchObject(no key) = %v", err)
	}
}

// The error table maps every storage sentinel to a code and back to the same sentinel.
func TestErrorMappingRoundTrip(t *testing.T) {
	for _, m := range mapping {
		wrapped := errors.Join(errors.New("context of the failure"), m.err)
		st := toStatus(wrapped)
		if status.Code(st) != m.code {
			t.Errorf("%v: code %v, want %v", m.err, status.Code(st), m.code)
		}
		back := fromStatus("test", "peer:1", st)
		want := m.err
		switch m.err {
		case storage.ErrCorrupt:
			want = storage.ErrNotFound // dropped on the peer: missing there
		case errBadHeader:
			want = ErrMalformed
		}
		if !errors.Is(back, want) {
			t.Errorf("%v: came back as %v, want it to wrap %v", m.err, back, want)
		}
	}
	if code := status.Code(toStatus(errors.New("disk on fire"))); code != codes.Internal {
		t.Errorf("unknown error: %v, want Internal", code)
	}
	if err := fromStatus("x", "y", status.Error(codes.PermissionDenied, "no")); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a status without a sentinel lost its code: %v", err)
	}
}
