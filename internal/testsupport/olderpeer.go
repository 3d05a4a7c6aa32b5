package testsupport

import (
	"net"
	"testing"

	"google.golang.org/grpc"

	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// NewOlderPeer serves, until the test ends, a real internal-plane gRPC server on 127.0.0.1
// that implements none of the Replication methods, as a node of a version that predates a
// method answers it (UNIMPLEMENTED). It returns the listening host:port.
func NewOlderPeer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("older peer: listen: %v", err)
	}
	srv := grpc.NewServer()
	peerpb.RegisterReplicationServer(srv, peerpb.UnimplementedReplicationServer{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return ln.Addr().String()
}
