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

// unaryAdmit and streamAdmit count a call as in flight, or refuse it while the node drains.
// Health checks are neither counted nor refused: they report NOT_SERVING during the drain.
func (s *Server) unaryAdmit(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	entered, err := s.admit(info.FullMethod)
	if err != nil {
		return nil, err
	}
	if entered {
		defer s.lifecycle.Leave()
	}
	return handler(ctx, req)
}

func (s *Server) streamAdmit(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	entered, err := s.admit(info.FullMethod)
	if err != nil {
		return err
	}
	if entered {
		defer s.lifecycle.Leave()
	}
	return handler(srv, ss)
}

// admit enters the lifecycle for one call of fullMethod (entered: the caller must Leave).
func (s *Server) admit(fullMethod string) (entered bool, err error) {
	if isHealthCheck(fullMethod) {
		return false, nil
	}
	if !s.lifecycle.Enter() {
		return false, errDraining
	}
	return true, nil
}

// isHealthCheck reports whether fullMethod is a gRPC health check: probes are never refused,
// counted as in flight, or run through the policy.
func isHealthCheck(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/")
}
