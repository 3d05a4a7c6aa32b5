package antientropy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/internal/telemetry"
)

// metrics are the sweeper's Prometheus series, registered on the injected Registerer.
type metrics struct {
	runs             *prometheus.CounterVec
	bucketsCompared  prometheus.Counter
	bucketsDiffering prometheus.Counter
	pulled           prometheus.Counter
	stubs            prometheus.Counter
	tombstones       prometheus.Counter
	conflicts        prometheus.Counter
	duration         prometheus.Histogram
	repairs          *prometheus.CounterVec
	paused           prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, s *Sweeper) (*metrics, error) {
	repaired := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_antientropy_objects_repaired_total",
		Help: "Objects restored by anti-entropy, by how: pulled (fetched and stored) or stub (a peer's eviction recorded).",
	}, []string{"how"})
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_antientropy_runs_total",
			Help: "Anti-entropy sweeps by result: ok, partial (some peers failed), failed, aborted (shutdown).",
		}, []string{"result"}),
		bucketsCompared: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_antientropy_buckets_compared_total",
			Help: "Digest buckets (key ranges) compared with peers.",
		}),
		bucketsDiffering: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_antientropy_buckets_differing_total",
			Help: "Digest buckets whose digest differed from the peer's and were listed.",
		}),
		pulled: repaired.WithLabelValues("pulled"),
		stubs:  repaired.WithLabelValues("stub"),
		tombstones: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_antientropy_tombstones_applied_total",
			Help: "Namespace tombstones learnt from peers by anti-entropy.",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_antientropy_conflicts_total",
			Help: "Immutable objects whose body here differed from a peer's copy that was the cluster's first writer (lower version, or equal version and lower SHA-256), so this node pulled the peer's to replace its own.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kura_antientropy_sweep_duration_seconds",
			Help:    "Duration of one anti-entropy sweep over every live peer.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 10), // 5 ms .. about 22 min
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_corrupt_repairs_total",
			Help: "Corrupt local records re-fetched from peers, by result: repaired, not_found, stale, failed, dropped (queue full).",
		}, []string{"result"}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kura_antientropy_paused",
			Help: "1 while anti-entropy and repairs are paused by the hard memory watermark.",
		}),
	}
	collectors := []prometheus.Collector{
		m.runs, m.bucketsCompared, m.bucketsDiffering, repaired, m.tombstones, m.conflicts,
		m.duration, m.repairs, m.paused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_corrupt_repairs_pending",
			Help: "Corrupt-record repairs queued or in progress.",
		}, func() float64 {
			s.pendingMu.Lock()
			defer s.pendingMu.Unlock()
			return float64(len(s.pending))
		}),
	}
	if err := telemetry.RegisterAll(reg, collectors...); err != nil {
		return nil, err
	}
	// Pre-create the label values so dashboards show zeros rather than gaps.
	for _, r := range []string{"ok", "partial", "failed", "aborted"} {
		m.runs.WithLabelValues(r)
	}
	for _, r := range []string{"repaired", "not_found", "stale", "failed", "dropped"} {
		m.repairs.WithLabelValues(r)
	}
	return m, nil
}

// readThroughCounter is kura_read_through_total; several decorators (one per store) may
// share a registry, so an existing registration is reused. A different metric registered
// under the name is an error, not a panic: the caller is building a node and can say so.
func readThroughCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_read_through_total",
		Help: "Local misses asked of peers, by result: hit (served from a peer and stored), miss (no peer had it), error (peers or the local store failed).",
	}, []string{"result"})
	c, err := telemetry.RegisterOrReuse(reg, c)
	if err != nil {
		return nil, fmt.Errorf("read-through metrics: %w", err)
	}
	for _, r := range []string{"hit", "miss", "error"} {
		c.WithLabelValues(r)
	}
	return c, nil
}

// peerFindCounter is kura_read_through_find_total, shared like readThroughCounter.
func peerFindCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_read_through_find_total",
		Help: "Existence questions (FindMissingBlobs, completeness checks) asked of peers for keys missing locally, by result: present (a peer holds the key; it is pulled in the background), missing (no peer answered that it holds it), peer_failed (one peer's batched answer failed or came too late), pull_dropped (a present key not queued for a background pull because the queue was full).",
	}, []string{"result"})
	c, err := telemetry.RegisterOrReuse(reg, c)
	if err != nil {
		return nil, fmt.Errorf("read-through metrics: %w", err)
	}
	for _, r := range []string{"present", "missing", "peer_failed", "pull_dropped"} {
		c.WithLabelValues(r)
	}
	return c, nil
}
