package telemetry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNewLoggerFormatsAndLevels(t *testing.T) {
	var buf bytes.Buffer
	logger, err := NewLogger(&buf, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("hidden")
	logger.Warn("shown", "k", "v")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("want one JSON record, got %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["k"] != "v" {
		t.Fatalf("unexpected record %v", rec)
	}
	buf.Reset()
	logger, err = NewLogger(&buf, "debug", "text")
	if err != nil {
		t.Fatal(err)
	}
	logger.Debug("dbg")
	if !strings.Contains(buf.String(), "msg=dbg") {
		t.Fatalf("text handler output %q", buf.String())
	}
	for _, bad := range [][2]string{{"loud", "json"}, {"info", "xml"}} {
		if _, err := NewLogger(&buf, bad[0], bad[1]); err == nil {
			t.Errorf("NewLogger(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

func TestRegistryExportsNodeInfo(t *testing.T) {
	reg := NewRegistry(NodeIdentity{Node: "n1", Region: "eu", TenantID: "acme", Version: "dev"})
	want := `
# HELP kura_node_info Constant 1, labelled with this node's identity.
# TYPE kura_node_info gauge
kura_node_info{node="n1",region="eu",tenant_id="acme",version="dev"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kura_node_info"); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sawGo bool
	for _, f := range families {
		if f.GetName() == "go_goroutines" {
			sawGo = true
		}
	}
	if !sawGo {
		t.Fatal("Go runtime collector missing")
	}
}

func TestNamespaceLookupsAreSharedAndBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := NewArtifactMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewArtifactMetrics(reg) // the second front end on the same registry
	if err != nil || b.Lookups != a.Lookups {
		t.Fatalf("the second front end got its own lookups collector (%v)", err)
	}
	a.Lookups.Observe("nx", "acme", "web", "hit")
	b.Lookups.Observe("reapi", "acme", "web", "miss")
	a.Lookups.Observe("nx", "acme", "web", "error") // not a lookup
	for i := range maxNamespaceSeries + 10 {
		a.Lookups.Observe("gradle", "acme", fmt.Sprintf("ns-%d", i), "hit")
	}
	if got := testutil.ToFloat64(a.Lookups.vec.WithLabelValues("nx", "acme", "web", "hit")); got != 1 {
		t.Fatalf("nx hits = %v", got)
	}
	if got := testutil.ToFloat64(a.Lookups.vec.WithLabelValues("reapi", "acme", "web", "miss")); got != 1 {
		t.Fatalf("reapi misses = %v", got)
	}
	if got := testutil.ToFloat64(a.Lookups.vec.WithLabelValues("gradle", otherNamespace, otherNamespace, "hit")); got != 11 {
		t.Fatalf("lookups past the bound counted under _other: %v, want 11", got)
	}
	if n := testutil.CollectAndCount(a.Lookups); n > maxNamespaceSeries+3 {
		t.Fatalf("%d series", n)
	}
}

func TestRecentLookups(t *testing.T) {
	n := NewNamespaceLookups()
	clock := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	n.now = func() time.Time { return clock }
	n.Observe("nx", "t", "a", "hit")
	n.Observe("nx", "t", "a", "miss")
	clock = clock.Add(3 * time.Minute)
	n.Observe("nx", "t", "a", "hit")
	n.Observe("reapi", "t", "a", "hit")
	if r := n.Recent()["nx"].Minute; r.Hits != 1 || r.Misses != 0 {
		t.Fatalf("last minute: %+v", r)
	}
	if r := n.Recent()["nx"].Five; r.Hits != 2 || r.Misses != 1 || r.Ratio() < 0.66 || r.Ratio() > 0.67 {
		t.Fatalf("last 5 minutes: %+v", r)
	}
	if r := n.Recent()["reapi"]; r.Minute.Hits != 1 || r.Fifteen.Total() != 1 {
		t.Fatalf("a protocol seen in the last minute only: %+v", r)
	}
	clock = clock.Add(20 * time.Minute) // everything aged out, and the ring slots are reused
	n.Observe("nx", "t", "a", "miss")
	if r := n.Recent()["nx"].Fifteen; r.Hits != 0 || r.Misses != 1 {
		t.Fatalf("after 20 minutes: %+v", r)
	}
	if _, ok := n.Recent()["reapi"]; ok {
		t.Fatal("a protocol without lookups in 15 minutes is listed")
	}
	if (Lookups{}).Ratio() != 0 {
		t.Fatal("ratio without lookups")
	}
}

// RegisterAll leaves the registry as it found it when one collector conflicts, so the
// failed component can be built again on it.
func TestRegisterAllIsAllOrNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	taken := prometheus.NewGauge(prometheus.GaugeOpts{Name: "kura_taken", Help: "already there"})
	reg.MustRegister(taken)
	first := prometheus.NewCounter(prometheus.CounterOpts{Name: "kura_first_total", Help: "registered, then rolled back"})
	clash := prometheus.NewCounter(prometheus.CounterOpts{Name: "kura_taken", Help: "conflicts"})
	if err := RegisterAll(reg, first, clash); err == nil {
		t.Fatal("RegisterAll accepted a conflicting collector")
	}
	if err := RegisterAll(reg, first); err != nil {
		t.Fatalf("the rolled-back collector cannot be registered again: %v", err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	if want := []string{"kura_first_total", "kura_taken"}; !slices.Equal(names, want) {
		t.Fatalf("registry holds %v, want %v", names, want)
	}
}
