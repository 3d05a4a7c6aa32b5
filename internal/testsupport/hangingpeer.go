package testsupport

import (
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// HangingPeer is a real internal-plane gRPC server on 127.0.0.1 whose every handler blocks
// until the call is cancelled (a peer that accepted the connection and never answers). It
// counts the calls each method received, so a test can assert a path never asked a peer.
type HangingPeer struct {
	peerpb.UnimplementedReplicationServer
	// Addr is the listening host:port.
	Addr string

	mu    sync.Mutex
	calls map[string]int
}

// NewHangingPeer serves a HangingPeer until the test ends.
func NewHangingPeer(t testing.TB) *HangingPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("hanging peer: listen: %v", err)
	}
	p := &HangingPeer{Addr: ln.Addr().String(), calls: map[string]int{}}
	srv := grpc.NewServer()
	peerpb.RegisterReplicationServer(srv, p)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop() // cancels the blocked handlers
		<-served
	})
	return p
}

// Calls returns how many calls method ("FetchObject", "FindObjects", …) received.
func (p *HangingPeer) Calls(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[method]
}

// Total returns the calls of every method together.
func (p *HangingPeer) Total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.calls {
		n += c
	}
	return n
}

func (p *HangingPeer) hang(ctx context.Context, method string) error {
	p.mu.Lock()
	p.calls[method]++
	p.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}

// FetchObject blocks.
func (p *HangingPeer) FetchObject(_ *peerpb.FetchObjectRequest, s peerpb.Replication_FetchObjectServer) error {
	return p.hang(s.Context(), "FetchObject")
}

// FindObjects blocks.
func (p *HangingPeer) FindObjects(ctx context.Context, _ *peerpb.FindObjectsRequest) (*peerpb.FindObjectsResponse, error) {
	return nil, p.hang(ctx, "FindObjects")
}

// PushObject blocks.
func (p *HangingPeer) PushObject(s peerpb.Replication_PushObjectServer) error {
	return p.hang(s.Context(), "PushObject")
}

// ListObjects blocks.
func (p *HangingPeer) ListObjects(ctx context.Context, _ *peerpb.ListObjectsRequest) (*peerpb.ListObjectsResponse, error) {
	return nil, p.hang(ctx, "ListObjects")
}
