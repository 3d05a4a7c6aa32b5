package telemetry

import (
	"sync"
	"sync/atomic"
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
//
// Observe runs on every artifact read, so its common case takes no lock: the counters of a
// (protocol, tenant, namespace) already seen come from a sync.Map, and each protocol's running
// totals are atomics. The history behind Recent is a ring of snapshots of those totals, one
// taken by the first Observe of each minute.
type NamespaceLookups struct {
	vec *prometheus.CounterVec
	now func() time.Time

	series    sync.Map // lookupKey → *lookupCounter
	protocols sync.Map // protocol → *protocolTotals

	// lastMinute is the minute of the newest snapshot, read without the lock.
	lastMinute atomic.Int64
	mu         sync.Mutex // guards namespaces and snapshots, and creating series
	namespaces map[[2]string]struct{}
	// snapshots hold each protocol's totals at the start of the last minutes that had
	// lookups, one slot per minute modulo the ring's length.
	snapshots [recentMinutes + 1]lookupSnapshot
}

// recentMinutes is how far back Recent can look.
const recentMinutes = 15

type lookupKey struct{ protocol, tenant, namespace, result string }

// lookupCounter is one series and its protocol's totals, found with one map lookup.
type lookupCounter struct {
	series prometheus.Counter
	totals *protocolTotals
}

type protocolTotals struct{ hits, misses atomic.Uint64 }

func (p *protocolTotals) load() Lookups { return Lookups{p.hits.Load(), p.misses.Load()} }

type lookupSnapshot struct {
	minute int64
	totals map[string]Lookups // nil: the slot was never used
}

// Lookups are hit and miss counts.
type Lookups struct{ Hits, Misses uint64 }

// Total is the number of lookups.
func (l Lookups) Total() uint64 { return l.Hits + l.Misses }

// Ratio is the hit ratio (0 without lookups).
func (l Lookups) Ratio() float64 {
	if l.Total() == 0 {
		return 0
	}
	return float64(l.Hits) / float64(l.Total())
}

// RecentLookups are a protocol's lookups over the last 1, 5 and 15 minutes.
type RecentLookups struct{ Minute, Five, Fifteen Lookups }

// Recent returns each protocol's lookups over the last 1, 5 and 15 minutes, the current
// minute included. A protocol without lookups in the last 15 minutes is left out.
func (n *NamespaceLookups) Recent() map[string]RecentLookups {
	nowMin := n.now().Unix() / 60
	// The totals when a window began are those of the first snapshot at or after its start
	// (a minute without a snapshot had no lookups); with no such snapshot the window is empty.
	base := func(start int64) map[string]Lookups {
		var best *lookupSnapshot
		for i := range n.snapshots {
			s := &n.snapshots[i]
			if s.totals != nil && s.minute >= start && s.minute <= nowMin && (best == nil || s.minute < best.minute) {
				best = s
			}
		}
		if best == nil {
			return nil
		}
		return best.totals
	}
	n.mu.Lock()
	one, five, fifteen := base(nowMin), base(nowMin-4), base(nowMin-recentMinutes+1)
	n.mu.Unlock()
	since := func(now Lookups, b map[string]Lookups, protocol string) Lookups {
		if b == nil {
			return Lookups{}
		}
		was := b[protocol]
		return Lookups{now.Hits - was.Hits, now.Misses - was.Misses}
	}
	out := map[string]RecentLookups{}
	n.protocols.Range(func(k, v any) bool {
		protocol, now := k.(string), v.(*protocolTotals).load()
		r := RecentLookups{since(now, one, protocol), since(now, five, protocol), since(now, fifteen, protocol)}
		if r.Fifteen.Total() > 0 {
			out[protocol] = r
		}
		return true
	})
	return out
}

// NewNamespaceLookups builds the collector (not registered).
func NewNamespaceLookups() *NamespaceLookups {
	n := &NamespaceLookups{
		vec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_cache_lookups_total",
			Help: "Cache reads by protocol, tenant, namespace and result (hit, miss); namespaces past the first 1000 count as _other.",
		}, []string{"protocol", "tenant", "namespace", "result"}),
		now:        time.Now,
		namespaces: map[[2]string]struct{}{},
	}
	n.lastMinute.Store(-1)
	return n
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
	if minute := n.now().Unix() / 60; n.lastMinute.Load() != minute {
		n.snapshot(minute)
	}
	c := n.counter(lookupKey{protocol, tenant, namespace, result})
	c.series.Inc()
	if result == "hit" {
		c.totals.hits.Add(1)
	} else {
		c.totals.misses.Add(1)
	}
}

// counter returns the series of k with its protocol's totals, creating them on first use.
// Past maxNamespaceSeries distinct namespaces, new ones share the "_other" series.
func (n *NamespaceLookups) counter(k lookupKey) *lookupCounter {
	if c, ok := n.series.Load(k); ok {
		return c.(*lookupCounter)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if c, ok := n.series.Load(k); ok {
		return c.(*lookupCounter)
	}
	p, _ := n.protocols.LoadOrStore(k.protocol, &protocolTotals{})
	labels := k
	ns := [2]string{k.tenant, k.namespace}
	if _, known := n.namespaces[ns]; !known {
		if len(n.namespaces) >= maxNamespaceSeries {
			labels.tenant, labels.namespace = otherNamespace, otherNamespace
		} else {
			n.namespaces[ns] = struct{}{}
		}
	}
	c := &lookupCounter{
		series: n.vec.WithLabelValues(labels.protocol, labels.tenant, labels.namespace, labels.result),
		totals: p.(*protocolTotals),
	}
	// A namespace past the bound is not remembered (clients choose namespaces, so the map
	// would grow without bound): its lookups come back here and share the "_other" series.
	if labels == k {
		n.series.Store(k, c)
	}
	return c
}

// snapshot records every protocol's totals as the start of minute, once per minute.
func (n *NamespaceLookups) snapshot(minute int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lastMinute.Load() == minute {
		return // another caller took it
	}
	totals := map[string]Lookups{}
	n.protocols.Range(func(k, v any) bool {
		totals[k.(string)] = v.(*protocolTotals).load()
		return true
	})
	n.snapshots[minute%int64(len(n.snapshots))] = lookupSnapshot{minute: minute, totals: totals}
	n.lastMinute.Store(minute)
}
