package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/internal/testsupport"
)

func TestAcceptRequestID(t *testing.T) {
	for _, tc := range []struct {
		sent string
		kept bool
	}{
		{"abc-123", true},
		{"0123456789abcdef0123456789abcdef", true},
		{strings.Repeat("x", MaxRequestIDBytes), true},
		{"~!#$%&'()*+,-./:;<=>?@[]^_`{|}", true},
		{"", false},
		{strings.Repeat("x", MaxRequestIDBytes+1), false},
		{"has space", false},
		{"tab\there", false},
		{"new\nline", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"é", false},
	} {
		got := AcceptRequestID(tc.sent)
		if tc.kept && got != tc.sent {
			t.Errorf("AcceptRequestID(%q) = %q, want it kept", tc.sent, got)
		}
		if !tc.kept && (got == tc.sent || !validRequestID(got) || len(got) != 32) {
			t.Errorf("AcceptRequestID(%q) = %q, want a fresh 32-character id", tc.sent, got)
		}
	}
	if a, b := NewRequestID(), NewRequestID(); a == b {
		t.Fatalf("two new ids are equal: %s", a)
	}
}

var testSpanContext = trace.NewSpanContext(trace.SpanContextConfig{
	TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
	SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
	TraceFlags: trace.FlagsSampled,
})

func TestContextHandlerAddsCorrelationFields(t *testing.T) {
	var buf bytes.Buffer
	logger, err := NewLogger(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	logger = logger.With("component", "http")
	sc := testSpanContext
	ctx := trace.ContextWithSpanContext(WithRequestID(context.Background(), "req-1"), sc)

	decode := func() map[string]any {
		t.Helper()
		var rec map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatalf("want one JSON record, got %q: %v", buf.String(), err)
		}
		buf.Reset()
		return rec
	}
	// Enough attributes that the record keeps some outside its inline array, which the
	// handler must not share with the caller's copy.
	logger.InfoContext(ctx, "with both", "a", 1, "b", 2, "c", 3, "d", 4, "e", 5, "f", 6)
	rec := decode()
	if rec[LogRequestID] != "req-1" || rec[LogTraceID] != sc.TraceID().String() || rec[LogSpanID] != sc.SpanID().String() ||
		rec["component"] != "http" || rec["f"] != float64(6) {
		t.Fatalf("record %v lacks a field", rec)
	}
	logger.InfoContext(WithRequestID(context.Background(), "req-2"), "request id only")
	if rec = decode(); rec[LogRequestID] != "req-2" || rec[LogTraceID] != nil {
		t.Fatalf("record %v: want request_id only", rec)
	}
	logger.Info("no context")
	if rec = decode(); rec[LogRequestID] != nil || rec[LogTraceID] != nil {
		t.Fatalf("record %v: want no correlation fields", rec)
	}

	// The caller's record is left as it was.
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "shared", 0)
	r.AddAttrs(slog.Int("a", 1), slog.Int("b", 2), slog.Int("c", 3), slog.Int("d", 4), slog.Int("e", 5), slog.Int("f", 6))
	if err := NewContextHandler(slog.DiscardHandler).Handle(ctx, r); err != nil {
		t.Fatal(err)
	}
	if r.NumAttrs() != 6 {
		t.Fatalf("the handler changed the caller's record: %d attributes", r.NumAttrs())
	}
	r.AddAttrs(slog.Int("g", 7)) // panics if the handler's additions shared r's storage
}

func TestTracingOffIsNoop(t *testing.T) {
	tr, err := NewTracing(context.Background(), TracingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Enabled() || TracingEnabled(tr.Provider()) || TracingEnabled(nil) {
		t.Fatal("tracing without an endpoint reports itself enabled")
	}
	_, span := tr.Provider().Tracer("t").Start(context.Background(), "x")
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Fatal("the no-op provider recorded a span")
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !TracingEnabled(sdktrace.NewTracerProvider()) {
		t.Fatal("an SDK provider reports tracing off")
	}
}

func TestTracesURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://collector:4318":              "http://collector:4318/v1/traces",
		"http://collector:4318/":             "http://collector:4318/v1/traces",
		"https://tempo.example/v1/traces":    "https://tempo.example/v1/traces",
		"http://collector:4318/custom/trace": "http://collector:4318/custom/trace",
	} {
		got, err := tracesURL(in)
		if err != nil || got != want {
			t.Errorf("tracesURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"collector:4318", "ftp://x/v1/traces", "http:///v1/traces"} {
		if _, err := tracesURL(bad); err == nil {
			t.Errorf("tracesURL(%q) accepted", bad)
		}
	}
}

// TestTracingExportsOverOTLPHTTP sends a span to a real OTLP/HTTP receiver and checks the
// resource that describes the node.
func TestTracingExportsOverOTLPHTTP(t *testing.T) {
	rcv := testsupport.NewOTLPReceiver()
	defer rcv.Close()
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=overridden,team=build")
	tr, err := NewTracing(context.Background(), TracingConfig{
		Endpoint:    strings.TrimSuffix(rcv.URL(), "/v1/traces"), // the default path is added
		ServiceName: "kura-eu", Environment: "staging",
		NodeName: "node-a", Region: "eu", TenantID: "acme", Version: "1.2.3",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Enabled() {
		t.Fatal("tracing with an endpoint reports itself off")
	}
	_, span := tr.Provider().Tracer("test").Start(context.Background(), "hello")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	spans := rcv.Spans()
	if len(spans) != 1 || spans[0].Name != "hello" {
		t.Fatalf("received %v (errors %v), want the one span", spans, rcv.Errors())
	}
	res := spans[0].Resource
	for k, want := range map[string]string{
		"service.name": "kura-eu", "service.version": "1.2.3", "service.instance.id": "node-a",
		"deployment.environment": "staging", "deployment.environment.name": "staging",
		AttrNodeName: "node-a", AttrRegion: "eu", AttrTenantID: "acme", "team": "build",
	} {
		if res[k] != want {
			t.Errorf("resource %s = %q, want %q (resource %v)", k, res[k], want, res)
		}
	}
}

func TestChildSpansOnly(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := ChildSpansOnly(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	tracer := tp.Tracer("t")

	ctx, orphan := tracer.Start(context.Background(), "background")
	if orphan.IsRecording() || trace.SpanContextFromContext(ctx).IsValid() {
		t.Fatal("a span without a parent was started")
	}
	orphan.End()
	parent := trace.ContextWithRemoteSpanContext(context.Background(), testSpanContext)
	_, child := tracer.Start(parent, "child")
	child.End()
	ended := rec.Ended()
	if len(ended) != 1 || ended[0].Name() != "child" || ended[0].Parent().SpanID() != testSpanContext.SpanID() {
		t.Fatalf("ended spans %v, want only the child of the remote parent", ended)
	}
}
