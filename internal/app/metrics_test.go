package app

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// spec7Families are the metric families docs/contract.md §7 names, by one member each. Families of
// optional subsystems (policy, analytics) are covered with those switched on; the per-peer
// replication families (kura_replication_*, kura_outbox_depth) only have series once a peer
// exists and are checked by the outbox tests and the cluster e2e suite.
var spec7Families = []string{
	"kura_http_requests_total", "kura_http_request_duration_seconds",
	"kura_artifact_reads_total", "kura_artifact_writes_total", "kura_artifact_read_bytes_total", "kura_artifact_write_bytes_total",
	"kura_cache_lookups_total",
	"kura_grpc_requests_total",
	"kura_antientropy_runs_total",
	"kura_cluster_members",
	"kura_fd_pool_in_use", "kura_fd_pool_capacity",
	"kura_manifest_cache_bytes", "kura_manifest_cache_hits_total", "kura_manifest_cache_admissions_total",
	"kura_memory_watermark_state",
	"kura_metadata_store_block_cache_usage_bytes", "kura_metadata_store_block_cache_capacity_bytes",
	"kura_metadata_store_write_buffer_usage_bytes", "kura_metadata_store_write_buffer_capacity_bytes",
	"kura_node_info", "kura_node_state", "kura_requests_in_flight",
	"kura_extension_hook_calls_total", "kura_extension_decisions_total",
	"kura_analytics_queue_depth", "kura_analytics_breaker_state",
}

// TestMetricsFamiliesAndNames runs a node with the policy and analytics on, makes traffic on
// HTTP and gRPC, and checks that every docs/contract.md §7 family is exported on the node's registry and
// that every family passes Prometheus' own lint (promlint).
func TestMetricsFamiliesAndNames(t *testing.T) {
	script := filepath.Join(t.TempDir(), "policy.lua")
	if err := os.WriteFile(script, []byte(`function authorize(ctx, p) return {allow = true} end`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "KURA_EXTENSION_SCRIPT_PATH="+script,
		"KURA_ANALYTICS_SERVER_URL=http://127.0.0.1:1", "KURA_ANALYTICS_SIGNING_KEY=k")
	node, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(cfg.DrainTimeout + 5*time.Second):
			t.Fatal("Run did not return")
		}
	}()

	base := "http://" + node.HTTPAddr()
	for _, r := range []struct{ method, path, body string }{
		{"PUT", "/api/cache/gradle/abc123?tenant_id=t&namespace_id=n", "entry"},
		{"GET", "/api/cache/gradle/abc123?tenant_id=t&namespace_id=n", ""},
		{"GET", "/api/cache/gradle/missing?tenant_id=t&namespace_id=n", ""},
		{"GET", "/metrics", ""},
	} {
		req, _ := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	conn, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Fatal(err)
	}

	families, err := node.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	for _, name := range spec7Families {
		if !have[name] {
			t.Errorf("docs/contract.md §7 family %s is not exported", name)
		}
	}
	problems, err := testutil.GatherAndLint(node.registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	lookups := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "kura_cache_lookups_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			lookups[l["protocol"]+" "+l["tenant"]+"/"+l["namespace"]+" "+l["result"]] = m.GetCounter().GetValue()
		}
	}
	if lookups["gradle t/n hit"] != 1 || lookups["gradle t/n miss"] != 1 {
		t.Errorf("per-namespace lookups = %v, want one gradle hit and one miss in t/n", lookups)
	}
}

// TestREADMEDocumentsEveryMetric finds every kura_* metric name the module's non-test code
// declares (string literals handed to the Prometheus constructors) and checks that the README's
// metrics table names it, so a new family cannot ship undocumented.
func TestREADMEDocumentsEveryMetric(t *testing.T) {
	root := filepath.Join("..", "..")
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := expandMetricNames(string(readme))
	declared := map[string]string{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "node_modules", "testdata", "e2e", "test-output":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			if v, err := strconv.Unquote(lit.Value); err == nil && metricName.MatchString(v) {
				declared[v] = fset.Position(lit.Pos()).String()
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(declared) < 50 {
		t.Fatalf("found only %d metric names in the sources; the scan is broken", len(declared))
	}
	for name, where := range declared {
		if !documented[name] {
			t.Errorf("%s (declared at %s) is not in the README's metrics table", name, where)
		}
	}
}

var metricName = regexp.MustCompile(`^kura_[a-z0-9_]+$`)

// expandMetricNames returns the metric names a text mentions in backquotes, expanding the
// table's shorthand: "`kura_x_hits_total`, `_misses_total`" names kura_x_misses_total too
// (a suffix continues the prefix of the previous full name, up to its last word that
// the suffix's first word replaces).
func expandMetricNames(text string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		prev := ""
		for _, m := range regexp.MustCompile("`(_?[a-z0-9_]+)`").FindAllStringSubmatch(line, -1) {
			tok := m[1]
			switch {
			case strings.HasPrefix(tok, "kura_"):
				names[tok], prev = true, tok
			case strings.HasPrefix(tok, "_") && prev != "":
				// `kura_manifest_cache_bytes`, `_entries`: try every prefix of prev.
				parts := strings.Split(prev, "_")
				for i := len(parts) - 1; i > 1; i-- {
					names[strings.Join(parts[:i], "_")+tok] = true
				}
			}
		}
	}
	return names
}
