package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kuracache/kura/analytics"
	"github.com/kuracache/kura/cluster"
	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/httpapi"
	"github.com/kuracache/kura/internal/config"
	"github.com/kuracache/kura/internal/lifecycle"
	"github.com/kuracache/kura/internal/memory"
	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/outbox"
	"github.com/kuracache/kura/outbox/antientropy"
	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/reapi"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
)

// Version is the build's version, set with -ldflags "-X github.com/kuracache/kura/internal/app.Version=…".
var Version = "dev"

// App is one running Kura node.
type App struct {
	cfg      *config.Config
	logger   *slog.Logger
	registry *prometheus.Registry
	store    *local.Store
	http     *httpapi.Server
	grpc     *grpc.Server
	reapi    *reapi.Server
	httpLn   net.Listener
	grpcLn   net.Listener
	// pprof is the opt-in profiling listener (KURA_PPROF_ADDRESS); nil when off.
	pprof *pprofServer

	// The cluster: membership, the internal plane, replication and repair.
	cluster    *cluster.Cluster
	peerServer *peer.Server
	peerClient *peer.Client
	internalLn net.Listener
	outbox     *outbox.Outbox
	sweeper    *antientropy.Sweeper
	// readThrough is the front ends' store: reads missing here are asked of peers. It owns
	// those fetches; Run closes it before the peer client and the store under it.
	readThrough *antientropy.ReadThrough

	// memory keeps the node within its memory watermarks (docs/contract.md §6).
	memory *memory.Controller

	// life is the node's traffic state (joining, serving, draining) and its requests in flight.
	life *lifecycle.Node

	// policy runs the operator's Lua hooks before every public request; nil when off.
	policy *policy.Engine
	// analytics sends the runtime analytics webhooks (docs/contract.md §9); nil when they are off.
	analytics *analytics.Reporter
	// tracing is the tracer provider injected everywhere (no-op without
	// KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); Run flushes it last.
	tracing *telemetry.Tracing
}

// traceFlushTimeout bounds the export of buffered spans when a node fails to start (a
// running node flushes within what is left of its drain deadline): a collector that is down
// must not hold up the exit.
const traceFlushTimeout = 5 * time.Second

// options are seams for in-package tests; New uses the zero value (the real system).
type options struct {
	// memorySample replaces the memory controller's system sampler, so a test can move a node
	// across its watermarks and back without allocating gigabytes.
	memorySample func() (int64, error)
	// memoryInterval replaces the controller's sampling interval (0: its default).
	memoryInterval time.Duration
}

// New opens the store and binds every listener; nothing is served until Run. On error
// everything opened so far is closed again.
func New(cfg *config.Config, logger *slog.Logger) (*App, error) {
	return newApp(cfg, logger, options{})
}

func newApp(cfg *config.Config, logger *slog.Logger, opts options) (_ *App, err error) {
	a := &App{cfg: cfg, logger: logger}
	a.registry = telemetry.NewRegistry(telemetry.NodeIdentity{
		Node: cfg.NodeName, Region: cfg.Region, TenantID: cfg.TenantID, Version: Version,
	})
	defer func() {
		if err != nil {
			a.closeOpened()
		}
	}()
	if a.life, err = lifecycle.New(a.registry); err != nil {
		return nil, err
	}
	if err := a.buildTracing(); err != nil {
		return nil, err
	}
	tp := a.tracing.Provider()

	// The replication seam is bound once, in construction order (no hook is set later): the
	// internal plane's client, the outbox on the data directory's metadata database, the store
	// with the outbox as its commit observer, then the rest of the cluster around the store.
	peerServerCfg, err := a.buildPeerClient()
	if err != nil {
		return nil, err
	}
	if err := a.openStore(); err != nil {
		return nil, err
	}
	if err := a.buildCluster(peerServerCfg); err != nil {
		return nil, err
	}
	if err := a.buildMemoryController(opts); err != nil {
		return nil, err
	}
	// Front ends read through to peers on a local miss; the internal plane, the outbox and the
	// sweeper use the raw local store, so a miss never bounces between nodes. Writes and the
	// write path's existence checks get the raw store as Local: they never ask peers.
	a.readThrough, err = antientropy.NewReadThrough(a.store, a.peerClient, peersView{a.cluster}, cfg.Region, antientropy.ReadThroughOptions{
		MaxKeyValueBytes: cfg.MaxKeyValueBytes,
		FindTimeout:      cfg.ReadThroughFindTimeout,
		Logger:           logger,
		Registerer:       a.registry,
	})
	if err != nil {
		return nil, err
	}

	// A nil *Engine or *Reporter must not reach Deps as a non-nil interface.
	var httpGuard httpapi.Guard
	var grpcGuard reapi.Guard
	if cfg.Extension.Enabled {
		if a.policy, err = a.buildPolicy(); err != nil {
			return nil, err
		}
		httpGuard, grpcGuard = a.policy, a.policy
	}
	var events httpapi.EventRecorder
	if cfg.Analytics.Enabled() {
		if a.analytics, err = a.buildAnalytics(); err != nil {
			return nil, err
		}
		events = a.analytics
	}
	a.http, err = httpapi.New(httpapi.Config{
		TenantID:          cfg.TenantID,
		Region:            cfg.Region,
		NodeName:          cfg.NodeName,
		NodeURL:           cfg.NodeURL,
		MaxKeyValueBytes:  cfg.MaxKeyValueBytes,
		MaxXcodeBytes:     cfg.MaxXcodeBytes,
		ReadHeaderTimeout: cfg.HTTPReadHeaderTimeout,
		BodyIdleTimeout:   cfg.HTTPBodyIdleTimeout,
	}, httpapi.Deps{
		Store:          a.readThrough,
		Local:          a.store,
		Multipart:      a.store,
		Members:        membersView{a.cluster},
		Guard:          httpGuard,
		Lifecycle:      a.life,
		Analytics:      events,
		Status:         statusView{a: a, started: time.Now()},
		Registerer:     a.registry,
		Gatherer:       a.registry,
		Logger:         logger.With("component", "http"),
		TracerProvider: tp,
	})
	if err != nil {
		return nil, fmt.Errorf("build the HTTP API: %w", err)
	}

	reapiCfg := reapi.Config{TenantID: cfg.TenantID, ResumableMinBytes: cfg.ResumableUploadMinBytes}
	a.reapi, err = reapi.New(reapiCfg, reapi.Deps{
		Store:          a.readThrough,
		Local:          a.store,
		Registerer:     a.registry,
		Logger:         logger.With("component", "reapi"),
		Guard:          grpcGuard,
		Lifecycle:      a.life,
		TracerProvider: tp,
	})
	if err != nil {
		return nil, fmt.Errorf("build the REAPI services: %w", err)
	}
	grpcOpts := a.reapi.ServerOptions()
	var httpTLS *tls.Config
	if cfg.PublicTLS.Enabled() {
		var grpcTLS *tls.Config
		if httpTLS, grpcTLS, err = a.publicTLS(); err != nil {
			return nil, err
		}
		grpcOpts = append(grpcOpts, grpc.Creds(credentials.NewTLS(grpcTLS)))
	}
	a.grpc = grpc.NewServer(grpcOpts...)
	a.reapi.Register(a.grpc)

	if a.httpLn, err = listen(cfg.BindAddress, cfg.Port, "KURA_PORT"); err != nil {
		return nil, err
	}
	a.httpLn = tlsListener(a.httpLn, httpTLS)
	if a.grpcLn, err = listen(cfg.BindAddress, cfg.GRPCPort, "KURA_GRPC_PORT"); err != nil {
		return nil, err
	}
	if a.pprof, err = newPprofServer(cfg.PprofAddress); err != nil {
		return nil, err
	}
	return a, nil
}

// openStore opens the data directory, builds the outbox on its metadata database (the queue
// shares the store's batches) and opens the store with the outbox as its CommitObserver. The
// outbox pushes from the store once Run hands it over.
func (a *App) openStore() error {
	cfg := a.cfg
	logger := a.logger.With("component", "storage")
	dir, err := local.OpenDataDir(cfg.DataDir, meta.Options{
		BlockCacheBytes:             cfg.MetadataStoreReadCacheBytes,
		MemTableBytes:               cfg.MetadataStoreWriteBufferBytes,
		MemTableStopWritesThreshold: cfg.MetadataStoreMaxWriteBuffers,
		MaxOpenFiles:                cfg.MetadataStoreMaxOpenFiles,
		CompactionConcurrency:       cfg.MetadataStoreMaxBackgroundJobs,
		Logger:                      logger,
	})
	if err != nil {
		return fmt.Errorf("open the store in %s: %w", cfg.DataDir, err)
	}
	a.outbox, err = outbox.New(outbox.Config{
		DB:             dir.DB(),
		Sender:         a.peerClient,
		DropAfter:      cfg.OutboxDropAfter,
		Logger:         a.logger.With("component", "outbox"),
		Registerer:     a.registry,
		TracerProvider: a.tracing.Provider(),
	})
	if err != nil {
		_ = dir.Close()
		return fmt.Errorf("open the replication outbox: %w", err)
	}
	// From here the store owns dir, also when Open fails.
	a.store, err = local.Open(local.Options{
		Dir:             dir,
		TmpDir:          cfg.TmpDir,
		DiskBudgetBytes: cfg.DiskBudgetBytes,
		// docs/contract.md §6 budgets: every store descriptor comes out of the pool, the handle cache
		// stays below it, and the manifest cache is bounded in bytes.
		FileDescriptorPoolSize:       cfg.FileDescriptorPoolSize,
		FileDescriptorAcquireTimeout: cfg.FileDescriptorAcquireTimeout,
		SegmentHandleCacheSize:       cfg.SegmentHandleCacheSize,
		ManifestCacheMaxBytes:        cfg.ManifestCacheMaxBytes,
		Logger:                       logger,
		Registerer:                   a.registry,
		TracerProvider:               a.tracing.Provider(),
		Observer:                     a.outbox,
		Retention:                    retentionOptions(cfg.Retention),
	})
	if err != nil {
		return fmt.Errorf("open the store in %s: %w", cfg.DataDir, err)
	}
	return nil
}

// retentionOptions turns KURA_RETENTION_* into the store's retention, nil when no namespace
// has a maximum age (the store then tracks no use at all).
func retentionOptions(r config.RetentionConfig) *local.RetentionOptions {
	if !r.Enabled() {
		return nil
	}
	return &local.RetentionOptions{MaxAge: r.MaxAgeFor, SweepInterval: r.SweepInterval}
}

// buildAnalytics builds the webhook reporter from KURA_ANALYTICS_*.
func (a *App) buildAnalytics() (*analytics.Reporter, error) {
	ac := a.cfg.Analytics
	r, err := analytics.New(analytics.Config{
		ServerURL:               ac.ServerURL,
		SigningKey:              ac.SigningKey,
		NodeURL:                 a.cfg.NodeURL,
		BatchSize:               ac.BatchSize,
		BatchTimeout:            ac.BatchTimeout,
		RequestTimeout:          ac.RequestTimeout,
		QueueCapacity:           ac.QueueCapacity,
		BreakerFailureThreshold: ac.CircuitBreakerFailureThreshold,
		BreakerOpen:             ac.CircuitBreakerOpen,
		Logger:                  a.logger.With("component", "analytics"),
		Registerer:              a.registry,
	})
	if err != nil {
		return nil, fmt.Errorf("build the analytics reporter (KURA_ANALYTICS_*): %w", err)
	}
	return r, nil
}

// logAnalytics says once at startup whether analytics webhooks are sent, and where.
func (a *App) logAnalytics() {
	if a.analytics == nil {
		a.logger.Info("analytics webhooks off", "reason", "KURA_ANALYTICS_SERVER_URL not set")
		return
	}
	ac := a.cfg.Analytics
	a.logger.Info("analytics webhooks on",
		"server_url", a.analytics.ServerURL(), "batch_size", ac.BatchSize, "batch_timeout", ac.BatchTimeout,
		"queue_capacity", ac.QueueCapacity, "request_timeout", ac.RequestTimeout,
		"circuit_breaker_failure_threshold", ac.CircuitBreakerFailureThreshold,
		"circuit_breaker_open", ac.CircuitBreakerOpen)
}

func listen(host string, port int, variable string) (net.Listener, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (%s): %w", addr, variable, err)
	}
	return ln, nil
}

// HTTPAddr and GRPCAddr are the bound addresses (useful when a port was 0 in tests).
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

// GRPCAddr is the bound REAPI address.
func (a *App) GRPCAddr() string { return a.grpcLn.Addr().String() }

// PprofAddr is the bound profiling address, "" when KURA_PPROF_ADDRESS is unset.
func (a *App) PprofAddr() string {
	if a.pprof == nil {
		return ""
	}
	return a.pprof.Addr()
}

// closeOpened releases whatever New managed to open before it failed.
func (a *App) closeOpened() {
	if a.pprof != nil {
		a.pprof.stop()
	}
	for _, ln := range []net.Listener{a.httpLn, a.grpcLn, a.internalLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
	// Never served, so nothing runs in them, but grpc.NewServer started their stream workers.
	if a.peerServer != nil {
		a.peerServer.Stop(context.Background())
	}
	if a.grpc != nil {
		a.grpc.Stop()
	}
	if a.cluster != nil {
		if err := a.cluster.Close(); err != nil {
			a.logger.Warn("closing the gossip listener after a failed start", "err", err)
		}
	}
	if a.readThrough != nil {
		_ = a.readThrough.Close()
	}
	if a.peerClient != nil {
		_ = a.peerClient.Close()
	}
	if a.policy != nil {
		_ = a.policy.Close()
	}
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			a.logger.Error("closing the store after a failed start", "err", err)
		}
	}
	if a.tracing != nil {
		a.flushTraces(time.Now().Add(traceFlushTimeout))
	}
}
