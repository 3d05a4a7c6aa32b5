package peer

import (
	"bytes"
	"context"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// FuzzObjectHeader feeds arbitrary bytes to the header decoder the server and the client
// run on every push, fetch and listing: it must never panic, and whatever it accepts must
// be a valid key with a usable size and version that survives a round trip.
func FuzzObjectHeader(f *testing.F) {
	good, err := proto.Marshal(headerPart(infoToHeader(infoFor(key(storage.KindGradle, "k"), []byte("body"), version(1)), true)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var part peerpb.ObjectPart
		if proto.Unmarshal(data, &part) != nil || part.GetHeader() == nil {
			return
		}
		info, err := headerToInfo(part.GetHeader())
		if err != nil {
			return
		}
		if info.Key.Validate() != nil || info.Size < 0 || info.Version == 0 || len(info.ContentType) > MaxContentTypeBytes {
			t.Fatalf("accepted an invalid header: %+v", info)
		}
		again, err := headerToInfo(infoToHeader(info, false))
		if err != nil || again != info {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, info)
		}
	})
}

// FuzzParseInternalCredential feeds arbitrary header values to the credential parser every
// keyed server runs on every call, before any authentication: it must never panic, and what
// it accepts must be the one canonical spelling planeMAC.format would produce.
func FuzzParseInternalCredential(f *testing.F) {
	k := newPlaneMAC(clusterKey)
	f.Add(k.format(peerpb.Replication_PushObject_FullMethodName, 1_760_000_000_123))
	f.Add(k.format(peerpb.Replication_ListObjects_FullMethodName, 0))
	f.Add("")
	f.Add("v1:")
	f.Add("v1:1:")
	f.Add("v1:-1:AAAA")
	f.Add("v1:9223372036854775807:" + strings.Repeat("A", 43))
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCredential(s)
		if err != nil {
			return
		}
		again := credentialVersion + ":" + strconv.FormatInt(c.millis, 10) + ":" + base64.RawURLEncoding.EncodeToString(c.mac[:])
		if again != s || c.millis < 0 {
			t.Fatalf("accepted %q as %+v, which spells %q", s, c, again)
		}
	})
}

// FuzzInternalRequests decodes arbitrary bytes as each request message of the internal plane
// and hands it to the server's handler, as a peer (or anyone who reached the port with a valid
// credential) could: PushTombstone, BucketDigests, ListObjects, FindObjects and the items of a
// PushBatch. Nothing may panic; a refusal is a definite gRPC code (never INTERNAL or UNKNOWN
// over a healthy store); what is accepted is valid: tombstones name valid namespaces, batch
// items carry a valid key and exactly their declared size, found objects were asked for.
func FuzzInternalRequests(f *testing.F) {
	seed := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	k := keyToProto(key(storage.KindCAS, strings.Repeat("ab", 32)))
	f.Add(uint8(0), seed(tombstoneToProto(storage.Tombstone{Tenant: "acme", Namespace: "ios", Version: version(1)})))
	f.Add(uint8(1), seed(&peerpb.BucketDigestsRequest{BucketBits: 10}))
	f.Add(uint8(2), seed(&peerpb.ListObjectsRequest{BucketBits: 4, Buckets: []uint32{1, 15}, PageSize: 10}))
	f.Add(uint8(3), seed(&peerpb.FindObjectsRequest{Keys: []*peerpb.ObjectKey{k}}))
	body := []byte("body")
	f.Add(uint8(4), seed(&peerpb.PushBatchPart{Items: []*peerpb.BatchItem{{Header: infoToHeader(infoFor(key(storage.KindGradle, "k"), body, version(2)), false), Body: body}}}))
	f.Add(uint8(0), []byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, method uint8, data []byte) {
		mem := storagetest.NewMemory()
		if _, err := mem.Put(context.Background(), key(storage.KindCAS, strings.Repeat("ab", 32)), bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		h := &handlers{backend: mem, chunk: MaxChunkBytes, maxKV: DefaultMaxKeyValueBytes, batchSlots: make(chan struct{}, 1)}
		ctx := context.Background()
		var err error
		switch method % 5 {
		case 0:
			var req peerpb.Tombstone
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			if _, err = h.PushTombstone(ctx, &req); err == nil {
				ts, terr := mem.Tombstones(ctx)
				if terr != nil || len(ts) != 1 || storage.ValidateIdentifier("tenant", ts[0].Tenant) != nil || storage.ValidateIdentifier("namespace", ts[0].Namespace) != nil || ts[0].Version == 0 {
					t.Fatalf("accepted tombstone %v stored as %+v (%v)", &req, ts, terr)
				}
			}
		case 1:
			var req peerpb.BucketDigestsRequest
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			var resp *peerpb.BucketDigestsResponse
			if resp, err = h.BucketDigests(ctx, &req); err == nil && len(resp.GetDigests()) != 32<<req.GetBucketBits() {
				t.Fatalf("%d bits answered with %d digest bytes", req.GetBucketBits(), len(resp.GetDigests()))
			}
		case 2:
			var req peerpb.ListObjectsRequest
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			var resp *peerpb.ListObjectsResponse
			if resp, err = h.ListObjects(ctx, &req); err == nil && len(resp.GetObjects()) > MaxListPage {
				t.Fatalf("a page of %d objects, at most %d", len(resp.GetObjects()), MaxListPage)
			}
		case 3:
			var req peerpb.FindObjectsRequest
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			var resp *peerpb.FindObjectsResponse
			if resp, err = h.FindObjects(ctx, &req); err == nil {
				asked := map[string]bool{}
				for _, k := range req.GetKeys() {
					asked[k.String()] = true
				}
				for _, o := range resp.GetPresent() {
					if !asked[o.GetKey().String()] {
						t.Fatalf("found %v, which was not asked for", o.GetKey())
					}
				}
			}
		case 4:
			var part peerpb.PushBatchPart
			if proto.Unmarshal(data, &part) != nil {
				return
			}
			for _, it := range part.GetItems() {
				got := h.judgeItem(it.GetHeader(), it.GetBody())
				if got.err != nil {
					continue
				}
				if got.info.Key.Validate() != nil || got.info.Size != int64(len(it.GetBody())) || got.info.Version == 0 {
					t.Fatalf("accepted an invalid batch item: %+v with %d body bytes", got.info, len(it.GetBody()))
				}
			}
			return
		}
		if err != nil {
			if code := status.Code(err); code == codes.Internal || code == codes.Unknown || code == codes.OK {
				t.Fatalf("method %d refused with %v (%v), want a definite code", method%5, code, err)
			}
		}
	})
}
