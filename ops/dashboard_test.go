package ops

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/teststorage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kuracache/kura/internal/app"
	"github.com/kuracache/kura/internal/config"
	"github.com/kuracache/kura/internal/testsupport"
)

// The Grafana dashboard model, as far as the checks below read it.
type dashboard struct {
	UID, Title string
	Panels     []panel
	Templating struct {
		List []struct {
			Name, Type string
			Datasource *dsRef
			Query      json.RawMessage // a string, or {"query": "..."}
		}
	}
}

type dsRef struct{ Type, UID string }

type panel struct {
	ID         int
	Type       string
	Title      string
	Datasource *dsRef
	GridPos    struct{ X, Y, W, H int }
	Targets    []struct {
		Datasource   *dsRef
		Expr         string
		LegendFormat string `json:"legendFormat"`
		RefID        string `json:"refId"`
	}
	Panels []panel // a collapsed row's panels
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readRepoFile(t, "ops/grafana/dashboards/kura-cluster.json"), &d); err != nil {
		t.Fatalf("kura-cluster.json: %v", err)
	}
	return d
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// promQuery is one PromQL query of the dashboard and where it comes from.
type promQuery struct {
	where, expr, legend string
}

// promQueries returns every Prometheus query of the dashboard: panel targets and the
// variables' label_values(metric, label) queries (as the selector metric).
func promQueries(t *testing.T, d dashboard) []promQuery {
	t.Helper()
	var out []promQuery
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			ds := tg.Datasource
			if ds == nil {
				ds = p.Datasource
			}
			if ds != nil && ds.Type == "prometheus" {
				out = append(out, promQuery{fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), tg.Expr, tg.LegendFormat})
			}
		}
	}
	labelValues := regexp.MustCompile(`^label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct{ Query string }
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Fatalf("variable %s: query %s", v.Name, v.Query)
			}
			q = obj.Query
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Fatalf("variable %s: %q is not label_values(metric, label)", v.Name, q)
		}
		out = append(out, promQuery{"variable " + v.Name, m[1], "{{" + m[2] + "}}"})
	}
	return out
}

// grafanaVars replaces Grafana's variables with what they stand for, so PromQL's own parser
// can read the query: interval variables become a duration, the others a regex matching all.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m", "${__rate_interval}", "1m",
	"$__interval", "1m", "${__interval}", "1m",
	"$__range", "1h", "${__range}", "1h",
	"$instance", ".*", "${instance}", ".*",
)

// Labels Prometheus attaches to every scraped series (prometheus.yml), not in /metrics.
var targetLabels = map[string]bool{"instance": true, "job": true}

func TestDashboardLayoutAndDatasources(t *testing.T) {
	d := loadDashboard(t)
	if d.UID != "kura-cluster" || d.Title != "Kura cluster" {
		t.Errorf("dashboard %q (uid %q), want \"Kura cluster\" (kura-cluster)", d.Title, d.UID)
	}
	sources := map[string]string{}
	for _, ds := range provisionedDatasources(t) {
		sources[ds.UID] = ds.Type
	}
	ids := map[int]string{}
	type rect struct {
		title      string
		x, y, w, h int
	}
	var placed []rect
	for _, p := range allPanels(d.Panels) {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q at %+v is outside the 24-column grid", p.Title, g)
		}
		for _, r := range placed {
			if g.X < r.x+r.w && r.x < g.X+g.W && g.Y < r.y+r.h && r.y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", r.title, p.Title)
			}
		}
		placed = append(placed, rect{p.Title, g.X, g.Y, g.W, g.H})
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, ds := range []*dsRef{p.Datasource} {
			if ds == nil || sources[ds.UID] != ds.Type {
				t.Errorf("panel %q uses datasource %+v, not one provisioned (%v)", p.Title, ds, sources)
			}
		}
		for _, tg := range p.Targets {
			if ds := tg.Datasource; ds != nil && sources[ds.UID] != ds.Type {
				t.Errorf("panel %q target %s uses datasource %+v, not one provisioned", p.Title, tg.RefID, ds)
			}
			if ds := tg.Datasource; ds != nil && ds.Type == "loki" && !strings.Contains(tg.Expr, `job="kura"`) {
				t.Errorf("panel %q: the LogQL %q does not select Promtail's job=\"kura\"", p.Title, tg.Expr)
			}
		}
	}
}

// dashboardCoverage is what the dashboard must show (the list): a metric, and the
// label it is broken down by ("" for any).
var dashboardCoverage = []struct{ metric, by string }{
	{"kura_node_state", "state"},
	{"kura_http_requests_total", "route"},
	{"kura_requests_in_flight", ""},
	{"kura_http_request_duration_seconds_bucket", "route"},
	{"kura_artifact_reads_total", "kind"},
	{"kura_cache_lookups_total", "protocol"},
	{"kura_artifact_read_bytes_total", ""},
	{"kura_artifact_write_bytes_total", ""},
	{"kura_outbox_depth", "peer"},
	{"kura_replication_pushes_total", "result"},
	{"kura_replication_push_duration_seconds_bucket", ""},
	{"kura_replication_lag_seconds_bucket", "peer"},
	{"kura_antientropy_runs_total", "result"},
	{"kura_antientropy_objects_repaired_total", ""},
	{"kura_cluster_members", "region"},
	{"kura_fd_pool_in_use", ""},
	{"kura_manifest_cache_bytes", ""},
	{"kura_manifest_cache_hits_total", ""},
	{"kura_memory_watermark_state", ""},
	{"kura_extension_decisions_total", "outcome"},
	{"kura_extension_hook_calls_total", "result"},
	{"kura_extension_hook_duration_seconds_bucket", ""},
	{"kura_extension_cache_lookups_total", ""},
	{"kura_analytics_queue_depth", ""},
	{"kura_analytics_batches_total", "outcome"},
	{"kura_analytics_events_dropped_total", ""},
}

// TestDashboardQueriesWhatKuraExports starts two real nodes in-process (policy hooks and
// analytics on, as in the stack's nodes with those features), drives every surface the
// dashboard shows so the lazily created series exist, scrapes both nodes' /metrics and checks
// that every metric, label matcher, grouping label and legend label of every dashboard query
// is one Kura really exports; then it runs every query over the scrapes with Prometheus' engine.
func TestDashboardQueriesWhatKuraExports(t *testing.T) {
	exported, rounds := scrapeBusyCluster(t)

	type use struct{ labels map[string]bool }
	used := map[string]*use{}
	for _, q := range promQueries(t, loadDashboard(t)) {
		expr, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(q.expr))
		if err != nil {
			t.Errorf("%s: %q: %v", q.where, q.expr, err)
			continue
		}
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			name := vs.Name
			fam, ok := exported[name]
			if !ok {
				t.Errorf("%s: %s is not a metric Kura exports", q.where, name)
				return nil
			}
			if !strings.HasPrefix(name, "kura_") {
				t.Errorf("%s: %s is not one of Kura's own (kura_*) metrics", q.where, name)
			}
			if used[name] == nil {
				used[name] = &use{labels: map[string]bool{}}
			}
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel || targetLabels[m.Name] {
					continue
				}
				values, ok := fam[m.Name]
				if !ok {
					t.Errorf("%s: %s has no label %s", q.where, name, m.Name)
					continue
				}
				if m.Type == labels.MatchEqual && !values[m.Value] {
					t.Errorf("%s: %s{%s} never has the value %q (seen %v)", q.where, name, m.Name, m.Value, slices.Sorted(maps.Keys(values)))
				}
			}
			return nil
		})
		// Grouping labels must come from the selectors under the aggregation.
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			agg, ok := n.(*parser.AggregateExpr)
			if !ok {
				return nil
			}
			under := maps.Clone(targetLabels)
			var names []string
			parser.Inspect(agg.Expr, func(n parser.Node, _ []parser.Node) error {
				if vs, ok := n.(*parser.VectorSelector); ok {
					names = append(names, vs.Name)
					for l := range exported[vs.Name] {
						under[l] = true
					}
				}
				return nil
			})
			for _, l := range agg.Grouping {
				if !under[l] {
					t.Errorf("%s: groups by %s, which none of %v has", q.where, l, names)
				}
				for _, name := range names {
					if used[name] != nil {
						used[name].labels[l] = true
					}
				}
			}
			return nil
		})
		available := outputLabels(expr, exported)
		for _, m := range regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`).FindAllStringSubmatch(q.legend, -1) {
			if !available[m[1]] {
				t.Errorf("%s: the legend %q names %s, which the query's series do not have", q.where, q.legend, m[1])
			}
		}
	}

	evaluateDashboard(t, rounds)

	for _, c := range dashboardCoverage {
		u := used[c.metric]
		switch {
		case u == nil:
			t.Errorf("the dashboard does not show %s", c.metric)
		case c.by != "" && !u.labels[c.by]:
			t.Errorf("the dashboard shows %s but never by %s", c.metric, c.by)
		}
	}
}

// outputLabels returns the label names the series of expr's result can carry, which is what a
// legend may name: a selector's labels (its metric's and the target labels), narrowed by
// aggregations (by, without; topk keeps them), without le after histogram_quantile, and the left-hand side's
// for a binary operation between vectors.
func outputLabels(expr parser.Expr, exported exportedMetrics) map[string]bool {
	switch e := expr.(type) {
	case *parser.VectorSelector:
		out := maps.Clone(targetLabels)
		for l := range exported[e.Name] {
			out[l] = true
		}
		return out
	case *parser.MatrixSelector:
		return outputLabels(e.VectorSelector, exported)
	case *parser.ParenExpr:
		return outputLabels(e.Expr, exported)
	case *parser.StepInvariantExpr:
		return outputLabels(e.Expr, exported)
	case *parser.SubqueryExpr:
		return outputLabels(e.Expr, exported)
	case *parser.AggregateExpr:
		inner := outputLabels(e.Expr, exported)
		if e.Op == parser.TOPK || e.Op == parser.BOTTOMK || e.Op == parser.LIMITK {
			return inner // selects series, keeping their labels
		}
		if e.Without {
			for _, l := range e.Grouping {
				delete(inner, l)
			}
			return inner
		}
		out := map[string]bool{}
		for _, l := range e.Grouping {
			out[l] = inner[l]
		}
		return out
	case *parser.Call:
		for _, arg := range e.Args {
			if t := arg.Type(); t == parser.ValueTypeVector || t == parser.ValueTypeMatrix {
				out := outputLabels(arg, exported)
				if e.Func.Name == "histogram_quantile" {
					delete(out, "le")
				}
				return out
			}
		}
		return map[string]bool{}
	case *parser.BinaryExpr:
		if e.LHS.Type() == parser.ValueTypeVector {
			return outputLabels(e.LHS, exported)
		}
		return outputLabels(e.RHS, exported)
	default:
		return map[string]bool{}
	}
}

// evaluateDashboard stores the two rounds of scrapes in a Prometheus TSDB, 15 s apart and
// labelled instance and job the way prometheus.yml labels the stack's targets, and runs every
// dashboard query with Prometheus' own engine at the second round: each must evaluate (no
// vector-matching error) to at least one series (no selector or join that matches nothing).
func evaluateDashboard(t *testing.T, rounds [2][]snapshot) {
	t.Helper()
	db := teststorage.New(t)
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	for i, round := range rounds {
		at := t0.Add(time.Duration(i) * 15 * time.Second).UnixMilli()
		app := db.Appender(context.Background())
		for _, snap := range round {
			for name, f := range snap.families {
				for _, m := range f.GetMetric() {
					for _, s := range samples(name, f.GetType(), m) {
						lb := labels.NewBuilder(s.labels)
						lb.Set("instance", snap.instance)
						lb.Set("job", "kura")
						if _, err := app.Append(0, lb.Labels(), at, s.value); err != nil {
							t.Fatalf("append %s: %v", s.labels, err)
						}
					}
				}
			}
		}
		if err := app.Commit(); err != nil {
			t.Fatal(err)
		}
	}

	engine := promql.NewEngine(promql.EngineOpts{
		Logger: slog.New(slog.DiscardHandler), MaxSamples: 10_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute,
	})
	ctx := context.Background()
	for _, q := range promQueries(t, loadDashboard(t)) {
		qry, err := engine.NewInstantQuery(ctx, db, nil, grafanaVars.Replace(q.expr), t0.Add(15*time.Second))
		if err != nil {
			t.Errorf("%s: %v", q.where, err)
			continue
		}
		res := qry.Exec(ctx)
		var n int
		switch v := res.Value.(type) {
		case promql.Vector:
			n = len(v)
		case promql.Matrix:
			n = len(v)
		case promql.Scalar:
			n = 1
		}
		switch {
		case res.Err != nil:
			t.Errorf("%s: %q: %v", q.where, q.expr, res.Err)
		case n == 0:
			t.Errorf("%s: %q returns no series over two scrapes of busy nodes", q.where, q.expr)
		}
		qry.Close()
	}
}

// sample is one series' value in a scrape.
type sample struct {
	labels labels.Labels
	value  float64
}

// samples expands a metric of a family into the series Prometheus stores for it: histograms
// as cumulative _bucket{le} (with +Inf), _sum and _count, summaries as {quantile}, _sum and
// _count.
func samples(name string, typ dto.MetricType, m *dto.Metric) []sample {
	base := map[string]string{}
	for _, lp := range m.GetLabel() {
		base[lp.GetName()] = lp.GetValue()
	}
	one := func(n string, v float64, extra ...string) sample {
		l := maps.Clone(base)
		l[model.MetricNameLabel] = n
		for i := 0; i+1 < len(extra); i += 2 {
			l[extra[i]] = extra[i+1]
		}
		return sample{labels.FromMap(l), v}
	}
	switch typ {
	case dto.MetricType_COUNTER:
		return []sample{one(name, m.GetCounter().GetValue())}
	case dto.MetricType_GAUGE:
		return []sample{one(name, m.GetGauge().GetValue())}
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		h := m.GetHistogram()
		var out []sample
		sawInf := false
		for _, b := range h.GetBucket() {
			ub := b.GetUpperBound()
			sawInf = sawInf || math.IsInf(ub, 1)
			out = append(out, one(name+"_bucket", float64(b.GetCumulativeCount()), "le", strconv.FormatFloat(ub, 'g', -1, 64)))
		}
		if !sawInf {
			out = append(out, one(name+"_bucket", float64(h.GetSampleCount()), "le", "+Inf"))
		}
		return append(out, one(name+"_sum", h.GetSampleSum()), one(name+"_count", float64(h.GetSampleCount())))
	case dto.MetricType_SUMMARY:
		sm := m.GetSummary()
		var out []sample
		for _, q := range sm.GetQuantile() {
			out = append(out, one(name, q.GetValue(), "quantile", strconv.FormatFloat(q.GetQuantile(), 'g', -1, 64)))
		}
		return append(out, one(name+"_sum", sm.GetSampleSum()), one(name+"_count", float64(sm.GetSampleCount())))
	default:
		return []sample{one(name, m.GetUntyped().GetValue())}
	}
}

// exportedMetrics maps each sample name a node exports (histograms as _bucket, _sum and
// _count) to its label names and the values seen for each.
type exportedMetrics map[string]map[string]map[string]bool

func (e exportedMetrics) add(families map[string]*dto.MetricFamily) {
	for name, f := range families {
		for _, m := range f.GetMetric() {
			var samples map[string][]string // sample name -> extra labels
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				samples = map[string][]string{name + "_bucket": {"le"}, name + "_sum": nil, name + "_count": nil}
			case dto.MetricType_SUMMARY:
				samples = map[string][]string{name: {"quantile"}, name + "_sum": nil, name + "_count": nil}
			default:
				samples = map[string][]string{name: nil}
			}
			for sample, extra := range samples {
				if e[sample] == nil {
					e[sample] = map[string]map[string]bool{}
				}
				for _, l := range extra {
					if e[sample][l] == nil {
						e[sample][l] = map[string]bool{}
					}
				}
				for _, lp := range m.GetLabel() {
					if e[sample][lp.GetName()] == nil {
						e[sample][lp.GetName()] = map[string]bool{}
					}
					e[sample][lp.GetName()][lp.GetValue()] = true
				}
			}
		}
	}
}

// inProcessNode is one Kura node running in this test process on loopback.
type inProcessNode struct {
	app  *app.App
	base string // http://host:port
	logs *testsupport.LockedBuffer
}

// startNode starts a node with the given extra KURA_* settings on ephemeral loopback ports
// (gossip on gossipPort when it is not 0, so another node can name it in KURA_PEERS). It stops
// gracefully when the test ends.
func startNode(t *testing.T, name string, gossipPort int, extra ...string) *inProcessNode {
	t.Helper()
	cfg, err := config.Load(append([]string{
		"KURA_DATA_DIR=" + t.TempDir(),
		"KURA_BIND_ADDRESS=127.0.0.1",
		"KURA_NODE_NAME=" + name,
		"KURA_DISK_BUDGET_BYTES=64MiB",
	}, extra...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Port, cfg.GRPCPort, cfg.GossipPort, cfg.InternalPort = 0, 0, gossipPort, 0
	logs := &testsupport.LockedBuffer{}
	a, err := app.New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s stopped with %v", name, err)
			}
		case <-time.After(config.DefaultDrainTimeout + 5*time.Second):
			t.Errorf("%s did not stop", name)
		}
		if out := logs.String(); t.Failed() && out != "" {
			t.Logf("%s's warnings and errors:\n%s", name, out)
		}
	})
	return &inProcessNode{app: a, base: "http://" + a.HTTPAddr(), logs: logs}
}

// snapshot is one scrape of one node, named as Prometheus names the stack's targets.
type snapshot struct {
	instance string
	families map[string]*dto.MetricFamily
}

// scrapeBusyCluster runs two nodes that replicate to each other, with a policy script and
// analytics webhooks, drives HTTP and gRPC traffic through the first, and returns what both
// export once every family the dashboard relies on has appeared, and two rounds of scrapes.
func scrapeBusyCluster(t *testing.T) (exportedMetrics, [2][]snapshot) {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(dir, "allow.lua")
	if err := os.WriteFile(script, []byte("function authorize(ctx, p) return {allow = true} end\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(receiver.Close)
	common := []string{
		"KURA_GOSSIP_KEY=wjjrihjvbDgIEUtjccw5ScHYab0BD7VFf8VaxoJZLfs=",
		"KURA_EXTENSION_SCRIPT_PATH=" + script,
		"KURA_ANALYTICS_SERVER_URL=" + receiver.URL,
		"KURA_ANALYTICS_SIGNING_KEY=ops-test",
		"KURA_ANALYTICS_BATCH_TIMEOUT_MS=50",
	}
	gossip := freePorts(t, 1)[0]
	a := startNode(t, "ops-us", gossip, append(common, "KURA_REGION=us")...)
	b := startNode(t, "ops-eu", 0, append(common, "KURA_REGION=eu", "KURA_PEERS=127.0.0.1:"+strconv.Itoa(gossip))...)

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	scrape := func(n *inProcessNode) map[string]*dto.MetricFamily {
		resp, err := client.Get(n.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		families, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("parse %s/metrics: %v", n.base, err)
		}
		return families
	}
	value := func(families map[string]*dto.MetricFamily, name string, match map[string]string) float64 {
		var sum float64
	metrics:
		for _, m := range families[name].GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := match[lp.GetName()]; ok && want != lp.GetValue() {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return sum
	}
	testsupport.WaitFor(t, "both nodes to see us and eu", 30*time.Second, func() bool {
		for _, n := range []*inProcessNode{a, b} {
			f := scrape(n)
			if value(f, "kura_cluster_members", map[string]string{"region": "us"}) != 1 ||
				value(f, "kura_cluster_members", map[string]string{"region": "eu"}) != 1 {
				return false
			}
		}
		return true
	})

	do := func(method, path, body string, want int) {
		t.Helper()
		req, err := http.NewRequest(method, a.base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(path, "keyvalue") {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d, want %d", method, path, resp.StatusCode, want)
		}
	}
	conn, err := grpc.NewClient(a.app.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// traffic writes five new objects (four of them replicated kinds) and reads them back,
	// misses once on HTTP and asks the REAPI twice.
	traffic := func(round int) {
		t.Helper()
		const q = "?tenant_id=acme&namespace_id=ops"
		n := strconv.Itoa(round)
		body := "artifact body " + n
		sum := sha256.Sum256([]byte(body))
		digest := hex.EncodeToString(sum[:])
		do(http.MethodPut, "/api/cache/gradle/k"+n+q, body, http.StatusCreated)
		do(http.MethodGet, "/api/cache/gradle/k"+n+q, "", http.StatusOK)
		do(http.MethodGet, "/api/cache/gradle/absent"+q, "", http.StatusNotFound)
		do(http.MethodPost, "/api/cache/cas/cas-"+n+q, body, http.StatusNoContent)
		do(http.MethodGet, "/api/cache/cas/cas-"+n+q, "", http.StatusOK)
		do(http.MethodPut, "/api/cache/keyvalue"+q, `{"cas_id":"kv-`+n+`","entries":[{"value":"v"}]}`, http.StatusNoContent)
		do(http.MethodGet, "/api/cache/keyvalue/kv-"+n+q, "", http.StatusOK)
		do(http.MethodPut, "/cas/"+digest, body, http.StatusOK)
		do(http.MethodGet, "/cas/"+digest, "", http.StatusOK)
		do(http.MethodGet, "/ac/"+digest, "", http.StatusNotFound)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
			t.Fatalf("GetCapabilities: %v", err)
		}
		if _, err := repb.NewContentAddressableStorageClient(conn).FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
			BlobDigests: []*repb.Digest{{Hash: digest, SizeBytes: int64(len(body))}},
		}); err != nil {
			t.Fatalf("FindMissingBlobs: %v", err)
		}
	}

	// Two rounds of traffic, each followed by a scrape of both nodes once A's writes have
	// reached B and an analytics batch has gone out: two samples of every series, so the
	// dashboard's rates have something to compute.
	var rounds [2][]snapshot
	for i := range rounds {
		traffic(i + 1)
		want := float64(4 * (i + 1))
		testsupport.WaitFor(t, "A's writes pushed to B and an analytics batch delivered", 30*time.Second, func() bool {
			fa, fb := scrape(a), scrape(b)
			return value(fa, "kura_replication_pushes_total", map[string]string{"result": "applied"}) >= want &&
				value(fb, "kura_peer_requests_total", map[string]string{"side": "server"}) >= want &&
				value(fa, "kura_analytics_batches_total", map[string]string{"outcome": "ok"}) >= float64(i+1)
		})
		rounds[i] = []snapshot{{"kura-us", scrape(a)}, {"kura-eu", scrape(b)}}
	}

	exported := exportedMetrics{}
	for _, round := range rounds {
		for _, snap := range round {
			exported.add(snap.families)
		}
	}
	return exported, rounds
}
