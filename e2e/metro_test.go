package e2e

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// newMetroWorkspace copies testdata/workspaces/metro and links the pinned metro install in.
func newMetroWorkspace(t *testing.T) string {
	t.Helper()
	requireNodeClient(t, "metro")
	if _, err := os.Stat(filepath.Join(nodeClients(t), "metro-cache")); err != nil {
		missingClient(t, "metro-cache is not installed in e2e/clients/node: %v", err)
	}
	dir := copyWorkspace(t, "metro", nil)
	if err := os.Symlink(nodeClients(t), filepath.Join(dir, "node_modules")); err != nil {
		t.Fatalf("link node_modules: %v", err)
	}
	return dir
}

// metroRoundTrip is what testdata/workspaces/metro/roundtrip.js prints.
type metroRoundTrip struct {
	MissBefore        any            `json:"missBefore"`
	BufferIsBuffer    bool           `json:"bufferIsBuffer"`
	BufferHex         string         `json:"bufferHex"`
	JSON              map[string]any `json:"json"`
	GetStoreHex       string         `json:"getStoreHex"`
	GetStoreMiss      any            `json:"getStoreMiss"`
	Namespaced        map[string]any `json:"namespaced"`
	OtherNamespace    any            `json:"otherNamespace"`
	DefaultNamespace  any            `json:"defaultNamespace"`
	ExpectedBufferHex string         `json:"expectedBufferHex"`
	Keys              struct {
		Buffer, JSON, Namespaced string
	} `json:"keys"`
}

// TestMetroHttpStore drives metro-cache 0.87.1's HttpStore and HttpGetStore against Kura:
// set then get of a Buffer and of a JSON value, a miss, and namespace isolation through the
// store's params option. It then checks the stored bytes are exactly Metro's gzip stream.
func TestMetroHttpStore(t *testing.T) {
	t.Parallel()
	dir := newMetroWorkspace(t)
	node := StartNode(t, NodeOptions{})
	endpoint := node.URL() + "/api/metro/cache"

	out := runClient(t, dir, clientEnv("KURA_METRO_ENDPOINT="+endpoint, "KURA_METRO_RUN_ID="+t.Name()),
		"node", "roundtrip.js")
	var got metroRoundTrip
	if err := json.Unmarshal([]byte(lastLine(out)), &got); err != nil {
		t.Fatalf("decode roundtrip.js output: %v\n%s", err, out)
	}
	if got.MissBefore != nil {
		t.Errorf("get before set = %v, want null (404 miss)", got.MissBefore)
	}
	if !got.BufferIsBuffer || got.BufferHex != got.ExpectedBufferHex {
		t.Errorf("Buffer value: isBuffer=%v hex=%q, want a Buffer %q", got.BufferIsBuffer, got.BufferHex, got.ExpectedBufferHex)
	}
	wantJSON := map[string]any{"code": "module.exports = 42;", "map": []any{1.0, 2.0, 3.0}, "nested": map[string]any{"ok": true}}
	if !reflect.DeepEqual(got.JSON, wantJSON) {
		t.Errorf("JSON value = %#v, want %#v", got.JSON, wantJSON)
	}
	if got.GetStoreHex != got.ExpectedBufferHex {
		t.Errorf("HttpGetStore read %q, want %q", got.GetStoreHex, got.ExpectedBufferHex)
	}
	if got.GetStoreMiss != nil {
		t.Errorf("HttpGetStore miss = %v, want null", got.GetStoreMiss)
	}
	if !reflect.DeepEqual(got.Namespaced, map[string]any{"ns": "acme/app1"}) {
		t.Errorf("namespaced value = %#v, want {ns: acme/app1}", got.Namespaced)
	}
	if got.OtherNamespace != nil || got.DefaultNamespace != nil {
		t.Errorf("namespace isolation: app2 saw %v, default saw %v; want null for both", got.OtherNamespace, got.DefaultNamespace)
	}

	// What Kura holds must be Metro's own bytes: a gzip stream of 0x00 + the raw Buffer,
	// served back without Content-Encoding (Metro gunzips every 200 itself).
	resp, err := http.Get(endpoint + "/" + got.Keys.Buffer)
	if err != nil {
		t.Fatalf("GET the Buffer entry: %v", err)
	}
	stored, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET the Buffer entry: status %d, %v", resp.StatusCode, err)
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		t.Errorf("Content-Encoding = %q, want none", ce)
	}
	zr, err := gzip.NewReader(bytes.NewReader(stored))
	if err != nil {
		t.Fatalf("stored entry is not Metro's gzip stream: %v (first bytes %x)", err, stored[:min(len(stored), 8)])
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip the stored entry: %v", err)
	}
	raw, _ := hex.DecodeString(got.ExpectedBufferHex)
	if want := append([]byte{0}, raw...); !bytes.Equal(plain, want) {
		t.Errorf("stored entry decompresses to %x, want %x", plain, want)
	}
	resp, err = http.Get(endpoint + "/" + got.Keys.Namespaced + "?tenant_id=acme&namespace_id=app1")
	if err != nil {
		t.Fatalf("GET the namespaced entry: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET the namespaced entry with its tenant_id/namespace_id: status %d, want 200", resp.StatusCode)
	}
}

// TestMetroBuild bundles a small app twice with `metro build` whose only cache store is
// Kura: the second build must be served entirely from Kura (every GET a hit, no upload) and
// produce the same bundle.
func TestMetroBuild(t *testing.T) {
	t.Parallel()
	dir := newMetroWorkspace(t)
	node := StartNode(t, NodeOptions{})
	metro := requireNodeClient(t, "metro")
	env := clientEnv("KURA_METRO_ENDPOINT=" + node.URL() + "/api/metro/cache")
	outDir := filepath.Join(dir, "out")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}

	var took []time.Duration
	build := func(name string) []byte {
		bundle := filepath.Join(outDir, name)
		start := time.Now()
		runClient(t, dir, env, metro, "build", "index.js", "--out", bundle, "--config", "metro.config.js")
		took = append(took, time.Since(start).Round(time.Millisecond))
		return readFile(t, bundle)
	}

	before := ScrapeMetrics(t, node).Artifacts("metro")
	first := build("first.js")
	afterFirst := ScrapeMetrics(t, node).Artifacts("metro")
	d1 := afterFirst.Sub(before)
	if d1.Misses < 1 || d1.Stored < 1 {
		t.Fatalf("first build: want transform misses and uploads, got %+v", d1)
	}

	second := build("second.js")
	d2 := ScrapeMetrics(t, node).Artifacts("metro").Sub(afterFirst)
	figure(t, "metro build %s with %v transform misses and %v uploads; %s with %v hits, %v misses, %v uploads",
		took[0], d1.Misses, d1.Stored, took[1], d2.Hits, d2.Misses, d2.Stored)
	if d2.Misses != 0 || d2.Stored != 0 {
		t.Fatalf("second build was not served entirely from Kura: %+v (want 0 misses, 0 uploads)", d2)
	}
	if d2.Hits != d1.Misses+d1.Hits {
		t.Fatalf("second build: %v hits, want one per transform (%v)", d2.Hits, d1.Misses+d1.Hits)
	}
	if !bytes.Equal(first, second) {
		t.Fatalf("bundles differ between the built and the cached run")
	}
	run := runClient(t, dir, clientEnv(), "node", filepath.Join(outDir, "second.js"))
	if want := "hello kura from a bundle served by the Kura cache 42"; !strings.Contains(run, want) {
		t.Fatalf("cached bundle printed %q, want %q", run, want)
	}
}

// lastLine returns the last non-empty line of a command's output.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}
