package httpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"testing"
	"time"

	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/outbox/antientropy"
	"github.com/kuracache/kura/storage"
)

// staticPeers is a fixed live-peer list.
type staticPeers []antientropy.Peer

func (p staticPeers) Peers() []antientropy.Peer { return p }

// readThroughTo wires the store as a node does: the read path reads through to the given
// peer over the real internal-plane client, the write path gets the raw store.
func readThroughTo(addr string) func(t testing.TB, local storage.Store) storage.Store {
	return func(t testing.TB, local storage.Store) storage.Store {
		client := peer.NewClient(peer.ClientConfig{})
		t.Cleanup(func() { _ = client.Close() })
		rt, err := antientropy.NewReadThrough(local, client, staticPeers{{Name: "hung", Region: "eu", Addr: addr}}, "eu",
			antientropy.ReadThroughOptions{PeerTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rt.Close() })
		return rt
	}
}

// Existence checks on the write path never read through (docs/contract.md §5): with a peer that hangs,
// writes of new keys on every surface are answered from the local store, and the peer never
// receives a call; a read of a missing key does ask it (the wiring is live).
func TestWritesNeverAskPeers(t *testing.T) {
	hung := testsupport.NewHangingPeer(t)
	h := newHarness(t, harnessOpts{front: readThroughTo(hung.Addr)})

	blob := "a new cas blob"
	sum := sha256.Sum256([]byte(blob))
	d := hex.EncodeToString(sum[:])
	expect(t, h.do("PUT", "/cas/"+d, blob), http.StatusOK, "")
	expect(t, h.do("PUT", "/cas/"+d, blob), http.StatusOK, "") // exists: answered without the body
	expect(t, h.do("PUT", "/ac/"+d, "result"), http.StatusOK, "")
	expect(t, h.do("PUT", "/api/cache/gradle/acme/android/new-key", "gradle-entry"), http.StatusCreated, "")
	expect(t, h.do("PUT", "/v1/cache/4711", "nx output"), http.StatusOK, "")
	expect(t, h.do("PUT", "/v1/cache/4711", "other"), http.StatusConflict, "")
	expect(t, h.do("PUT", "/api/cache/keyvalue?tenant_id=acme&namespace_id=ios", `{"cas_id":"cas-1","entries":[]}`), http.StatusNoContent, "")
	if id := startUpload(t, h, "tenant_id=acme&namespace_id=ios&hash=new-hash&name=M.zip&cache_category=builds"); id == nil {
		t.Fatal("module start of a new artifact returned no upload id")
	}
	if n := hung.Total(); n != 0 {
		t.Fatalf("the hanging peer got %d calls from writes (FetchObject %d, FindObjects %d); want none",
			n, hung.Calls("FetchObject"), hung.Calls("FindObjects"))
	}

	// Control: a read of a key missing here does ask the peer, and falls back to 404 when it
	// stays silent.
	expectEmpty404(t, h.do("GET", "/api/cache/gradle/acme/android/nowhere", nil))
	if n := hung.Calls("FetchObject"); n != 1 {
		t.Fatalf("a read miss made %d FetchObject calls, want 1", n)
	}
}
