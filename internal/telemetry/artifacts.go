package telemetry

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ArtifactMetrics are the artifact read and write families every front end (HTTP surfaces,
// REAPI) records into, so one dashboard query covers every protocol.
type ArtifactMetrics struct {
	Reads      *prometheus.CounterVec // kind, client, artifact_class, result
	Writes     *prometheus.CounterVec // kind, client, artifact_class, result
	ReadBytes  *prometheus.CounterVec // kind, client, artifact_class
	WriteBytes *prometheus.CounterVec // kind, client, artifact_class
	Lookups    *NamespaceLookups      // protocol, tenant, namespace, result
}

// NewArtifactMetrics registers the artifact families on reg, or returns the ones already
// registered there by another front end: the HTTP API and the REAPI share one registry.
func NewArtifactMetrics(reg prometheus.Registerer) (*ArtifactMetrics, error) {
	labels := []string{"kind", "client", "artifact_class", "result"}
	byteLabels := []string{"kind", "client", "artifact_class"}
	m := &ArtifactMetrics{
		Reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_reads_total",
			Help: "Artifact reads by kind, client, artifact class and result (hit, miss, error, rejected).",
		}, labels),
		Writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_writes_total",
			Help: "Artifact writes by kind, client, artifact class and result (stored, exists, rejected, error).",
		}, labels),
		ReadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_read_bytes_total",
			Help: "Artifact body bytes served to clients.",
		}, byteLabels),
		WriteBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_write_bytes_total",
			Help: "Artifact body bytes stored from clients.",
		}, byteLabels),
	}
	var err error
	for _, vec := range []**prometheus.CounterVec{&m.Reads, &m.Writes, &m.ReadBytes, &m.WriteBytes} {
		if *vec, err = RegisterOrReuse(reg, *vec); err != nil {
			return nil, err
		}
	}
	if m.Lookups, err = RegisterOrReuse(reg, NewNamespaceLookups()); err != nil {
		return nil, err
	}
	return m, nil
}

// RegisterOrReuse registers c on reg, or returns the identical collector registered there
// before (for families that several components share).
func RegisterOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register metrics: %w", err)
}

// maxNamespaceSeries bounds the namespaces NamespaceLookups keeps apart. Namespaces are
// chosen by clients; past this many, lookups of new ones are counted under namespace
// "_other" so a client inventing namespaces cannot grow the scrape without bound.
const maxNamespaceSeries = 1000

// otherNamespace is the namespace label of lookups past maxNamespaceSeries.
const otherNamespace = "_other"

// NamespaceLookups is kura_cache_lookups_total{protocol,tenant,namespace,result}: hits and
// misses per protocol and namespace, the hit ratio build engineers ask for first. It is one
// collector shared by every front end (register it with RegisterOrReuse), so the namespace
// bound holds for the node.
type NamespaceLookups struct {
	vec *prometheus.CounterVec
	now func() time.Time

	mu     sync.Mutex
	seen   map[[2]string]struct{}
	recent map[string]*[recentMinutes]minuteCount // protocol → ring of per-minute counts
}

// recentMinutes is how far back Recent can look.
const recentMinutes = 15

// minuteCount is one minute's lookups of a protocol.
type minuteCount struct {
	minute       int64 // Unix minute the counts belong to
	hits, misses uint64
}

// Lookups are hit and miss counts.
type Lookups struct{ Hits, Misses uint64 }

// Ratio is the hit ratio (0 without lookups).
func (l Lookups) Ratio() float64 {
	if l.Hits+l.Misses == 0 {
		return 0
	}
	return float64(l.Hits) / float64(l.Hits+l.Misses)
}

// Recent sums each protocol's lookups of the last minutes (at most recentMinutes), the
// current minute included.
func (n *NamespaceLookups) Recent(minutes int) map[string]Lookups {
	minutes = max(1, min(minutes, recentMinutes))
	nowMin := n.now().Unix() / 60
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]Lookups, len(n.recent))
	for protocol, ring := range n.recent {
		var l Lookups
		for _, c := range ring {
			if c.minute > nowMin-int64(minutes) && c.minute <= nowMin {
				l.Hits += c.hits
				l.Misses += c.misses
			}
		}
		out[protocol] = l
	}
	return out
}

// NewNamespaceLookups builds the collector (not registered).
func NewNamespaceLookups() *NamespaceLookups {
	return &NamespaceLookups{
		vec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_cache_lookups_total",
			Help: "Cache reads by protocol, tenant, namespace and result (hit, miss); namespaces past the first 1000 count as _other.",
		}, []string{"protocol", "tenant", "namespace", "result"}),
		now:    time.Now,
		seen:   map[[2]string]struct{}{},
		recent: map[string]*[recentMinutes]minuteCount{},
	}
}

// Describe implements prometheus.Collector.
func (n *NamespaceLookups) Describe(ch chan<- *prometheus.Desc) { n.vec.Describe(ch) }

// Collect implements prometheus.Collector.
func (n *NamespaceLookups) Collect(ch chan<- prometheus.Metric) { n.vec.Collect(ch) }

// Observe counts one read; results other than hit and miss (errors, refusals) are not
// lookups and are ignored.
func (n *NamespaceLookups) Observe(protocol, tenant, namespace, result string) {
	if result != "hit" && result != "miss" {
		return
	}
	k := [2]string{tenant, namespace}
	minute := n.now().Unix() / 60
	n.mu.Lock()
	ring, ok := n.recent[protocol]
	if !ok {
		ring = new([recentMinutes]minuteCount)
		n.recent[protocol] = ring
	}
	c := &ring[minute%recentMinutes]
	if c.minute != minute {
		*c = minuteCount{minute: minute}
	}
	if result == "hit" {
		c.hits++
	} else {
		c.misses++
	}
	if _, ok := n.seen[k]; !ok {
		if len(n.seen) >= maxNamespaceSeries {
			tenant, namespace = otherNamespace, otherNamespace
		} else {
			n.seen[k] = struct{}{}
		}
	}
	n.mu.Unlock()
	n.vec.WithLabelValues(protocol, tenant, namespace, result).Inc()
}
