package local

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
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

	retentionExpired *prometheus.CounterVec
	retentionSweeps  prometheus.Counter

	digestBuilds prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Store) (*metrics, error) {
	evictions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kura_storage_eviction_records_total",
		Help: "Records handled by eviction of retired segments, by action (moved forward because recently read, or dropped: body removed, metadata kept as an evicted stub).",
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
		retentionExpired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_storage_retention_expired_total",
			Help: "Objects removed by retention by age (not used here for longer than their namespace's maximum age), by kind; each leaves an expired stub replication does not fill.",
		}, []string{"kind"}),
		retentionSweeps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_storage_retention_sweeps_total",
			Help: "Completed retention sweeps (walks of every manifest that persist last uses and expire old objects).",
		}),
		digestBuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_storage_digest_builds_total",
			Help: "Full builds of the anti-entropy bucket digests: one at startup, then only after a damaged manifest was removed.",
		}),
	}
	for _, k := range storage.Kinds {
		m.retentionExpired.WithLabelValues(string(k)) // every kind's series exists from the start
	}
	m.collectors = []prometheus.Collector{
		evictions, m.retired, m.corrupt, m.expired, m.digestBuilds, m.retentionExpired, m.retentionSweeps,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_retention_pending_uses",
			Help: "Object uses (reads, refreshes, writes) held in memory until the next retention sweep persists them; 0 with retention off.",
		}, func() float64 {
			if s.uses == nil {
				return 0
			}
			return float64(s.uses.pending())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_index_objects",
			Help: "Objects in the anti-entropy digests: stored objects plus evicted stubs.",
		}, func() float64 { return float64(s.digests.objects()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_existence_index_objects",
			Help: "Objects in the in-memory existence index that answers FindMissing (stored objects; stubs are absent). 0 until it is built after startup.",
		}, func() float64 { n, _ := s.exists.stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_existence_index_ready",
			Help: "1 once the existence index is built; 0 while FindMissing reads the metadata store instead (after startup, or after a failed namespace deletion).",
		}, func() float64 {
			if _, ready := s.exists.stats(); ready {
				return 1
			}
			return 0
		}),
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
	m.collectors = append(m.collectors, metadataGauges(s)...)
	m.collectors = append(m.collectors, s.pool.Collectors()...)
	m.collectors = append(m.collectors, cacheCollectors(s)...)
	if err := telemetry.RegisterAll(reg, m.collectors...); err != nil {
		return nil, err
	}
	return m, nil
}

// unregister removes the series so a store reopened on the same registry can register again.
func (m *metrics) unregister() {
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}

// metadataGauges are the metadata store's memory gauges (docs/contract.md §7), named after the original's
// RocksDB gauges so its dashboards keep working. Each scrape samples Pebble afresh: a sample
// costs microseconds and scrapes come seconds apart.
//
// The original's fourth gauge, block_cache_pinned_usage_bytes, is not exported: RocksDB's
// pinned usage is the part of the block cache held by readers, which eviction cannot reclaim,
// and Pebble has no such figure. Its cache never holds anything back (a block an iterator is
// using is evicted like any other, its reference-counted memory freed when the reader releases
// it), so the gauge could only ever say 0, and a constant is not a measurement.
func metadataGauges(s *Store) []prometheus.Collector {
	gauge := func(name, help string, value func(meta.Metrics) int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			mm, ok := s.metadataSample()
			if !ok {
				return 0
			}
			return float64(value(mm))
		})
	}
	return []prometheus.Collector{
		gauge("kura_metadata_store_block_cache_usage_bytes",
			"Bytes held in the metadata store's (Pebble's) block cache.",
			func(mm meta.Metrics) int64 { return mm.BlockCacheUsageBytes }),
		gauge("kura_metadata_store_block_cache_capacity_bytes",
			"Configured size of the metadata store's block cache (KURA_METADATA_STORE_READ_CACHE_BYTES).",
			func(mm meta.Metrics) int64 { return mm.BlockCacheCapacityBytes }),
		gauge("kura_metadata_store_write_buffer_usage_bytes",
			"Bytes allocated by the metadata store's write buffers (Pebble memtables, including ones queued for flush).",
			func(mm meta.Metrics) int64 { return mm.MemTableUsageBytes }),
		gauge("kura_metadata_store_write_buffer_capacity_bytes",
			"Most bytes the metadata store's write buffers may hold before writes stall (write buffer size times the maximum number of write buffers).",
			func(mm meta.Metrics) int64 { return mm.MemTableCapacityBytes }),
	}
}

// cacheCollectors are the series of the segment read-handle cache and the manifest cache
// (docs/contract.md §7: FD-pool pressure, manifest-cache occupancy, hits and admissions), plus the free
// space the full-disk guard watches.
func cacheCollectors(s *Store) []prometheus.Collector {
	handles := func(name, help string, counter bool, value func(segment.HandleStats) float64) prometheus.Collector {
		f := func() float64 { return value(s.segs.HandleStats()) }
		if counter {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
		}
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	mc := s.mcache
	return []prometheus.Collector{
		handles("kura_segment_handle_cache_hits_total",
			"Segment record reads served through an already open, cached segment read handle.", true,
			func(h segment.HandleStats) float64 { return float64(h.Hits) }),
		handles("kura_segment_handle_cache_misses_total",
			"Segment record reads that had to open the segment file (checking a descriptor out of the pool).", true,
			func(h segment.HandleStats) float64 { return float64(h.Misses) }),
		handles("kura_segment_handle_cache_evictions_total",
			"Segment read handles dropped from the cache: over capacity, closed for a request waiting on the FD pool, trimmed, or their segment removed. A handle still in use closes when its last reader finishes.", true,
			func(h segment.HandleStats) float64 { return float64(h.Evictions) }),
		handles("kura_segment_handle_cache_open",
			"Open segment read handles: cached ones plus evicted ones still used by a reader.", false,
			func(h segment.HandleStats) float64 { return float64(h.Open) }),
		handles("kura_segment_reads_trusted_total",
			"Streamed segment record reads served without checking each block's CRC again: every block of the record was checked by this process within the last 5 minutes and the segment file is unchanged since (docs/segments.md).", true,
			func(h segment.HandleStats) float64 { return float64(h.TrustedReads) }),
		handles("kura_segment_reads_sendfile_total",
			"Trusted segment record reads sent to the client's socket with sendfile (no copy through user space).", true,
			func(h segment.HandleStats) float64 { return float64(h.Sendfiles) }),
		handles("kura_segment_handle_cache_capacity",
			"Segment read handles the cache keeps open at most (KURA_SEGMENT_HANDLE_CACHE_SIZE).", false,
			func(h segment.HandleStats) float64 { return float64(h.Capacity) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_manifest_cache_bytes",
			Help: "Bytes held by the manifest cache (keys, manifests and per-entry overhead).",
		}, func() float64 { b, _ := mc.stats(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_manifest_cache_entries",
			Help: "Manifests held by the manifest cache.",
		}, func() float64 { _, n := mc.stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_manifest_cache_capacity_bytes",
			Help: "Bound of the manifest cache (KURA_MANIFEST_CACHE_MAX_BYTES; 0: disabled).",
		}, func() float64 { return float64(mc.max) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_manifest_cache_admission_enabled",
			Help: "1 while reads admit manifests into the cache, 0 while admission is off (above the soft memory watermark).",
		}, func() float64 {
			if mc.admission.Load() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kura_manifest_cache_hits_total",
			Help: "Manifest lookups (Stat, Open, FindMissing, first-writer-wins checks) answered by the manifest cache.",
		}, func() float64 { return float64(mc.hits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kura_manifest_cache_misses_total",
			Help: "Manifest lookups that went to the metadata store.",
		}, func() float64 { return float64(mc.misses.Load()) }),
		mc.admissions,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_filesystem_free_bytes",
			Help: "Free bytes on the data filesystem (the smallest of the data and tmp filesystems); writes stop at kura_storage_reserved_disk_bytes.",
		}, func() float64 {
			free, err := s.segs.FreeBytes()
			if err != nil {
				return 0
			}
			return float64(free)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_storage_reserved_disk_bytes",
			Help: "Free space writes leave on the data filesystem for the metadata store; below it writes fail with 507 / RESOURCE_EXHAUSTED.",
		}, func() float64 { return float64(s.segs.ReserveBytes()) }),
	}
}

// counterTotal is c's current value. It writes the counter out like a scrape does, so it is
// meant for cold paths such as the status page.
func counterTotal(c prometheus.Counter) uint64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}
