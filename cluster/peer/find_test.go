package peer

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

// FindObjects answers which keys the peer stores, with the origin's version and digest, in
// requests split at MaxFindKeys, each counted in the kura_peer_* metrics on both sides.
func TestFindObjects(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	var keys []storage.Key
	want := map[storage.Key]storage.Info{}
	for i := range MaxFindKeys + 500 {
		k := key(storage.KindCAS, fmt.Sprintf("%064x", i))
		keys = append(keys, k)
		if i%700 == 0 {
			body := []byte(fmt.Sprintf("body %d", i))
			info := infoFor(k, body, version(i+1))
			if _, err := store.Put(ctx, k, bytes.NewReader(body), storage.PutOptions{
				ContentType: info.ContentType, Size: info.Size, ExpectedSHA256: &info.SHA256, Version: info.Version,
			}); err != nil {
				t.Fatal(err)
			}
			want[k] = info
		}
	}
	keys = append(keys, keys[0]) // asked twice, answered once
	found, err := p.client.FindObjects(ctx, p.addr, keys)
	if err != nil {
		t.Fatalf("FindObjects: %v", err)
	}
	if len(found) != len(want) {
		t.Fatalf("found %d objects, want %d", len(found), len(want))
	}
	for _, info := range found {
		w, ok := want[info.Key]
		if !ok || info.Version != w.Version || info.SHA256 != w.SHA256 || info.Size != w.Size {
			t.Fatalf("found %+v, want %+v", info, w)
		}
	}
	if n := testutil.ToFloat64(p.client.metrics.requests.WithLabelValues(sideClient, "FindObjects", "OK")); n != 2 {
		t.Fatalf("client FindObjects calls = %v, want 2 (split at MaxFindKeys)", n)
	}
	if n := testutil.ToFloat64(p.server.metrics.requests.WithLabelValues(sideServer, "FindObjects", "OK")); n != 2 {
		t.Fatalf("server FindObjects calls = %v, want 2", n)
	}

	// Nothing asked, nothing sent.
	if found, err := p.client.FindObjects(ctx, p.addr, nil); err != nil || len(found) != 0 {
		t.Fatalf("FindObjects(nil) = %v, %v", found, err)
	}
}

// The server bounds a request's keys itself: a client that does not split is refused.
func TestFindObjectsBoundsKeys(t *testing.T) {
	p := startPlane(t, diskStore(t), ServerConfig{}, ClientConfig{})
	rc, err := p.client.conn(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	req := &peerpb.FindObjectsRequest{}
	for i := range MaxFindKeys + 1 {
		req.Keys = append(req.Keys, keyToProto(key(storage.KindCAS, fmt.Sprintf("%064x", i))))
	}
	if _, err := rc.FindObjects(testCtx(t), req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FindObjects of %d keys = %v, want INVALID_ARGUMENT", len(req.Keys), err)
	}
	req.Keys = []*peerpb.ObjectKey{{Tenant: "acme"}}
	if _, err := rc.FindObjects(testCtx(t), req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FindObjects of an invalid key = %v, want INVALID_ARGUMENT", err)
	}
}

// A peer that answers with a key it was not asked about is malformed, not believed.
func TestAppendFoundRefusesUnaskedKeys(t *testing.T) {
	asked := map[storage.Key]bool{key(storage.KindCAS, "a"): true}
	other := infoFor(key(storage.KindCAS, "b"), []byte("x"), version(1))
	if _, err := appendFound(nil, []*peerpb.ObjectHeader{infoToHeader(other, false)}, asked); err == nil {
		t.Fatal("an unasked key was accepted")
	}
	mine := infoFor(key(storage.KindCAS, "a"), []byte("x"), version(1))
	got, err := appendFound(nil, []*peerpb.ObjectHeader{infoToHeader(mine, false)}, asked)
	if err != nil || !slices.ContainsFunc(got, func(i storage.Info) bool { return i.Key == mine.Key }) {
		t.Fatalf("appendFound = %v, %v", got, err)
	}
}
