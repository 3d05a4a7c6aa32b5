package local

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus series, registered on the injected Registerer.
type metrics struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector

	moved   prometheus.Counter
	dropped prometheus.Counter
	retired prometheus.Counter
	corrupt prometheus.Counter
	expired prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Store) (*metrics, error) {
	evictions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_storage_eviction_records_total",
		Help: "Records handled by eviction of retired segments, by action (moved forward because recently read, or dropped).",
	}, []string{"action"})
	m := &metrics{
		reg:     reg,
		moved:   evictions.WithLabelValues("moved"),
		dropped: evictions.WithLabelValues("dropped"),
		retired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_storage_eviction_segments_retired_total",
			Help: "Segment files retired (records moved or dropped, then the file removed) to stay within the disk budget.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_storage_corrupt_records_total",
			Help: "Stored records (or their metadata) that failed verification and were dropped instead of served.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_storage_multipart_uploads_expired_total",
			Help: "Multipart uploads removed by the janitor after storage.UploadExpiry without completion.",
		}),
	}
	m.collectors = []prometheus.Collector{
		evictions, m.retired, m.corrupt, m.expired,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_segment_bytes",
			Help: "Bytes held in segment files (what the disk budget counts).",
		}, func() float64 { return float64(s.segs.TotalBytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_segments",
			Help: "Number of segment files.",
		}, func() float64 { return float64(len(s.segs.Segments())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_disk_budget_bytes",
			Help: "Configured disk budget for segment bytes (0: unlimited).",
		}, func() float64 { return float64(s.opts.DiskBudgetBytes) }),
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}

// unregister removes the series so a store reopened on the same registry can register again.
func (m *metrics) unregister() {
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
