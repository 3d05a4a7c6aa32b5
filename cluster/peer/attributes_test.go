package peer

import (
	"bytes"
	"testing"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

func turboAttrs(t *testing.T, tag string) storage.Attributes {
	t.Helper()
	a, err := storage.NewAttributes(map[string]string{"turbo.duration-ms": "321", "turbo.tag": tag})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Attributes travel with every way an object crosses the plane: a single push, a batched
// push, a fetch (read-through, repair) and a listing (bootstrap, anti-entropy stubs).
func TestAttributesReplicate(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)

	body := []byte("turbo artifact")
	single := infoFor(key(storage.KindTurbo, "single"), body, version(1))
	single.Attributes = turboAttrs(t, "one")
	if applied, err := p.client.PushObject(ctx, p.addr, single, bytes.NewReader(body)); err != nil || !applied {
		t.Fatalf("PushObject = %v, %v", applied, err)
	}
	batched := infoFor(key(storage.KindTurbo, "batched"), body, version(2))
	batched.Attributes = turboAttrs(t, "two")
	res, err := p.client.PushBatch(ctx, p.addr, []storage.PutItem{{Key: batched.Key, Body: body, Opts: storage.PutOptions{
		ContentType: batched.ContentType, Size: batched.Size, ExpectedSHA256: &batched.SHA256, Version: batched.Version, Attributes: batched.Attributes,
	}}})
	if err != nil || res[0].Err != nil || !res[0].Created {
		t.Fatalf("PushBatch = %+v, %v", res, err)
	}
	for _, want := range []storage.Info{single, batched} {
		if got, err := store.Stat(ctx, want.Key); err != nil || got != want {
			t.Fatalf("stored %+v, %v; want %+v", got, err, want)
		}
		if _, finfo := mustFetch(t, p.client, p.addr, want.Key); finfo != want {
			t.Fatalf("fetched info %+v, want %+v", finfo, want)
		}
	}
	list, _, err := p.client.ListObjects(ctx, p.addr, storage.DigestBucketBits, nil, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, o := range list {
		if o.Info == single || o.Info == batched {
			seen++
		}
	}
	if seen != 2 {
		t.Fatalf("ListObjects = %+v, want both objects with their attributes", list)
	}
}

func TestHeaderRejectsBadAttributes(t *testing.T) {
	info := infoFor(key(storage.KindTurbo, "bad"), []byte("x"), version(1))
	h := infoToHeader(info, false)
	if h.GetAttributes() != nil {
		t.Fatalf("no attributes encoded as %x", h.GetAttributes())
	}
	if got, err := headerToInfo(h); err != nil || !got.Attributes.IsZero() {
		t.Fatalf("header without attributes: %+v, %v", got, err)
	}
	for _, enc := range [][]byte{{1, 1, 'A', 1, '1'}, {1, 1, 'a'}, bytes.Repeat([]byte{1}, storage.MaxAttributesBytes+1)} {
		bad := &peerpb.ObjectHeader{Key: h.GetKey(), Size: h.GetSize(), Sha256: h.GetSha256(), Version: h.GetVersion(), Attributes: enc}
		if _, err := headerToInfo(bad); err == nil {
			t.Errorf("attributes %x accepted", enc)
		}
	}
}
