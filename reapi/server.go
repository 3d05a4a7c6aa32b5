package reapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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
	store   storage.Store
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
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	c, err := newCodecs()
	if err != nil {
		return nil, err
	}
	return &Server{
		cfg:       cfg.withDefaults(),
		store:     deps.Store,
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
	byteStreamServiceDesc.ServiceName,
}

// Register adds Capabilities, ContentAddressableStorage, ActionCache, ByteStream, gRPC health
// and server reflection to g. Every handler is wrapped to record kura_grpc_* metrics and to
// turn a panic into INTERNAL instead of a crashed process; unary handlers also get their
// request id there (see tracing.go). g must be built with (*Server).ServerOptions.
func (s *Server) Register(g *grpc.Server) {
	r := &instrumentedRegistrar{server: g, s: s}
	repb.RegisterCapabilitiesServer(r, &capabilitiesServer{s: s})
	repb.RegisterContentAddressableStorageServer(r, &casServer{s: s})
	repb.RegisterActionCacheServer(r, &acServer{s: s})
	r.RegisterService(&byteStreamServiceDesc, &byteStreamServer{s: s})
	healthpb.RegisterHealthServer(r, s.health)
	reflection.Register(r)
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

// instrumentedRegistrar registers services on a grpc.Server with every handler wrapped.
// It also lets the reflection service list what the grpc.Server holds.
type instrumentedRegistrar struct {
	server *grpc.Server
	s      *Server
}

func (r *instrumentedRegistrar) GetServiceInfo() map[string]grpc.ServiceInfo {
	return r.server.GetServiceInfo()
}

func (r *instrumentedRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	wrapped := *desc
	wrapped.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		method := "/" + desc.ServiceName + "/" + m.MethodName
		inner := m.Handler
		m.Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (resp any, err error) {
			start := time.Now()
			ctx = unaryRequestID(ctx)
			defer func() {
				if p := recover(); p != nil {
					err = r.s.panicked(ctx, method, p)
				}
				r.s.finished(ctx, method, start, err)
			}()
			return inner(srv, ctx, dec, ic)
		}
		wrapped.Methods[i] = m
	}
	wrapped.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		method := "/" + desc.ServiceName + "/" + sd.StreamName
		inner := sd.Handler
		sd.Handler = func(srv any, stream grpc.ServerStream) (err error) {
			start := time.Now()
			defer func() {
				if p := recover(); p != nil {
					err = r.s.panicked(stream.Context(), method, p)
				}
				r.s.finished(stream.Context(), method, start, err)
			}()
			return inner(srv, stream)
		}
		wrapped.Streams[i] = sd
	}
	r.server.RegisterService(&wrapped, impl)
}

func (s *Server) panicked(ctx context.Context, method string, p any) error {
	s.log.ErrorContext(ctx, "panic in gRPC handler", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

// finished records a request's metrics and logs the failures an operator should see; every
// other call gets a debug line. ctx carries the call's request id and span.
func (s *Server) finished(ctx context.Context, method string, start time.Time, err error) {
	code := status.Code(err)
	took := time.Since(start)
	s.metrics.observeRequest(method, code, took)
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
