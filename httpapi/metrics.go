package httpapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kuracache/kura/internal/telemetry"
)

// Results of artifact reads and writes (the "result" label).
const (
	resultHit      = "hit"      // read served
	resultMiss     = "miss"     // read of a missing object
	resultError    = "error"    // the store failed, or the transfer broke on our side
	resultStored   = "stored"   // write created the object
	resultExists   = "exists"   // write of an existing immutable object: nothing read or stored
	resultRejected = "rejected" // refused because of the client: limit, digest, bad body, denied
	resultDeleted  = "deleted"  // a plain object's DELETE stored its delete marker
)

type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	reads      *prometheus.CounterVec
	writes     *prometheus.CounterVec
	readBytes  *prometheus.CounterVec
	writeBytes *prometheus.CounterVec
	lookups    *telemetry.NamespaceLookups
	// turboEvents counts the cache usage events Turborepo reports (POST /v8/artifacts/events).
	turboEvents *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_http_requests_total",
			Help: "HTTP requests answered, by route pattern, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kura_http_request_duration_seconds",
			Help: "HTTP request latency, by route pattern and method.",
			// Long tail buckets because a 2 GiB upload legitimately takes minutes.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"route", "method"}),
		turboEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_turbo_cache_events_total",
			Help: "Cache usage events reported by Turborepo clients, by source (local, remote) and event (hit, miss).",
		}, []string{"source", "event"}),
	}
	if err := telemetry.RegisterAll(reg, m.requests, m.duration, m.turboEvents); err != nil {
		return nil, fmt.Errorf("register http metrics: %w", err)
	}
	artifacts, err := telemetry.NewArtifactMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register http metrics: %w", err)
	}
	m.reads, m.writes, m.readBytes, m.writeBytes = artifacts.Reads, artifacts.Writes, artifacts.ReadBytes, artifacts.WriteBytes
	m.lookups = artifacts.Lookups
	return m, nil
}

func (m *metrics) read(t target, result string, n int64) {
	m.reads.WithLabelValues(string(t.kind), t.client, t.class, result).Inc()
	m.lookups.Observe(t.client, t.key.Tenant, t.key.Namespace, result)
	if n > 0 {
		m.readBytes.WithLabelValues(string(t.kind), t.client, t.class).Add(float64(n))
	}
}

func (m *metrics) write(sf surface, result string, n int64) {
	m.writes.WithLabelValues(string(sf.kind), sf.client, sf.class, result).Inc()
	if n > 0 {
		m.writeBytes.WithLabelValues(string(sf.kind), sf.client, sf.class).Add(float64(n))
	}
}

// methodLabel bounds the method label to the methods HTTP defines.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// observe records the request counter and latency, the access log line and, with tracing
// on, the server span. It renders handler errors itself so the final status is known when
// counting; it also counts requests whose handler panicked (the deferred record runs while
// the panic unwinds, then the panic continues to net/http).
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		route := s.routeLabel(c)
		method := methodLabel(c.Request().Method)
		span := s.startSpan(c, route, method)
		returned := false
		defer func() {
			status := c.Response().Status
			switch {
			case !c.Response().Committed && !returned:
				// A panic before any byte was written: net/http drops the connection, which
				// clients see as a server failure.
				status = http.StatusInternalServerError
			case !c.Response().Committed:
				status = http.StatusOK // net/http's implicit answer
			}
			took := time.Since(start)
			s.metrics.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
			s.metrics.duration.WithLabelValues(route, method).Observe(took.Seconds())
			s.accessLog(c, route, method, status, took)
			if span != nil {
				endServerSpan(span, status, c.Response().Size, returned)
			}
		}()
		if err := next(c); err != nil {
			c.Error(err)
		}
		returned = true
		return nil
	}
}

// accessLog writes one debug line per request. It is debug because a busy node answers
// thousands of requests a second and each line is a synchronous write to stdout; failures
// are logged at warn or error where they happen, with the same request_id.
func (s *Server) accessLog(c echo.Context, route, method string, status int, took time.Duration) {
	ctx := c.Request().Context()
	if !s.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "request",
		slog.String("method", method), slog.String("route", route), slog.Int("status", status),
		slog.Int64("bytes_out", c.Response().Size), slog.Duration("duration", took))
}

// handleMetrics serves the injected Gatherer in the Prometheus text format.
func (s *Server) handleMetrics() echo.HandlerFunc {
	h := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{
		ErrorLog:      slogPrinter{s},
		ErrorHandling: promhttp.ContinueOnError,
	})
	return echo.WrapHandler(h)
}

type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) {
	p.s.log.Warn("gather metrics", "error", errors.New(fmt.Sprint(v...)))
}
