package analytics

import (
	"fmt"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons (the reason label of kura_analytics_events_dropped_total).
const (
	reasonQueueFull   = "queue_full"   // Record found the pipeline's queue full
	reasonBreakerOpen = "breaker_open" // the batch was formed while the breaker was open
	reasonSendFailed  = "send_failed"  // the batch's request failed or timed out; never retried
)

// Batch outcomes (the outcome label of kura_analytics_batches_total).
const (
	outcomeOK      = "ok"
	outcomeError   = "error"
	outcomeSkipped = "skipped" // not sent: the breaker was open
)

type metrics struct {
	enqueued    *prometheus.CounterVec
	dropped     *prometheus.CounterVec
	batchSize   *prometheus.HistogramVec
	batches     *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	transitions *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_analytics_events_enqueued_total",
			Help: "Analytics events accepted into a pipeline's queue.",
		}, []string{"pipeline"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_analytics_events_dropped_total",
			Help: "Analytics events never delivered, by pipeline and reason (queue_full, breaker_open, send_failed).",
		}, []string{"pipeline", "reason"}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kura_analytics_batch_size",
			Help: "Events per analytics batch, whatever its outcome.",
			// One event on a quiet node up to a thousand (the default queue, flushed at once).
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}, []string{"pipeline"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_analytics_batches_total",
			Help: "Analytics batches by pipeline and outcome (ok, error, skipped while the breaker is open).",
		}, []string{"pipeline", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kura_analytics_request_duration_seconds",
			Help: "Time of one analytics webhook request, failed ones included.",
			// A local receiver (a millisecond) up to the default request timeout (5 s).
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 11),
		}, []string{"pipeline"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_analytics_breaker_transitions_total",
			Help: "Circuit breaker state changes by pipeline and new state (closed, open, half_open).",
		}, []string{"pipeline", "to"}),
	}
	if err := telemetry.RegisterAll(reg, m.enqueued, m.dropped, m.batchSize, m.batches, m.duration, m.transitions); err != nil {
		return nil, fmt.Errorf("register analytics metrics: %w", err)
	}
	return m, nil
}

// forPipeline resolves (and so creates at zero) every series of one pipeline.
func (m *metrics) forPipeline(name string) pipelineMetrics {
	pm := pipelineMetrics{
		enqueued:       m.enqueued.WithLabelValues(name),
		droppedFull:    m.dropped.WithLabelValues(name, reasonQueueFull),
		droppedBreaker: m.dropped.WithLabelValues(name, reasonBreakerOpen),
		droppedFailed:  m.dropped.WithLabelValues(name, reasonSendFailed),
		batchOK:        m.batches.WithLabelValues(name, outcomeOK),
		batchError:     m.batches.WithLabelValues(name, outcomeError),
		batchSkipped:   m.batches.WithLabelValues(name, outcomeSkipped),
		batchSize:      m.batchSize.WithLabelValues(name),
		duration:       m.duration.WithLabelValues(name),
	}
	for _, s := range []state{closed, open, halfOpen} {
		pm.transitions[s] = m.transitions.WithLabelValues(name, s.String())
	}
	return pm
}

// registerGauges registers the two gauges read at scrape time from the pipelines' own state,
// so they can never disagree with it.
func (m *metrics) registerGauges(reg prometheus.Registerer, pipes ...*pipeline) error {
	for _, p := range pipes {
		labels := prometheus.Labels{"pipeline": string(p.name)}
		depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kura_analytics_queue_depth",
			Help:        "Analytics events accepted and not yet delivered or dropped (queued or in the batch being sent).",
			ConstLabels: labels,
		}, func() float64 { return float64(p.depth.Load()) })
		breakerState := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kura_analytics_breaker_state",
			Help:        "Circuit breaker state of a pipeline: 0 closed, 1 open, 2 half-open.",
			ConstLabels: labels,
		}, func() float64 { return float64(p.state.Load()) })
		if err := telemetry.RegisterAll(reg, depth, breakerState); err != nil {
			return fmt.Errorf("register analytics gauges: %w", err)
		}
		p.m.depth, p.m.breakerState = depth, breakerState
	}
	return nil
}
