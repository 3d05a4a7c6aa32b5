package reapi

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/storage"
)

// Label values of the artifact metrics.
const (
	clientBazel = "bazel" // REAPI clients (Bazel, Buck2) are all counted as "bazel"

	classBlob        = "blob"         // artifact_class of CAS blobs (as httpapi labels them)
	classActionCache = "action_cache" // artifact_class of action-cache entries (as httpapi)

	resultHit      = "hit"      // read served
	resultMiss     = "miss"     // read of something absent (or incomplete, for action results)
	resultError    = "error"    // store failure
	resultStored   = "stored"   // write created the object
	resultExists   = "exists"   // write found the object already there (nothing read or stored)
	resultRejected = "rejected" // write refused: bad digest, bad data, over a limit
)

// metrics are the REAPI's Prometheus collectors.
type metrics struct {
	tenant     string                   // the server's tenant, the label of lookups
	requests   *prometheus.CounterVec   // method, code
	duration   *prometheus.HistogramVec // method
	reads      *prometheus.CounterVec   // kind, client, artifact_class, result
	lookups    *telemetry.NamespaceLookups
	writes     *prometheus.CounterVec // kind, client, artifact_class, result
	readBytes  *prometheus.CounterVec // kind, client, artifact_class
	writeBytes *prometheus.CounterVec // kind, client, artifact_class
}

// latencyBuckets span a cache hit served from page cache (~100 µs) to a multi-GiB upload.
var latencyBuckets = []float64{
	.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300,
}

func newMetrics(reg prometheus.Registerer, tenant string) (*metrics, error) {
	m := &metrics{
		tenant: tenant,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_grpc_requests_total",
			Help: "gRPC requests handled, by full method name and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kura_grpc_request_duration_seconds",
			Help:    "Time to handle a gRPC request (streams: until the handler returns), by full method name.",
			Buckets: latencyBuckets,
		}, []string{"method"}),
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	// The artifact families are shared with the HTTP API on the same registry.
	artifacts, err := telemetry.NewArtifactMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register REAPI metrics: %w", err)
	}
	m.reads, m.writes, m.readBytes, m.writeBytes = artifacts.Reads, artifacts.Writes, artifacts.ReadBytes, artifacts.WriteBytes
	m.lookups = artifacts.Lookups
	return m, nil
}

// register registers c, or reuses the identical collector registered before (a second
// server on the same registry, as tests build).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := telemetry.RegisterOrReuse(reg, c)
	if err != nil {
		return c, fmt.Errorf("register REAPI metrics: %w", err)
	}
	return c, nil
}

func (m *metrics) observeRequest(method string, code codes.Code, elapsed time.Duration) {
	m.requests.WithLabelValues(method, code.String()).Inc()
	m.duration.WithLabelValues(method).Observe(elapsed.Seconds())
}

func artifactClass(kind storage.Kind) string {
	if kind == storage.KindAC {
		return classActionCache
	}
	return classBlob
}

// protocolREAPI is the protocol label of gRPC reads in kura_cache_lookups_total (the Bazel
// HTTP cache counts as "bazel").
const protocolREAPI = "reapi"

// read counts one artifact read; bytes are what was served. An empty result (the client
// gave up) is not counted: the request metrics already show cancellations.
func (m *metrics) read(namespace string, kind storage.Kind, result string, bytes int64) {
	if result == "" {
		return
	}
	class := artifactClass(kind)
	m.reads.WithLabelValues(string(kind), clientBazel, class, result).Inc()
	m.lookups.Observe(protocolREAPI, m.tenant, namespace, result)
	if bytes > 0 {
		m.readBytes.WithLabelValues(string(kind), clientBazel, class).Add(float64(bytes))
	}
}

// write counts one artifact write; bytes are what was stored. An empty result (the client
// gave up) is not counted.
func (m *metrics) write(kind storage.Kind, result string, bytes int64) {
	if result == "" {
		return
	}
	class := artifactClass(kind)
	m.writes.WithLabelValues(string(kind), clientBazel, class, result).Inc()
	if bytes > 0 {
		m.writeBytes.WithLabelValues(string(kind), clientBazel, class).Add(float64(bytes))
	}
}

// readResult and writeResult name the outcome of a failed or successful operation; "" when
// the client cancelled or ran out of time, which says nothing about the artifact or the store.
func readResult(err error) string {
	switch codeOf(err) {
	case codes.OK:
		return resultHit
	case codes.NotFound:
		return resultMiss
	case codes.Canceled, codes.DeadlineExceeded:
		return ""
	}
	return resultError
}

func writeResult(err error, created bool) string {
	switch codeOf(err) {
	case codes.OK:
		if created {
			return resultStored
		}
		return resultExists
	case codes.InvalidArgument:
		return resultRejected
	case codes.Canceled, codes.DeadlineExceeded:
		return ""
	}
	return resultError
}
