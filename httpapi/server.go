package httpapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/internal/lifecycle"
	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/storage"
)

// Default limits and timeouts. Each is the value an operator gets without configuration.
const (
	// DefaultMaxKeyValueBytes matches KURA_MAX_KEYVALUE_BYTES' default.
	DefaultMaxKeyValueBytes = 1 << 20
	// DefaultMaxXcodeBytes matches KURA_MAX_XCODE_BYTES' default (256 MiB).
	DefaultMaxXcodeBytes = 256 << 20
	// MaxGradleBytes is the Gradle build-cache entry limit (docs/contract.md §3).
	MaxGradleBytes = 100 << 20
	// MaxBlobBytes bounds Nx, Metro and Bazel CAS bodies (docs/contract.md §3: 2 GiB).
	MaxBlobBytes = 2 << 30
	// MaxActionResultBytes bounds Bazel HTTP /ac/ bodies. An ActionResult only lists digests
	// (Bazel's HTTP mode never inlines outputs), so 16 MiB is far above any real one while
	// keeping a hostile client from parking gigabytes in the mutable action cache.
	MaxActionResultBytes = 16 << 20
	// maxCompleteBodyBytes caps a multipart completion list: 10000 part numbers of at most
	// five digits plus separators fit in well under 64 KiB.
	maxCompleteBodyBytes = 64 << 10

	// DefaultBodyIdleTimeout is how long a request body may stall, or a response may fail to
	// drain, before the connection is dropped. See Serve for why this replaces a whole-request
	// ReadTimeout/WriteTimeout.
	DefaultBodyIdleTimeout = 2 * time.Minute
	// DefaultReadHeaderTimeout bounds how long a client may take to send request headers
	// (slowloris).
	DefaultReadHeaderTimeout = 10 * time.Second
	// idleTimeout closes keep-alive connections nobody uses; build clients reconnect cheaply.
	idleTimeout = 2 * time.Minute
	// maxHeaderBytes leaves room for large bearer tokens (JWTs) while refusing header floods.
	maxHeaderBytes = 64 << 10
)

// Config is the node-level configuration the HTTP API needs.
type Config struct {
	// TenantID is the tenant for protocols that carry none (Nx, Metro, Bazel HTTP).
	TenantID string
	// Region, NodeName and NodeURL describe this node in /up.
	Region, NodeName, NodeURL string
	// MaxKeyValueBytes is KURA_MAX_KEYVALUE_BYTES (0: DefaultMaxKeyValueBytes).
	MaxKeyValueBytes int64
	// MaxXcodeBytes is KURA_MAX_XCODE_BYTES (0: DefaultMaxXcodeBytes).
	MaxXcodeBytes int64
	// BodyIdleTimeout is how long a body transfer may make no progress (0: DefaultBodyIdleTimeout).
	BodyIdleTimeout time.Duration
	// ReadHeaderTimeout is how long a client may take to send its request headers (0:
	// DefaultReadHeaderTimeout).
	ReadHeaderTimeout time.Duration
}

// Member is one live node of the cluster as /up reports it.
type Member struct{ Name, Region, URL string }

// Membership is the live cluster view for /up. Implementations are safe for concurrent use.
type Membership interface {
	// Members returns the live members, including this node.
	Members() []Member
}

// Deps are the collaborators the server calls.
type Deps struct {
	// Store serves the read path (GET, HEAD): in a cluster it reads through to peers on a
	// local miss. Required.
	Store storage.Store
	// Local is this node's own store, which never asks peers: every write, and every
	// existence check on the write path (first writer wins before a PUT reads its body, a
	// module upload's start), goes to it, so a write never waits on a peer (docs/contract.md §5). nil:
	// Store (a server without read-through, where the two are the same).
	Local     storage.Store
	Multipart storage.Multipart // required (module cache)
	Members   Membership        // nil: /up reports this node alone
	Guard     Guard             // nil: allow everything
	// Lifecycle is the node's traffic state; nil: always serving, requests not tracked.
	Lifecycle *lifecycle.Node
	Analytics EventRecorder // nil: no analytics events
	// Status feeds the status page (GET /) with the cluster, disk and memory; nil: the page
	// shows this node's identity and hit ratios only.
	Status StatusSource
	// Registerer receives the kura_http_* and kura_artifact_* metrics. Gatherer is served on
	// /metrics. When both are nil a private registry is used for both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger // nil: discard
	// TracerProvider opens a server span per request (see requestContext). nil or the no-op
	// provider: no spans, and no tracing middleware at all.
	TracerProvider trace.TracerProvider
}

// limits are the per-surface body limits. They live on the Server (not in constants read by
// handlers) so tests can exercise the exact boundaries with small values.
type limits struct {
	keyValue, xcode, gradle, blob, actionResult, part, completeBody int64
}

// Server is the public HTTP API. Create it with New; it is safe for concurrent use.
type Server struct {
	cfg     Config
	store   storage.Store // reads (may read through)
	local   storage.Store // writes and their existence checks (never asks peers)
	mp      storage.Multipart
	members Membership
	guard   Guard
	events  EventRecorder // nil: analytics off
	status  StatusSource  // nil: status page without cluster, disk and memory
	// lifecycle is nil when the server runs outside a node (tests, embedding).
	lifecycle *lifecycle.Node
	log       *slog.Logger
	metrics   *metrics
	// tracer is nil when tracing is off; propagator reads the client's trace context.
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	gatherer   prometheus.Gatherer
	limits     limits
	idle       time.Duration
	echo       *echo.Echo
	srv        *http.Server
	// routes maps echo's ":param" patterns to the "{param}" form used in metric labels and
	// policy contexts (the original Kura's route syntax, which operator scripts match on).
	routes map[string]string
}

// New validates the configuration and builds the server with every route registered.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := storage.ValidateIdentifier("tenant_id", cfg.TenantID); err != nil {
		return nil, fmt.Errorf("httpapi config: %w", err)
	}
	if deps.Store == nil {
		return nil, errors.New("httpapi: Deps.Store is required")
	}
	if deps.Multipart == nil {
		return nil, errors.New("httpapi: Deps.Multipart is required")
	}
	if cfg.MaxKeyValueBytes < 0 || cfg.MaxXcodeBytes < 0 || cfg.BodyIdleTimeout < 0 || cfg.ReadHeaderTimeout < 0 {
		return nil, errors.New("httpapi config: limits and timeouts must not be negative")
	}
	if cfg.MaxKeyValueBytes == 0 {
		cfg.MaxKeyValueBytes = DefaultMaxKeyValueBytes
	}
	if cfg.MaxXcodeBytes == 0 {
		cfg.MaxXcodeBytes = DefaultMaxXcodeBytes
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if cfg.BodyIdleTimeout == 0 {
		cfg.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	reg, gat := deps.Registerer, deps.Gatherer
	if reg == nil && gat == nil {
		r := prometheus.NewRegistry()
		reg, gat = r, r
	}
	if reg == nil {
		return nil, errors.New("httpapi: Deps.Registerer is required when Deps.Gatherer is set")
	}
	if gat == nil {
		g, ok := reg.(prometheus.Gatherer)
		if !ok {
			return nil, errors.New("httpapi: Deps.Gatherer is required when Deps.Registerer cannot gather")
		}
		gat = g
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:       cfg,
		store:     deps.Store,
		local:     cmp.Or[storage.Store](deps.Local, deps.Store),
		mp:        deps.Multipart,
		members:   deps.Members,
		guard:     deps.Guard,
		lifecycle: deps.Lifecycle,
		events:    deps.Analytics,
		status:    deps.Status,
		log:       logger,
		metrics:   m,
		gatherer:  gat,
		idle:      cfg.BodyIdleTimeout,
		limits: limits{
			keyValue:     cfg.MaxKeyValueBytes,
			xcode:        cfg.MaxXcodeBytes,
			gradle:       MaxGradleBytes,
			blob:         MaxBlobBytes,
			actionResult: MaxActionResultBytes,
			part:         storage.MaxPartBytes,
			completeBody: maxCompleteBodyBytes,
		},
		routes: map[string]string{},
	}
	if telemetry.TracingEnabled(deps.TracerProvider) {
		s.tracer = deps.TracerProvider.Tracer(tracerName)
		s.propagator = telemetry.Propagator()
	}
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	// Echo's own logger only reports "response already committed"; our handlers never write
	// twice, and everything worth saying goes through slog.
	e.Logger.SetOutput(io.Discard)
	e.HTTPErrorHandler = s.handleError
	e.Use(s.requestContext, s.observe, s.admit, s.boundBodyDrain, s.recoverPanic)
	s.echo = e
	s.registerRoutes()
	s.srv = &http.Server{
		Handler:           e,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// route registers handler for method and an echo path pattern, remembering the pattern's
// "{param}" spelling for labels.
func (s *Server) route(method, pattern string, h echo.HandlerFunc) {
	s.routes[pattern] = bracePattern(pattern)
	s.echo.Add(method, pattern, h)
}

func (s *Server) registerRoutes() {
	s.route(http.MethodGet, "/up", s.handleUp)
	s.route(http.MethodGet, "/ready", s.handleReady)
	s.route(http.MethodGet, "/metrics", s.handleMetrics())
	s.route(http.MethodGet, "/", s.handleStatus)

	s.registerXcode()
	s.registerKeyValue()
	s.registerGradle()
	s.registerModule()
	s.registerNx()
	s.registerBazel()
	s.registerMetro()
	s.registerObjects()
	s.registerTurbo()
	s.route(http.MethodDelete, "/api/cache/clean", s.handleClean)
}

// bracePattern turns "/a/:b/c" into "/a/{b}/c".
func bracePattern(p string) string {
	parts := strings.Split(p, "/")
	for i, part := range parts {
		if strings.HasPrefix(part, ":") {
			parts[i] = "{" + part[1:] + "}"
		}
	}
	return strings.Join(parts, "/")
}

// routeLabel is the route pattern of the matched route ("unmatched" when none matched), never
// the raw path, so metric cardinality stays bounded.
func (s *Server) routeLabel(c echo.Context) string {
	p := c.Path()
	if p == "" {
		return "unmatched"
	}
	if r, ok := s.routes[p]; ok {
		return r
	}
	return bracePattern(p)
}

// Handler returns the API as an http.Handler (for tests and for embedding in another server).
func (s *Server) Handler() http.Handler { return s.echo }

// Serve accepts connections on ln until Shutdown. It returns nil after a Shutdown.
//
// Timeouts: headers must arrive within Config.ReadHeaderTimeout (10 s) and idle keep-alive
// connections close after 2 min. There is deliberately no whole-request ReadTimeout or
// WriteTimeout: a 2 GiB artifact over a slow link legitimately takes many minutes, and any
// fixed bound would cut off honest clients. Instead every body transfer carries a progress
// deadline (Config.BodyIdleTimeout): each read of a request body and each write of a response
// chunk pushes the connection deadline forward, so a stalled client is dropped after the idle
// timeout while a slow but steady one is never interrupted.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
}

// Shutdown stops accepting connections and waits for in-flight requests to finish. When ctx
// ends first, the remaining connections are closed and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err == nil {
		return nil
	}
	if cerr := s.srv.Close(); cerr != nil {
		s.log.Warn("force-close http connections", "error", cerr)
	}
	return fmt.Errorf("drain http requests: %w", err)
}
