package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

const analyticsKey = "e2e-signing-key"

// Receiver behaviours.
const (
	receiverOK   int32 = iota // 202
	receiverFail              // 500
	receiverHang              // never answers; returns when the client gives up
)

// webhook is one request the receiver got, with a valid signature.
type webhook struct {
	Path     string
	Endpoint string
	Type     string
	Events   []map[string]any
}

// webhookReceiver is an analytics server on 127.0.0.1 that verifies every signature.
type webhookReceiver struct {
	t        testing.TB
	srv      *httptest.Server
	mode     atomic.Int32
	requests atomic.Int64
	release  chan struct{}

	mu       sync.Mutex
	accepted []webhook // answered 2xx
}

func newWebhookReceiver(t testing.TB) *webhookReceiver {
	t.Helper()
	w := &webhookReceiver{t: t, release: make(chan struct{})}
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	t.Cleanup(w.srv.Close)
	// Runs first (cleanups are last-in first-out): no handler may hang past the test.
	t.Cleanup(func() { close(w.release) })
	return w
}

func (w *webhookReceiver) serve(rw http.ResponseWriter, r *http.Request) {
	w.requests.Add(1)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return // the client gave up mid-body
	}
	mac := hmac.New(sha256.New, []byte(analyticsKey))
	mac.Write(body)
	if got, want := r.Header.Get("X-Cache-Signature"), hex.EncodeToString(mac.Sum(nil)); got != want {
		w.t.Errorf("webhook to %s: x-cache-signature %q, want %q over %s", r.URL.Path, got, want, body)
	}
	switch w.mode.Load() {
	case receiverFail:
		http.Error(rw, "analytics are down", http.StatusInternalServerError)
		return
	case receiverHang:
		select {
		case <-r.Context().Done():
		case <-w.release:
		}
		return
	}
	var doc struct {
		Events []map[string]any `json:"events"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		w.t.Errorf("webhook to %s: body is not {\"events\":[…]}: %v: %s", r.URL.Path, err, body)
	}
	w.mu.Lock()
	w.accepted = append(w.accepted, webhook{Path: r.URL.Path, Endpoint: r.Header.Get("X-Cache-Endpoint"),
		Type: r.Header.Get("Content-Type"), Events: doc.Events})
	w.mu.Unlock()
	rw.WriteHeader(http.StatusAccepted)
}

func (w *webhookReceiver) got() []webhook {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.accepted)
}

// events lists the accepted events sent to path, in order.
func (w *webhookReceiver) events(path string) []map[string]any {
	var out []map[string]any
	for _, h := range w.got() {
		if h.Path == path {
			out = append(out, h.Events...)
		}
	}
	return out
}

// analyticsEnv points a node at the receiver; extra pairs override the settings.
func analyticsEnv(w *webhookReceiver, extra ...string) map[string]string {
	env := map[string]string{
		"KURA_ANALYTICS_SERVER_URL":  w.srv.URL,
		"KURA_ANALYTICS_SIGNING_KEY": analyticsKey,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// analyticsMetric sums a kura_analytics_* family for one pipeline and optional label pairs.
func analyticsMetric(m Metrics, name, pipeline string, labels ...string) float64 {
	match := map[string]string{"pipeline": pipeline}
	for i := 0; i+1 < len(labels); i += 2 {
		match[labels[i]] = labels[i+1]
	}
	return m.Sum(name, match)
}

// TestAnalyticsWebhooksDeliverSignedEvents: Xcode CAS and Gradle uploads and downloads reach the
// analytics server as signed batches carrying exactly what happened.
func TestAnalyticsWebhooksDeliverSignedEvents(t *testing.T) {
	t.Parallel()
	rcv := newWebhookReceiver(t)
	node := StartNode(t, NodeOptions{Env: analyticsEnv(rcv,
		"KURA_ANALYTICS_BATCH_SIZE", "10", "KURA_ANALYTICS_BATCH_TIMEOUT_MS", "100")})
	start := time.Now().UnixMilli()

	cas := bytes.Repeat([]byte("xcode-object "), 100)
	cache := bytes.Repeat([]byte("gradle-entry "), 50)
	xcodeURL := node.URL() + "/api/cache/cas/cas-e2e-1?tenant_id=acme&namespace_id=ios"
	expectStatus(t, "xcode POST", do(t, request{Method: http.MethodPost, URL: xcodeURL, Body: bytes.NewReader(cas)}), http.StatusNoContent)
	expectBody(t, "xcode GET", do(t, request{Method: http.MethodGet, URL: xcodeURL}), cas)
	expectStatus(t, "gradle PUT (path form)", do(t, request{Method: http.MethodPut,
		URL: node.URL() + "/api/cache/gradle/acme/android/key-e2e-1", Body: bytes.NewReader(cache)}), http.StatusCreated)
	expectBody(t, "gradle GET (query form)", do(t, request{Method: http.MethodGet,
		URL: node.URL() + "/api/cache/gradle/key-e2e-1?tenant_id=acme&namespace_id=android"}), cache)
	// A miss is not an event.
	expectNotFound(t, "gradle GET miss", do(t, request{Method: http.MethodGet, URL: node.URL() + "/api/cache/gradle/acme/android/nope"}))

	PollUntil(t, 20*time.Second, "both pipelines' events at the receiver", func() (bool, string) {
		x, g := len(rcv.events("/webhooks/cache")), len(rcv.events("/webhooks/gradle-cache"))
		return x >= 2 && g >= 2, fmt.Sprintf("%d xcode, %d gradle events", x, g)
	})
	end := time.Now().UnixMilli()

	check := func(pipeline, path, keyField, key, project string, size int) {
		t.Helper()
		events := rcv.events(path)
		if len(events) != 2 {
			t.Fatalf("%s: %d events, want 2: %v", pipeline, len(events), events)
		}
		for i, action := range []string{"upload", "download"} {
			e := events[i]
			keys := slices.Sorted(maps.Keys(e))
			want := []string{"account_handle", "action", keyField, "event_id", "observed_at_ms", "project_handle", "size"}
			slices.Sort(want)
			if !slices.Equal(keys, want) {
				t.Errorf("%s event %d has fields %v, want %v", pipeline, i, keys, want)
			}
			if e["account_handle"] != "acme" || e["project_handle"] != project || e["action"] != action ||
				e[keyField] != key || e["size"] != json.Number(fmt.Sprint(size)) {
				t.Errorf("%s event %d = %v, want %s of %s (%d bytes) in acme/%s", pipeline, i, e, action, key, size, project)
			}
			if id, _ := e["event_id"].(string); !uuidPattern.MatchString(id) {
				t.Errorf("%s event %d: event_id %q is not a random UUID", pipeline, i, id)
			}
			at, err := e["observed_at_ms"].(json.Number).Int64()
			if err != nil || at < start-1000 || at > end+1000 {
				t.Errorf("%s event %d: observed_at_ms %v outside the test's [%d, %d]", pipeline, i, e["observed_at_ms"], start, end)
			}
		}
	}
	check("xcode", "/webhooks/cache", "cas_id", "cas-e2e-1", "ios", len(cas))
	check("gradle", "/webhooks/gradle-cache", "cache_key", "key-e2e-1", "android", len(cache))
	for _, h := range rcv.got() {
		if h.Endpoint != node.HTTPAddr() || h.Type != "application/json" {
			t.Errorf("webhook to %s: x-cache-endpoint %q, content-type %q; want %q and application/json",
				h.Path, h.Endpoint, h.Type, node.HTTPAddr())
		}
	}
	m := ScrapeMetrics(t, node)
	for _, p := range []string{"xcode", "gradle"} {
		if got := analyticsMetric(m, "kura_analytics_events_enqueued_total", p); got != 2 {
			t.Errorf("%s: kura_analytics_events_enqueued_total = %v, want 2", p, got)
		}
		if got := analyticsMetric(m, "kura_analytics_events_dropped_total", p); got != 0 {
			t.Errorf("%s: kura_analytics_events_dropped_total = %v, want 0", p, got)
		}
	}
	figure(t, "%d signed webhooks carried 4 events", len(rcv.got()))
}

// TestAnalyticsBreakerOpensAndCloses: a failing analytics server opens the Gradle breaker (as
// /metrics shows) while uploads keep succeeding; once it recovers the breaker half-opens and
// closes again.
func TestAnalyticsBreakerOpensAndCloses(t *testing.T) {
	t.Parallel()
	rcv := newWebhookReceiver(t)
	rcv.mode.Store(receiverFail)
	node := StartNode(t, NodeOptions{Env: analyticsEnv(rcv,
		"KURA_ANALYTICS_BATCH_SIZE", "1",
		"KURA_ANALYTICS_BATCH_TIMEOUT_MS", "20",
		"KURA_ANALYTICS_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2",
		"KURA_ANALYTICS_CIRCUIT_BREAKER_OPEN_MS", "300")})
	n := 0
	put := func() {
		t.Helper()
		n++
		expectStatus(t, "gradle PUT", do(t, request{Method: http.MethodPut,
			URL: fmt.Sprintf("%s/api/cache/gradle/acme/android/key-%d", node.URL(), n), Body: strings.NewReader("entry")}), http.StatusCreated)
	}
	gauge := func(m Metrics) float64 { return analyticsMetric(m, "kura_analytics_breaker_state", "gradle") }
	transitions := func(m Metrics, to string) float64 {
		return analyticsMetric(m, "kura_analytics_breaker_transitions_total", "gradle", "to", to)
	}

	PollUntil(t, 30*time.Second, "the gradle breaker to open", func() (bool, string) {
		put()
		m := ScrapeMetrics(t, node)
		return gauge(m) == 1 && transitions(m, "open") >= 1, fmt.Sprintf("state %v, %v failed batches",
			gauge(m), analyticsMetric(m, "kura_analytics_batches_total", "gradle", "outcome", "error"))
	})
	openedAfter := n
	rcv.mode.Store(receiverOK)
	recovered := time.Now()
	PollUntil(t, 30*time.Second, "the gradle breaker to close after the server recovered", func() (bool, string) {
		put()
		m := ScrapeMetrics(t, node)
		return gauge(m) == 0 && transitions(m, "closed") >= 1 && len(rcv.events("/webhooks/gradle-cache")) >= 1,
			fmt.Sprintf("state %v, transitions to half_open %v, closed %v", gauge(m), transitions(m, "half_open"), transitions(m, "closed"))
	})
	m := ScrapeMetrics(t, node)
	if transitions(m, "half_open") < 1 {
		t.Errorf("the breaker closed without half-opening: %v half_open transitions", transitions(m, "half_open"))
	}
	if xs := analyticsMetric(m, "kura_analytics_breaker_state", "xcode"); xs != 0 {
		t.Errorf("xcode breaker state = %v: only the gradle pipeline failed", xs)
	}
	log, err := os.ReadFile(node.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(log, []byte("analytics circuit breaker open")) || !bytes.Contains(log, []byte("analytics circuit breaker closed")) {
		t.Errorf("the node log lacks the breaker's open WARN or close INFO")
	}
	figure(t, "breaker opened after %d PUTs; closed %s after the server recovered; %v events dropped while open, %v on failed sends, %d webhook requests in all",
		openedAfter, time.Since(recovered).Round(time.Millisecond),
		analyticsMetric(m, "kura_analytics_events_dropped_total", "gradle", "reason", "breaker_open"),
		analyticsMetric(m, "kura_analytics_events_dropped_total", "gradle", "reason", "send_failed"), rcv.requests.Load())
}

// TestAnalyticsHangingReceiverNeverSlowsUploads: with an analytics server that accepts and never
// answers, every PUT still succeeds at its usual speed (the figures are printed, only a
// generous safety bound is asserted), and the node still stops promptly.
func TestAnalyticsHangingReceiverNeverSlowsUploads(t *testing.T) {
	t.Parallel()
	rcv := newWebhookReceiver(t)
	rcv.mode.Store(receiverHang)
	node := StartNode(t, NodeOptions{Env: analyticsEnv(rcv,
		"KURA_ANALYTICS_BATCH_SIZE", "1",
		"KURA_ANALYTICS_BATCH_TIMEOUT_MS", "10",
		"KURA_ANALYTICS_QUEUE_CAPACITY", "16",
		"KURA_ANALYTICS_REQUEST_TIMEOUT_MS", "1000",
		// Never open: every batch waits out the full request timeout.
		"KURA_ANALYTICS_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1000000")})
	const puts = 200
	const safetyBound = 10 * time.Second
	body := bytes.Repeat([]byte("g"), 4<<10)
	latencies := make([]time.Duration, 0, puts)
	for i := range puts {
		start := time.Now()
		r := do(t, request{Method: http.MethodPut, URL: fmt.Sprintf("%s/api/cache/gradle/acme/android/hang-%d", node.URL(), i), Body: bytes.NewReader(body)})
		took := time.Since(start)
		expectStatus(t, "gradle PUT with a hanging analytics server", r, http.StatusCreated)
		if took > safetyBound {
			t.Fatalf("PUT %d took %s with a hanging analytics server", i, took)
		}
		latencies = append(latencies, took)
	}
	PollUntil(t, 20*time.Second, "the analytics server to be hit", func() (bool, string) {
		return rcv.requests.Load() >= 1, fmt.Sprintf("%d requests", rcv.requests.Load())
	})
	slices.Sort(latencies)
	pct := func(p float64) time.Duration {
		return latencies[int(p*float64(len(latencies)-1))].Round(time.Microsecond)
	}
	m := ScrapeMetrics(t, node)
	figure(t, "%d gradle PUTs (4 KiB) with a hanging analytics server: p50 %s, p90 %s, p99 %s, max %s",
		puts, pct(0.5), pct(0.9), pct(0.99), latencies[len(latencies)-1].Round(time.Microsecond))
	figure(t, "analytics meanwhile: %v events enqueued, %v dropped queue_full, %v batches failed (request timeout 1s), queue depth %v",
		analyticsMetric(m, "kura_analytics_events_enqueued_total", "gradle"),
		analyticsMetric(m, "kura_analytics_events_dropped_total", "gradle", "reason", "queue_full"),
		analyticsMetric(m, "kura_analytics_batches_total", "gradle", "outcome", "error"),
		analyticsMetric(m, "kura_analytics_queue_depth", "gradle"))
	start := time.Now()
	node.Stop()
	// SIGTERM to exit: the drain, the analytics flush (cut off after min(request timeout, 2 s))
	// and, in a -race build, the race runtime's one-second exit delay.
	figure(t, "graceful stop with a hanging analytics server and a full queue took %s (race build: %v)", time.Since(start).Round(time.Millisecond), harness.Race())
}
