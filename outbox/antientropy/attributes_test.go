package antientropy

import (
	"bytes"
	"context"
	"testing"

	"github.com/kuracache/kura/storage"
)

// TestAttributesOverInternalPlane: an object's attributes (Turborepo's duration and tag)
// reach a node that bootstraps from a peer over real gRPC, with pulled bodies and with
// evicted stubs, and a read through a peer stores them too.
func TestAttributesOverInternalPlane(t *testing.T) {
	a, b, c := diskNode(t, "a", "us"), diskNode(t, "b", "us"), diskNode(t, "c", "us")
	serveInternal(t, a)
	client := newClient(t)
	attrs, err := storage.NewAttributes(map[string]string{"turbo.duration-ms": "1500", "turbo.tag": "c2lnbmVk"})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("zstd tar")
	artifact := key("team_a", storage.KindTurbo, "a1b2c3d4")
	res, err := a.store.Put(context.Background(), artifact, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body)), Attributes: attrs})
	if err != nil || !res.Created {
		t.Fatalf("put: %+v, %v", res, err)
	}
	stub := storage.Info{Key: key("team_a", storage.KindTurbo, "e5f6"), Size: 5, SHA256: [32]byte{7}, Version: res.Info.Version, Attributes: attrs}
	if err := a.store.ApplyStub(context.Background(), stub); err != nil {
		t.Fatal(err)
	}

	sw, _ := newSweeper(t, b, client, newPeers(a), nil)
	if got := sweep(t, sw); got.ObjectsPulled != 1 || got.StubsApplied != 1 {
		t.Fatalf("bootstrap over gRPC: %+v", got)
	}
	assertConverged(t, a, b)
	if info, err := b.store.Stat(context.Background(), artifact); err != nil || info != res.Info {
		t.Fatalf("pulled copy: %+v, %v; want the origin's %+v", info, err, res.Info)
	}
	list, _, err := b.store.ListObjects(context.Background(), storage.DigestBucketBits, nil, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	stubs := 0
	for _, o := range list {
		if o.Evicted && o.Info.Key == stub.Key {
			stubs++
			if o.Info.Attributes != attrs {
				t.Fatalf("stub on B lost its attributes: %+v", o.Info)
			}
		}
	}
	if stubs != 1 {
		t.Fatalf("B's listing %+v has no stub of %s", list, stub.Key)
	}

	rt := mustReadThrough(t, c.store, client, newPeers(a), "us", ReadThroughOptions{})
	r, err := rt.Open(testCtx(t), artifact, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	if r.Info().Attributes != attrs {
		t.Fatalf("read through: %+v", r.Info())
	}
	if info, err := c.store.Stat(context.Background(), artifact); err != nil || info.Attributes != attrs {
		t.Fatalf("read-through copy on C: %+v, %v", info, err)
	}
}
