package reapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/internal/lifecycle"
	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/storage"
)

// Server holds the REAPI cache services. It is safe for concurrent use; it starts no
// goroutines of its own outside requests, so it needs no Close.
type Server struct {
	cfg     Config
	store   storage.Store // reads and existence questions (may ask peers)
	local   storage.Store // writes and their existence checks (never asks peers)
	log     *slog.Logger
	metrics *metrics
	codecs  *codecs
	health  *health.Server
	guard   Guard
	stats   stats.Handler // nil: tracing off
	// lifecycle is nil outside a node (tests): no call is refused or counted.
	lifecycle *lifecycle.Node
}

// New validates cfg and builds the services.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("REAPI configuration: %w", err)
	}
	if deps.Store == nil {
		return nil, errors.New("REAPI: Deps.Store is required")
	}
	reg := deps.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(reg, cfg.TenantID)
	if err != nil {
		return nil, err
	}
	c, err := newCodecs()
	if err != nil {
		return nil, err
	}
	return &Server{
		cfg:       cfg,
		store:     deps.Store,
		local:     cmp.Or[storage.Store](deps.Local, deps.Store),
		log:       logger,
		metrics:   m,
		codecs:    c,
		health:    health.NewServer(),
		guard:     deps.Guard,
		lifecycle: deps.Lifecycle,
		stats:     telemetry.GRPCServerHandler(deps.TracerProvider),
	}, nil
}

// servedServices are reported SERVING by the health service.
var servedServices = []string{
	repb.Capabilities_ServiceDesc.ServiceName,
	repb.ContentAddressableStorage_ServiceDesc.ServiceName,
	repb.ActionCache_ServiceDesc.ServiceName,
	"google.bytestream.ByteStream",
}

// Register adds Capabilities, ContentAddressableStorage, ActionCache, ByteStream, gRPC health
// and server reflection to g. g must be built with (*Server).ServerOptions, whose first
// interceptors give every call its request id, turn a panic into INTERNAL instead of a
// crashed process and record the kura_grpc_* metrics.
func (s *Server) Register(g *grpc.Server) {
	repb.RegisterCapabilitiesServer(g, &capabilitiesServer{s: s})
	g.RegisterService(casServiceDesc(), &casServer{s: s})
	repb.RegisterActionCacheServer(g, &acServer{s: s})
	bspb.RegisterByteStreamServer(g, &byteStreamServer{s: s})
	healthpb.RegisterHealthServer(g, s.health)
	reflection.Register(g)
	s.SetServing(true)
}

// SetServing flips the health status of every service, for example to NOT_SERVING at the
// start of a graceful shutdown so load balancers stop sending new work.
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	for _, name := range servedServices {
		s.health.SetServingStatus(name, st)
	}
}

// unaryObserve is the first unary interceptor (see (*Server).ServerOptions): it gives the
// call its request id, turns a panic into INTERNAL and records the call (finished), so a call
// a later interceptor refuses (a draining node, the policy) is counted and logged too.
func (s *Server) unaryObserve(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	call := ctx
	ctx = requestID(ctx, func(md metadata.MD) error { return grpc.SetHeader(call, md) })
	defer func() {
		if p := recover(); p != nil {
			resp, err = nil, s.panicked(ctx, info.FullMethod, p)
		}
		s.finished(ctx, info.FullMethod, start, err)
	}()
	return handler(ctx, req)
}

// streamObserve is unaryObserve for streams; the handler and the later interceptors see the
// request id in the stream's context. Streams are timed until the handler returns.
func (s *Server) streamObserve(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	ctx := requestID(ss.Context(), ss.SetHeader)
	defer func() {
		if p := recover(); p != nil {
			err = s.panicked(ctx, info.FullMethod, p)
		}
		s.finished(ctx, info.FullMethod, start, err)
	}()
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

func (s *Server) panicked(ctx context.Context, method string, p any) error {
	s.log.ErrorContext(ctx, "panic in gRPC handler", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

// finished records a request's metrics and logs the failures an operator should see; every
// other call gets a debug line, including the refusals of a draining node, which is working
// as designed (as the HTTP API logs its own). ctx carries the call's request id and span.
func (s *Server) finished(ctx context.Context, method string, start time.Time, err error) {
	code := status.Code(err)
	took := time.Since(start)
	s.metrics.observeRequest(method, code, took)
	if errors.Is(err, errDraining) {
		s.log.DebugContext(ctx, "gRPC request rejected", "method", method, "code", code.String(), "err", err)
		return
	}
	switch code {
	case codes.Internal, codes.Unknown, codes.Unavailable, codes.DataLoss:
		s.log.WarnContext(ctx, "gRPC request failed", "method", method, "code", code.String(), "err", err)
	case codes.ResourceExhausted:
		s.log.WarnContext(ctx, "gRPC request refused for lack of resources", "method", method, "err", err)
	case codes.OK, codes.NotFound, codes.Canceled:
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.LogAttrs(ctx, slog.LevelDebug, "gRPC request", slog.String("method", method),
				slog.String("code", code.String()), slog.Duration("duration", took))
		}
	default:
		s.log.DebugContext(ctx, "gRPC request rejected", "method", method, "code", code.String(), "err", err)
	}
}

func (s *Server) tenant() string { return s.cfg.TenantID }
