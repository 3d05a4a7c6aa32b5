package harness

import (
	"io"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a node's /metrics.
type Metrics map[string]*dto.MetricFamily

// ScrapeMetrics fetches and parses GET /metrics (Prometheus text format).
func ScrapeMetrics(t testing.TB, n *Node) Metrics {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, n.URL()+"/metrics", nil)
	if err != nil {
		t.Fatalf("build /metrics request: %v", err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := n.Client(30 * time.Second).Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return Metrics(families)
}

// Series returns the series of the family whose labels include all of match; none when the
// family is absent.
func (m Metrics) Series(name string, match map[string]string) []*dto.Metric {
	fam, ok := m[name]
	if !ok {
		return nil
	}
	var out []*dto.Metric
series:
	for _, metric := range fam.GetMetric() {
		labels := map[string]string{}
		for _, lp := range metric.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		for k, v := range match {
			if labels[k] != v {
				continue series
			}
		}
		out = append(out, metric)
	}
	return out
}

// Sum adds the values of every counter or gauge series of the family whose labels include all
// of match. A family that is absent sums to 0.
func (m Metrics) Sum(name string, match map[string]string) float64 {
	var total float64
	for _, metric := range m.Series(name, match) {
		switch {
		case metric.Counter != nil:
			total += metric.GetCounter().GetValue()
		case metric.Gauge != nil:
			total += metric.GetGauge().GetValue()
		case metric.Untyped != nil:
			total += metric.GetUntyped().GetValue()
		}
	}
	return total
}

// Has reports whether the family exists in the scrape.
func (m Metrics) Has(name string) bool {
	_, ok := m[name]
	return ok
}

// ArtifactCounts are the artifact read/write counters of one kind (docs/contract.md §7), from
// kura_artifact_reads_total and kura_artifact_writes_total.
type ArtifactCounts struct {
	Hits, Misses, Stored, Rejected float64
}

// Artifacts reads the artifact counters of one storage kind ("nx", "metro", "gradle", …). A
// counter family only appears once it has a series, so absent families count as zero; a test
// that expects traffic then fails with the whole (zero) breakdown.
func (m Metrics) Artifacts(kind string) ArtifactCounts {
	return ArtifactCounts{
		Hits:   m.Sum("kura_artifact_reads_total", map[string]string{"kind": kind, "result": "hit"}),
		Misses: m.Sum("kura_artifact_reads_total", map[string]string{"kind": kind, "result": "miss"}),
		Stored: m.Sum("kura_artifact_writes_total", map[string]string{"kind": kind, "result": "stored"}),
		// Writes refused because of the client: a limit, a bad digest, or the policy.
		Rejected: m.Sum("kura_artifact_writes_total", map[string]string{"kind": kind, "result": "rejected"}),
	}
}

// Sub is the change from an earlier scrape.
func (a ArtifactCounts) Sub(before ArtifactCounts) ArtifactCounts {
	return ArtifactCounts{Hits: a.Hits - before.Hits, Misses: a.Misses - before.Misses, Stored: a.Stored - before.Stored,
		Rejected: a.Rejected - before.Rejected}
}
