package outbox

import (
	"fmt"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// Push results (the result label of kura_replication_pushes_total).
const (
	// resultApplied: the peer stored what was pushed.
	resultApplied = "applied"
	// resultSkipped: the peer already had it or holds something newer (applied=false, stale).
	resultSkipped = "skipped"
	// resultDropped: the entry was discarded without a push reaching the peer's store: the
	// local object is gone or superseded, the local record is corrupt, the peer refused the
	// entry permanently, or the entry itself was damaged.
	resultDropped = "dropped"
	// resultError: a transient failure; the entry is retried after a backoff.
	resultError = "error"
)

type metrics struct {
	pushes     *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	lag        *prometheus.HistogramVec
	batchItems *prometheus.HistogramVec
	// batchUnsupported counts the times a peer answered UNIMPLEMENTED to PushBatch.
	batchUnsupported *prometheus.CounterVec
	paused           prometheus.Gauge
	peersDropped     prometheus.Counter
	queues           *queueCollector
}

func newMetrics(reg prometheus.Registerer, o *Outbox) (*metrics, error) {
	m := &metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_replication_pushes_total",
			Help: "Outbox deliveries by peer, op (object, tombstone, unknown) and result (applied, skipped, dropped, error).",
		}, []string{"peer", "op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kura_replication_push_duration_seconds",
			Help: "Time of one push to a peer over the internal plane, body included.",
			// From a tombstone on a LAN (sub-millisecond) to a large artifact across regions.
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"peer"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kura_replication_lag_seconds",
			Help: "Time from a write's commit on this node to a peer having it (pushed and applied, or found already there).",
			// From a LAN push right after the write to a backlog drained after a peer's outage.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
		}, []string{"peer"}),
		batchItems: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kura_replication_batch_items",
			Help: "Objects per PushBatch call that the peer answered (each also counts in kura_replication_pushes_total).",
			// From a trickle of writes (one per batch) to a backlog's full batches (512).
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}, []string{"peer"}),
		batchUnsupported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_replication_batch_fallbacks_total",
			Help: "Times a peer answered UNIMPLEMENTED to PushBatch (an older version) and got per-object pushes for a while.",
		}, []string{"peer"}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kura_outbox_dispatch_paused",
			Help: "1 while dispatch is paused by the hard memory watermark (entries keep queueing).",
		}),
		peersDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_outbox_peers_dropped_total",
			Help: "Peers whose queue was deleted after they stayed absent longer than the drop delay.",
		}),
		queues: &queueCollector{o: o},
	}
	if err := telemetry.RegisterAll(reg, m.pushes, m.duration, m.lag, m.batchItems, m.batchUnsupported, m.paused, m.peersDropped, m.queues); err != nil {
		return nil, fmt.Errorf("register outbox metrics: %w", err)
	}
	return m, nil
}

var (
	depthDesc = prometheus.NewDesc("kura_outbox_depth",
		"Entries queued for a peer and not yet delivered.", []string{"peer"}, nil)
	oldestDesc = prometheus.NewDesc("kura_outbox_oldest_entry_age_seconds",
		"Age of the oldest undelivered entry of a peer (0 when its queue is empty).", []string{"peer"}, nil)
)

// queueCollector reports the per-peer gauges from the in-memory counters at scrape time, so a
// dropped peer's series disappear with it instead of lingering at their last value.
type queueCollector struct{ o *Outbox }

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- depthDesc
	ch <- oldestDesc
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.o.now()
	for _, q := range c.o.snapshot() {
		ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(q.depth), q.name)
		age := 0.0
		if q.depth > 0 && !q.oldest.IsZero() {
			age = max(now.Sub(q.oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age, q.name)
	}
}
