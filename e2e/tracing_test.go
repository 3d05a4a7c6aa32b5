package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/kuracache/kura/internal/testsupport"
)

// tracesTimeout bounds the wait for spans to reach the receiver: the nodes export every
// 100 ms (OTEL_BSP_SCHEDULE_DELAY), and a push follows its write within the outbox's poll.
const tracesTimeout = 60 * time.Second

// tracingEnv makes a node export its spans to rcv quickly.
func tracingEnv(rcv *testsupport.OTLPReceiver) map[string]string {
	return map[string]string{
		"KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rcv.URL(),
		"KURA_OTEL_SERVICE_NAME":                  "kura-e2e",
		"KURA_OTEL_DEPLOYMENT_ENVIRONMENT":        "e2e",
		"OTEL_BSP_SCHEDULE_DELAY":                 "100",
		"KURA_LOG_LEVEL":                          "debug", // the per-request access line
	}
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestTracingAcrossTheCluster: two real nodes export OTLP/HTTP to a receiver the test runs. A
// client's write on node A, carrying its traceparent, and the write's apply on node B are one
// trace: A's HTTP server span under the client's span, A's commit under it, the outbox push
// under the commit (made later, by the dispatcher, from the entry's stored trace context),
// the batched lane's call span under the push, the internal-plane client span under it, then
// on B the internal-plane server span and B's commit. The node's request log line names the same trace.
func TestTracingAcrossTheCluster(t *testing.T) {
	t.Parallel()
	rcv := testsupport.NewOTLPReceiver()
	t.Cleanup(rcv.Close)
	nodes := startKuraCluster(t, 2, func(i int, o *NodeOptions) { o.Env = tracingEnv(rcv) })
	a, b := nodes[0], nodes[1]

	traceID, clientSpan, requestID := randomHex(t, 16), randomHex(t, 8), "e2e-"+randomHex(t, 6)
	key := "traced-" + randomHex(t, 8)
	body := bytes.Repeat([]byte("traced gradle entry "), 100)
	put := do(t, request{Method: http.MethodPut, URL: a.URL() + "/api/cache/gradle/" + key + "?tenant_id=acme&namespace_id=android",
		Body: bytes.NewReader(body), Header: map[string]string{
			"traceparent":  "00-" + traceID + "-" + clientSpan + "-01",
			"X-Request-Id": requestID,
		}})
	expectStatus(t, "traced gradle PUT on A", put, http.StatusCreated)
	if got := put.Header.Get("X-Request-Id"); got != requestID {
		t.Fatalf("PUT answered x-request-id %q, want the client's %q", got, requestID)
	}

	const (
		httpName = "PUT /api/cache/gradle/{cache_key}"
		// A small object travels on the batched lane: the call's span hangs under the push
		// span of its first entry (this write, alone in its batch).
		pushRPC = "kura.internal.v1.Replication/PushBatch"
	)
	var spans []testsupport.ReceivedSpan
	find := func(node, name string, kind tracepb.Span_SpanKind, parent string) (testsupport.ReceivedSpan, bool) {
		for _, s := range spans {
			if s.Resource["kura.node.name"] == node && s.Name == name && s.Kind == kind && s.ParentSpanID == parent {
				return s, true
			}
		}
		return testsupport.ReceivedSpan{}, false
	}
	chain := []struct {
		node, name string
		kind       tracepb.Span_SpanKind
	}{
		{a.Name, httpName, tracepb.Span_SPAN_KIND_SERVER},
		{a.Name, "storage.commit", tracepb.Span_SPAN_KIND_INTERNAL},
		{a.Name, "outbox.push", tracepb.Span_SPAN_KIND_INTERNAL},
		{a.Name, "outbox.push_batch", tracepb.Span_SPAN_KIND_INTERNAL},
		{a.Name, pushRPC, tracepb.Span_SPAN_KIND_CLIENT},
		{b.Name, pushRPC, tracepb.Span_SPAN_KIND_SERVER},
		{b.Name, "storage.commit", tracepb.Span_SPAN_KIND_INTERNAL},
	}
	var found []testsupport.ReceivedSpan
	PollUntil(t, tracesTimeout, "the write's spans on both nodes, each under the one before, in the client's trace", func() (bool, string) {
		spans = rcv.Trace(traceID)
		found = found[:0]
		parent := clientSpan
		for _, step := range chain {
			s, ok := find(step.node, step.name, step.kind, parent)
			if !ok {
				return false, fmt.Sprintf("no %s span %q (kind %s) under %s; trace so far:\n%s(receiver errors: %v)",
					step.node, step.name, step.kind, parent, testsupport.Describe(spans), rcv.Errors())
			}
			found = append(found, s)
			parent = s.SpanID
		}
		return true, ""
	})
	httpSpan, commitA, push, commitB := found[0], found[1], found[2], found[6]
	for k, v := range map[string]string{"http.route": "/api/cache/gradle/{cache_key}", "http.response.status_code": "201", "kura.request_id": requestID} {
		if httpSpan.Attributes[k] != v {
			t.Errorf("A's HTTP span: %s = %q, want %q", k, httpSpan.Attributes[k], v)
		}
	}
	for k, v := range map[string]string{"kura.storage.kind": "gradle", "kura.storage.size": fmt.Sprint(len(body)), "kura.storage.replicated": "false"} {
		if commitA.Attributes[k] != v {
			t.Errorf("A's commit span: %s = %q, want %q", k, commitA.Attributes[k], v)
		}
	}
	if commitB.Attributes["kura.storage.replicated"] != "true" {
		t.Errorf("B's commit span is not marked replicated: %v", commitB.Attributes)
	}
	if push.Attributes["kura.peer.name"] != b.Name || push.Attributes["kura.outbox.result"] != "applied" {
		t.Errorf("push span attributes %v, want peer %s and result applied", push.Attributes, b.Name)
	}
	for _, s := range []testsupport.ReceivedSpan{httpSpan, commitB} {
		node := s.Resource["kura.node.name"]
		if s.Resource["service.name"] != "kura-e2e" || s.Resource["deployment.environment"] != "e2e" || s.Resource["kura.region"] != "local" {
			t.Errorf("resource of %s's spans: %v", node, s.Resource)
		}
	}
	t.Logf("one trace %s across %s and %s:\n%s", traceID, a.Name, b.Name, testsupport.Describe(found))

	// The node's request line carries the request id and the trace.
	line := regexp.MustCompile(`(?m)^.*msg=request .*request_id=` + regexp.QuoteMeta(requestID) + `.*$`)
	PollUntil(t, 10*time.Second, "A's access line for the traced request", func() (bool, string) {
		l := line.FindString(readLog(t, a))
		if l == "" {
			return false, "no msg=request line with request_id=" + requestID
		}
		if !strings.Contains(l, "trace_id="+traceID) || !strings.Contains(l, "span_id="+httpSpan.SpanID) || !strings.Contains(l, "status=201") {
			t.Fatalf("access line %q lacks trace_id=%s, span_id=%s or status=201", l, traceID, httpSpan.SpanID)
		}
		return true, ""
	})
}

// TestRequestIDEndToEnd: every answer of a real node carries x-request-id, the client's own
// when it sent a sane one, a fresh one otherwise, and the node logs the request under it.
func TestRequestIDEndToEnd(t *testing.T) {
	t.Parallel()
	n := StartNode(t, NodeOptions{Env: map[string]string{"KURA_LOG_LEVEL": "debug"}})

	mine := "build-" + randomHex(t, 4) + ":step-7"
	r := do(t, request{Method: http.MethodGet, URL: n.URL() + "/api/cache/gradle/missing?tenant_id=acme&namespace_id=android",
		Header: map[string]string{"X-Request-Id": mine}})
	expectStatus(t, "GET a missing gradle entry", r, http.StatusNotFound)
	if got := r.Header.Get("X-Request-Id"); got != mine {
		t.Fatalf("404 answered x-request-id %q, want the client's %q", got, mine)
	}
	fresh := map[string]bool{}
	for _, hdr := range []map[string]string{nil, {"X-Request-Id": "two words"}, {"X-Request-Id": strings.Repeat("x", 129)}} {
		r := do(t, request{Method: http.MethodGet, URL: n.URL() + "/up", Header: hdr})
		id := r.Header.Get("X-Request-Id")
		if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) || fresh[id] {
			t.Fatalf("request with header %v answered x-request-id %q, want a new 32-hex id", hdr, id)
		}
		fresh[id] = true
	}
	PollUntil(t, 10*time.Second, "the request line with the client's id", func() (bool, string) {
		log := readLog(t, n)
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "msg=request ") && strings.Contains(l, "request_id="+mine) {
				if strings.Contains(l, "trace_id=") {
					t.Fatalf("tracing is off but the line has a trace id: %q", l)
				}
				return strings.Contains(l, "status=404"), l
			}
		}
		return false, "no msg=request line with request_id=" + mine
	})
}
