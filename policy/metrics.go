package policy

import (
	"fmt"
	"time"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// Results of one hook call (the "result" label).
const (
	resultOK      = "ok"
	resultError   = "error"   // the script raised an error
	resultInvalid = "invalid" // the script returned something that is not a valid result
	resultBusy    = "busy"    // no interpreter became free before the deadline
	resultCrashed = "crashed" // go-lua panicked
	// and abortTimeout, abortMemory, abortCanceled
)

type metrics struct {
	// Resolved once: the cached path touches them on every request.
	cacheHit, cacheMiss, cacheCoalesced prometheus.Counter
	decisionCounters                    map[string][2]prometheus.Counter // operation → allow, deny

	hookCalls         *prometheus.CounterVec
	hookDuration      *prometheus.HistogramVec
	hookTimeouts      *prometheus.CounterVec
	cacheLookups      *prometheus.CounterVec
	cacheEvictions    prometheus.Counter
	decisions         *prometheus.CounterVec
	interpCreated     prometheus.Counter
	interpDiscarded   *prometheus.CounterVec
	httpClient        *prometheus.HistogramVec
	jwksRefreshErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, cacheEntries, interpsBusy, interpsIdle func() float64) (*metrics, error) {
	m := &metrics{
		hookCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_extension_hook_calls_total",
			Help: "Policy hook calls, by hook and result (ok, error, invalid, timeout, memory, canceled, busy, crashed).",
		}, []string{"hook", "result"}),
		hookDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kura_extension_hook_duration_seconds",
			Help:    "Time of one policy hook call, including waiting for an interpreter.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"hook"}),
		hookTimeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_extension_hook_timeouts_total",
			Help: "Policy hook calls aborted at KURA_EXTENSION_HOOK_TIMEOUT_MS.",
		}, []string{"hook"}),
		cacheLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_extension_cache_lookups_total",
			Help: "Decision cache lookups: hit, miss (the hooks ran), coalesced (waited for a concurrent identical miss).",
		}, []string{"result"}),
		cacheEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_extension_cache_evictions_total",
			Help: "Decisions pushed out of the cache to make room (KURA_EXTENSION_CACHE_MAX_ENTRIES).",
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_extension_decisions_total",
			Help: "Policy decisions, cached or not, by operation and outcome (allow, deny).",
		}, []string{"operation", "outcome"}),
		interpCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_extension_interpreters_created_total",
			Help: "Lua interpreters created (the script's top level ran once each).",
		}),
		interpDiscarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_extension_interpreters_discarded_total",
			Help: "Lua interpreters thrown away, by reason (aborted, crashed, recycled).",
		}, []string{"reason"}),
		httpClient: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kura_extension_http_client_request_duration_seconds",
			Help:    "kura.http_json requests, by client id and outcome (2xx, 4xx, 5xx, error).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"client", "outcome"}),
		jwksRefreshErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_extension_jwks_refresh_errors_total",
			Help: "Failed background refreshes of a JWT verifier's JWKS keys.",
		}, []string{"verifier"}),
	}
	m.cacheHit = m.cacheLookups.WithLabelValues("hit")
	m.cacheMiss = m.cacheLookups.WithLabelValues("miss")
	m.cacheCoalesced = m.cacheLookups.WithLabelValues("coalesced")
	m.decisionCounters = map[string][2]prometheus.Counter{}
	for _, op := range []string{OpRead, OpWrite, OpInspect, OpNamespaceDelete, OpRequest} {
		m.decisionCounters[op] = [2]prometheus.Counter{m.decisions.WithLabelValues(op, "allow"), m.decisions.WithLabelValues(op, "deny")}
	}
	collectors := []prometheus.Collector{
		m.hookCalls, m.hookDuration, m.hookTimeouts, m.cacheLookups, m.cacheEvictions, m.decisions,
		m.interpCreated, m.interpDiscarded, m.httpClient, m.jwksRefreshErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_extension_cache_entries",
			Help: "Decisions held in the cache (live or expired, not yet overwritten).",
		}, cacheEntries),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_extension_interpreters_busy",
			Help: "Lua interpreters running a hook now.",
		}, interpsBusy),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_extension_interpreters_idle",
			Help: "Lua interpreters loaded and waiting for a hook call.",
		}, interpsIdle),
	}
	if err := telemetry.RegisterAll(reg, collectors...); err != nil {
		return nil, fmt.Errorf("register policy metrics: %w", err)
	}
	return m, nil
}

func (m *metrics) decision(operation string, allowed bool) {
	i := 1
	if allowed {
		i = 0
	}
	if c, ok := m.decisionCounters[operation]; ok {
		c[i].Inc()
		return
	}
	m.decisions.WithLabelValues(operation, [2]string{"allow", "deny"}[i]).Inc()
}

func (m *metrics) observeHook(hook, result string, d time.Duration) {
	m.hookCalls.WithLabelValues(hook, result).Inc()
	m.hookDuration.WithLabelValues(hook).Observe(d.Seconds())
	if result == abortTimeout {
		m.hookTimeouts.WithLabelValues(hook).Inc()
	}
}

func (m *metrics) observeHTTPClient(id, outcome string, d time.Duration) {
	m.httpClient.WithLabelValues(id, outcome).Observe(d.Seconds())
}
