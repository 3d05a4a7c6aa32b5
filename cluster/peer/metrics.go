package peer

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/kuracache/kura/internal/telemetry"
)

// Sides of the kura_peer_* metrics: the same families count both ends of a call.
const (
	sideServer = "server"
	sideClient = "client"
)

// metrics are the internal plane's collectors. Server and client register the same families
// (distinguished by side); whichever registers first owns them, the other reuses them.
type metrics struct {
	side     string
	requests *prometheus.CounterVec   // side, method, code
	duration *prometheus.HistogramVec // side, method
}

// latencyBuckets span a digest exchange on a LAN (~100 µs) to a multi-GiB push across regions.
var latencyBuckets = []float64{
	.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300,
}

func newMetrics(reg prometheus.Registerer, side string) (*metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_peer_requests_total",
		Help: "Internal-plane calls, by side (server, client), method and gRPC status code.",
	}, []string{"side", "method", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kura_peer_request_duration_seconds",
		Help:    "Duration of internal-plane calls (streams: until the last message), by side and method.",
		Buckets: latencyBuckets,
	}, []string{"side", "method"})
	var err error
	m := &metrics{side: side}
	if m.requests, err = telemetry.RegisterOrReuse(reg, requests); err != nil {
		return nil, fmt.Errorf("internal plane: %w", err)
	}
	if m.duration, err = telemetry.RegisterOrReuse(reg, duration); err != nil {
		return nil, fmt.Errorf("internal plane: %w", err)
	}
	return m, nil
}

func (m *metrics) observe(method string, code codes.Code, elapsed time.Duration) {
	m.requests.WithLabelValues(m.side, method, code.String()).Inc()
	m.duration.WithLabelValues(m.side, method).Observe(elapsed.Seconds())
}
