package reapi

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errDraining refuses a call that arrives while the node drains. UNAVAILABLE is the code
// clients retry on another endpoint.
var errDraining = status.Error(codes.Unavailable, "draining: this node is shutting down; retry on another node")

// unaryAdmit counts a call as in flight, or refuses it while the node drains. Health checks
// are neither counted nor refused: they report NOT_SERVING during the drain.
func (s *Server) unaryAdmit(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, healthServicePrefix) {
		return handler(ctx, req)
	}
	if !s.lifecycle.Enter() {
		return nil, errDraining
	}
	defer s.lifecycle.Leave()
	return handler(ctx, req)
}

func (s *Server) streamAdmit(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, healthServicePrefix) {
		return handler(srv, ss)
	}
	if !s.lifecycle.Enter() {
		return errDraining
	}
	defer s.lifecycle.Leave()
	return handler(srv, ss)
}
