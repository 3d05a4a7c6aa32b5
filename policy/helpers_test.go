package policy

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http's keep-alive connections of httptest servers and clients close lazily.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// writeScript writes src to a file in a test directory and returns its path.
func writeScript(t testing.TB, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.lua")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// testEngine is an engine with its own registry.
type testEngine struct {
	*Engine
	reg *prometheus.Registry
}

func newTestEngine(t testing.TB, src string, configure ...func(*Config)) *testEngine {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{
		ScriptPath:     writeScript(t, src),
		ServerTenantID: "acme",
		HookTimeout:    DefaultHookTimeout,
		AllowTTL:       600e9,
		DenyTTL:        3e9,
		Registerer:     reg,
	}
	for _, f := range configure {
		f(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return &testEngine{Engine: e, reg: reg}
}

// hookCalls is kura_extension_hook_calls_total for one hook and result.
func (e *testEngine) hookCalls(hook, result string) int {
	return int(testutil.ToFloat64(e.metrics.hookCalls.WithLabelValues(hook, result)))
}

// lookups is kura_extension_cache_lookups_total for one result.
func (e *testEngine) lookups(result string) int {
	return int(testutil.ToFloat64(e.metrics.cacheLookups.WithLabelValues(result)))
}

// req builds an HTTP request for the policy with the given headers ("Name: value" pairs).
func req(op, tenant, namespace string, headers ...string) *Request {
	h := http.Header{}
	for _, kv := range headers {
		k, v, _ := strings.Cut(kv, ":")
		h.Add(k, strings.TrimSpace(v))
	}
	return &Request{
		Transport:   TransportHTTP,
		Route:       "/api/cache/cas/{id}",
		Method:      http.MethodGet,
		Operation:   op,
		TenantID:    tenant,
		NamespaceID: namespace,
		Producer:    "xcode",
		ArtifactKey: "artifact-1",
		Headers:     HTTPHeaders(h),
	}
}

func decide(e *testEngine, r *Request) Decision { return e.Decide(context.Background(), r) }

func (e *testEngine) cacheEvictionsCount() int {
	return int(testutil.ToFloat64(e.metrics.cacheEvictions))
}

// metricValue sums every series of a metric family in the engine's registry.
func (e *testEngine) metricValue(t testing.TB, name string) float64 {
	t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}
