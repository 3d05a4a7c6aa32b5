package local

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kuracache/kura/storage"
)

// gauges gathers reg and returns every gauge sample without labels by name.
func gauges(t *testing.T, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetType() != dto.MetricType_GAUGE {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 0 {
				out[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

const (
	gaugeCacheUsage    = "kura_metadata_store_block_cache_usage_bytes"
	gaugeCachePinned   = "kura_metadata_store_block_cache_pinned_usage_bytes"
	gaugeCacheCapacity = "kura_metadata_store_block_cache_capacity_bytes"
	gaugeWBUsage       = "kura_metadata_store_write_buffer_usage_bytes"
	gaugeWBCapacity    = "kura_metadata_store_write_buffer_capacity_bytes"
)

// TestMetadataStoreGauges: the docs/contract.md §7 metadata-store gauges are registered on the injected
// Registerer, follow the configured budgets, and move with real Pebble activity.
func TestMetadataStoreGauges(t *testing.T) {
	const (
		cacheBytes    = 5 << 20
		memtableBytes = 2 << 20
		maxMemtables  = 3
	)
	opts := testOpts(t)
	opts.Metadata.BlockCacheBytes = cacheBytes
	opts.Metadata.MemTableBytes = memtableBytes
	opts.Metadata.MemTableStopWritesThreshold = maxMemtables
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	s := openStore(t, opts)

	keys := make([]storage.Key, 50)
	for i := range keys {
		keys[i] = cas(fmt.Sprintf("gauge-%02d", i))
		put(t, s, keys[i], []byte(fmt.Sprintf("body %d", i)))
	}
	g := gauges(t, reg)
	t.Logf("after %d writes: %v", len(keys), g)
	for _, name := range []string{gaugeCacheUsage, gaugeCacheCapacity, gaugeWBUsage, gaugeWBCapacity} {
		if _, ok := g[name]; !ok {
			t.Fatalf("gauge %s is not registered (have %v)", name, g)
		}
	}
	if g[gaugeCacheCapacity] != cacheBytes {
		t.Errorf("%s = %v, want the configured %d", gaugeCacheCapacity, g[gaugeCacheCapacity], cacheBytes)
	}
	if g[gaugeWBCapacity] != memtableBytes*maxMemtables {
		t.Errorf("%s = %v, want %d (write buffer size × max write buffers)", gaugeWBCapacity, g[gaugeWBCapacity], memtableBytes*maxMemtables)
	}
	// The writes went to the memtable, which Pebble allocates as it fills.
	if u := g[gaugeWBUsage]; u <= 0 || u > memtableBytes*maxMemtables {
		t.Errorf("%s = %v after writes, want in (0, %d]", gaugeWBUsage, u, memtableBytes*maxMemtables)
	}
	if u := g[gaugeCacheUsage]; u < 0 || u > cacheBytes {
		t.Errorf("%s = %v, want in [0, %d]", gaugeCacheUsage, u, cacheBytes)
	}
	if _, ok := g[gaugeCachePinned]; ok {
		t.Errorf("%s is exported; Pebble has no pinned figure, so it would be a constant", gaugeCachePinned)
	}

	// After a restart Pebble has flushed the recovered log to sstables, so reading the
	// manifests back goes through the block cache.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if g := gauges(t, reg); len(g) != 0 {
		t.Fatalf("gauges still registered after Close: %v", g)
	}
	s = openStore(t, opts)
	for i, k := range keys {
		if got, err := read(t, s, k); err != nil || string(got) != fmt.Sprintf("body %d", i) {
			t.Fatalf("read %s after reopen: %q, %v", k, got, err)
		}
	}
	g = gauges(t, reg)
	t.Logf("after a restart and %d reads: %v", len(keys), g)
	if u := g[gaugeCacheUsage]; u <= 0 || u > cacheBytes {
		t.Errorf("%s = %v after reading from sstables, want in (0, %d]", gaugeCacheUsage, u, cacheBytes)
	}
	if g[gaugeCacheCapacity] != cacheBytes || g[gaugeWBCapacity] != memtableBytes*maxMemtables {
		t.Errorf("capacities changed across a restart: %v", g)
	}
	if mm := s.MetadataMetrics(); float64(mm.BlockCacheCapacityBytes) != g[gaugeCacheCapacity] {
		t.Errorf("gauge and MetadataMetrics disagree: %+v vs %v", mm, g)
	}
}

// TestMetadataGaugesAfterClose: a scrape racing Close reads zeros instead of a closed Pebble.
func TestMetadataGaugesAfterClose(t *testing.T) {
	s := openStore(t, testOpts(t))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.metadataSample(); ok {
		t.Fatal("metadataSample succeeded on a closed store")
	}
	for _, c := range metadataGauges(s) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(c)
		for name, v := range gauges(t, reg) {
			if v != 0 {
				t.Errorf("%s = %v on a closed store, want 0", name, v)
			}
		}
	}
}
