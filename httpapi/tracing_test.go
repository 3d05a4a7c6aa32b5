package httpapi

import (
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

// A client's W3C trace context: trace 4bf92f3577b34da6a3ce929d0e0e4736, its span 00f067aa0ba902b7.
const (
	clientTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID      = "00f067aa0ba902b7"
	clientTraceparent = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

func newTracedHarness(t *testing.T, o harnessOpts) (*harness, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	o.tracer = tp
	return newHarness(t, o), exp
}

func spanAttrs(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

func TestRequestIDs(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	fresh := h.do("GET", "/api/cache/gradle/k?tenant_id=a&namespace_id=b", nil)
	expectEmpty404(t, fresh)
	id := fresh.header.Get("X-Request-Id")
	if len(id) != 32 {
		t.Fatalf("a request without an id got x-request-id %q, want a new 32-character id", id)
	}
	if again := h.do("GET", "/up", nil).header.Get("X-Request-Id"); again == id || len(again) != 32 {
		t.Fatalf("second request got id %q (first %q), want a different new one", again, id)
	}
	// The client's own id is echoed, on successes and on errors alike.
	for _, r := range []response{
		h.do("PUT", "/api/cache/gradle/k?tenant_id=a&namespace_id=b", "body", "X-Request-Id", "build-42:step-7"),
		h.do("GET", "/api/cache/gradle/k", nil, "x-request-id", "build-42:step-7"), // 400: no tenant
		h.do("GET", "/no/such/route", nil, "X-Request-Id", "build-42:step-7"),
	} {
		if got := r.header.Get("X-Request-Id"); got != "build-42:step-7" {
			t.Errorf("answer %s carries x-request-id %q, want the client's", r, got)
		}
	}
	// An id that is not sane is replaced.
	for _, bad := range []string{"has space", strings.Repeat("x", telemetry.MaxRequestIDBytes+1), "caf\xc3\xa9"} {
		got := h.do("GET", "/up", nil, "X-Request-Id", bad).header.Get("X-Request-Id")
		if got == bad || len(got) != 32 {
			t.Errorf("client id %q answered with %q, want a new id", bad, got)
		}
	}
}

// TestRequestLogsCarryIDs: the access line and a failure's error line carry the request id and
// the trace and span ids of the request's server span.
func TestRequestLogsCarryIDs(t *testing.T) {
	var logs testsupport.LockedBuffer
	logger, err := telemetry.NewLogger(&logs, "debug", "json")
	if err != nil {
		t.Fatal(err)
	}
	o := harnessOpts{logger: logger}
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(t.Context()) }()
	o.tracer = tp
	h, fs := newFaultHarness(t, o)
	fs.set(func(f *faultStore) { f.putErr = storage.ErrUnavailable })
	r := h.do("POST", "/api/cache/cas/k?tenant_id=a&namespace_id=b", "x", "X-Request-Id", "req-503", "traceparent", clientTraceparent)
	expectMessage(t, r, http.StatusServiceUnavailable, "Storage unavailable")
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("got %d spans, want 1", len(spans))
	}
	spanID := spans[0].SpanContext.SpanID().String()
	for _, msg := range []string{`"msg":"request failed"`, `"msg":"request"`} {
		lines := logs.Lines(msg)
		if len(lines) != 1 {
			t.Fatalf("want one %s line, got %q", msg, logs.String())
		}
		for _, field := range []string{`"request_id":"req-503"`, `"trace_id":"` + clientTraceID + `"`, `"span_id":"` + spanID + `"`} {
			if !strings.Contains(lines[0], field) {
				t.Errorf("log line %s lacks %s", lines[0], field)
			}
		}
	}
	if access := logs.Lines(`"msg":"request"`)[0]; !strings.Contains(access, `"status":503`) || !strings.Contains(access, `"route":"/api/cache/cas/{id}"`) {
		t.Errorf("access line %s lacks the status or route", access)
	}
}

func TestServerSpans(t *testing.T) {
	h, exp := newTracedHarness(t, harnessOpts{})
	expect(t, h.do("PUT", "/api/cache/gradle/abc?tenant_id=acme&namespace_id=app", "body",
		"traceparent", clientTraceparent, "X-Request-Id", "req-1", "User-Agent", "Gradle/8.10"), http.StatusCreated, "")
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("got %d spans, want 1: %v", len(spans), spans)
	}
	s := spans[0]
	if s.Name != "PUT /api/cache/gradle/{cache_key}" || s.SpanKind != trace.SpanKindServer {
		t.Fatalf("span %q kind %v, want the route pattern and kind server", s.Name, s.SpanKind)
	}
	if s.SpanContext.TraceID().String() != clientTraceID || s.Parent.SpanID().String() != clientSpanID || !s.Parent.IsRemote() {
		t.Fatalf("span %s has parent %s: want the client's span of trace %s", s.SpanContext.TraceID(), s.Parent.SpanID(), clientTraceID)
	}
	a := spanAttrs(s)
	for k, want := range map[attribute.Key]string{
		"http.request.method": "PUT", "http.route": "/api/cache/gradle/{cache_key}", "url.path": "/api/cache/gradle/abc",
		"kura.request_id": "req-1", "user_agent.original": "Gradle/8.10", "client.address": "127.0.0.1",
	} {
		if got := a[k].String(); got != want {
			t.Errorf("attribute %s = %q, want %q", k, got, want)
		}
	}
	if a["http.response.status_code"].AsInt64() != http.StatusCreated || s.Status.Code == codes.Error {
		t.Errorf("status attribute %v, span status %v", a["http.response.status_code"], s.Status)
	}
	exp.Reset()

	// Without a traceparent the request starts a trace of its own.
	expect(t, h.do("GET", "/api/cache/gradle/abc?tenant_id=acme&namespace_id=app", nil), http.StatusOK, "body")
	if spans := exp.GetSpans(); len(spans) != 1 || spans[0].Parent.IsValid() || spans[0].Name != "GET /api/cache/gradle/{cache_key}" {
		t.Fatalf("untraced request: spans %v, want one root span", spans)
	}
	exp.Reset()

	// An unmatched path is named by its method alone; never by the raw path.
	expectEmpty404(t, h.do("GET", "/some/random/path", nil))
	if spans := exp.GetSpans(); len(spans) != 1 || spans[0].Name != "GET" {
		t.Fatalf("unmatched request: spans %v, want one named GET", spans)
	}
	exp.Reset()

	// Probes and scrapes are not traced.
	expect(t, h.do("GET", "/up", nil, "traceparent", clientTraceparent), http.StatusOK, "-")
	expect(t, h.do("GET", "/metrics", nil), http.StatusOK, "-")
	if spans := exp.GetSpans(); len(spans) != 0 {
		t.Fatalf("probes made spans: %v", spans)
	}
}

func TestServerSpanOfAFailure(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(t.Context()) }()
	h, fs := newFaultHarness(t, harnessOpts{tracer: tp})
	fs.set(func(f *faultStore) { f.putErr = storage.ErrUnavailable })
	expectMessage(t, h.do("POST", "/api/cache/cas/k?tenant_id=a&namespace_id=b", "x"), http.StatusServiceUnavailable, "Storage unavailable")
	fs.set(func(f *faultStore) { f.putErr = nil })
	expect(t, h.do("POST", "/api/cache/cas/k", "x"), http.StatusBadRequest, "-") // the client's fault
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want 2", len(spans))
	}
	if spans[0].Status.Code != codes.Error || spanAttrs(spans[0])["error.type"].AsString() != "503" {
		t.Errorf("503 span: status %v, attributes %v; want an error", spans[0].Status, spans[0].Attributes)
	}
	if spans[1].Status.Code == codes.Error {
		t.Errorf("400 span has error status %v: a client error is not the server's", spans[1].Status)
	}
}

// TestTracingOffInstallsNothing: the no-op provider, like none, leaves the tracer unset so the
// request path does not extract trace context or start spans.
func TestTracingOffInstallsNothing(t *testing.T) {
	for _, tp := range []trace.TracerProvider{nil, noopProvider()} {
		h := newHarness(t, harnessOpts{tracer: tp})
		if h.srv.tracer != nil {
			t.Fatalf("tracer provider %T: the server traces", tp)
		}
		if id := h.do("GET", "/up", nil).header.Get("X-Request-Id"); id == "" {
			t.Fatal("request ids depend on tracing")
		}
	}
}

func noopProvider() trace.TracerProvider { return noop.NewTracerProvider() }
