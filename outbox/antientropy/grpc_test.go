package antientropy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/storage"
)

// The internal-plane client is the Source the app wires in.
var _ Source = (*peer.Client)(nil)

// serveInternal starts n's internal plane on a loopback port and points n.Addr at it.
func serveInternal(t testing.TB, n *node) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := peer.NewServer(peer.ServerConfig{Registerer: prometheus.NewRegistry()}, n.store)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Stop(ctx)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	n.Addr = ln.Addr().String()
}

func newClient(t testing.TB) *peer.Client {
	c := peer.NewClient(peer.ClientConfig{Registerer: prometheus.NewRegistry()})
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	})
	return c
}

// Anti-entropy, bootstrap and read-through over real gRPC between two disk stores.
func TestOverInternalPlane(t *testing.T) {
	a, b := diskNode(t, "a", "us"), diskNode(t, "b", "us")
	serveInternal(t, a)
	serveInternal(t, b)
	client := newClient(t)

	common := putMany(t, a.store, "common", 100)
	replicate(t, a.store, b.store, common)
	missed := putMany(t, a.store, "missed", 500)
	big := key("app", storage.KindCAS, "big")
	bigBody := string(make([]byte, 3<<20+17)) // several gRPC chunks
	put(t, a.store, big, bigBody, 0)
	stub := storage.Info{Key: key("app", storage.KindNx, "evicted"), Size: 5, SHA256: [32]byte{9}, Version: storage.MakeVersion(1_700_000_000_000, 0)}
	if err := a.store.ApplyStub(context.Background(), stub); err != nil {
		t.Fatal(err)
	}
	if err := a.store.DeleteNamespace(context.Background(), "acme", "gone", 0); err != nil {
		t.Fatal(err)
	}

	sw, _ := newSweeper(t, b, client, newPeers(a), func(c *Config) { c.PageSize = 100 })
	res := sweep(t, sw)
	if res.ObjectsPulled != len(missed)+1 || res.StubsApplied != 1 || res.TombstonesApplied != 1 {
		t.Fatalf("sweep over gRPC: %+v", res)
	}
	assertConverged(t, a, b)
	if got := mustRead(t, b.store, big); got != bigBody {
		t.Fatal("big body differs after the pull")
	}

	// Read-through over gRPC, with a peer that is down listed first.
	late := key("app", storage.KindGradle, "late")
	put(t, a.store, late, "written after the sweep", 0)
	down := Peer{Name: "down", Region: "us", Addr: "127.0.0.1:1"}
	peers := &peerList{peers: []Peer{down, a.Peer}}
	rt := mustReadThrough(t, b.store, client, peers, "us", ReadThroughOptions{PeerTimeout: 2 * time.Second})
	if got := mustRead(t, rt, late); got != "written after the sweep" {
		t.Fatalf("read through gRPC: %q", got)
	}
	if _, err := rt.Open(testCtx(t), key("app", storage.KindGradle, "nowhere"), 0, -1); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("miss over gRPC: %v", err)
	}
}
