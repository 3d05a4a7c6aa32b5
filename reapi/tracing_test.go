package reapi

import (
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/internal/testsupport"
)

const (
	clientTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID      = "00f067aa0ba902b7"
	clientTraceparent = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

func newTracedHarness(t *testing.T) (*harness, *tracetest.InMemoryExporter, *testsupport.LockedBuffer) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	logs := &testsupport.LockedBuffer{}
	logger, err := telemetry.NewLogger(logs, "debug", "json")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessWith(t, Config{}, nil, func(d *Deps) { d.TracerProvider = tp; d.Logger = logger })
	return h, exp, logs
}

func attrOf(s tracetest.SpanStub, k attribute.Key) string {
	for _, kv := range s.Attributes {
		if kv.Key == k {
			return kv.Value.String()
		}
	}
	return ""
}

// TestCallSpansAndRequestIDs: unary and streaming calls continue the client's trace context in
// a server span, answer with the client's x-request-id (or a new one) as header metadata, and
// log with both.
func TestCallSpansAndRequestIDs(t *testing.T) {
	h, exp, logs := newTracedHarness(t)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", clientTraceparent, "x-request-id", "bazel-7f3a")

	var hdr metadata.MD
	if _, err := h.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-request-id"); len(got) != 1 || got[0] != "bazel-7f3a" {
		t.Fatalf("unary answer x-request-id %v, want the client's", got)
	}
	blob := []byte("traced blob")
	stream, err := h.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{ResourceName: uploadName("", false, digestOf(blob)), Data: blob, FinishWrite: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if hdr, err := stream.Header(); err != nil || len(hdr.Get("x-request-id")) != 1 || hdr.Get("x-request-id")[0] != "bazel-7f3a" {
		t.Fatalf("stream answer header %v (%v), want the client's x-request-id", hdr, err)
	}

	// A server span ends once the answer is on its way: wait for both.
	spans := waitSpans(t, exp, 2)
	names := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		names[s.Name] = s
	}
	for _, name := range []string{
		"build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
		"google.bytestream.ByteStream/Write",
	} {
		s, ok := names[name]
		if !ok {
			t.Fatalf("no span %q among %d spans: %v", name, len(spans), names)
		}
		if s.SpanKind != trace.SpanKindServer || s.SpanContext.TraceID().String() != clientTraceID || s.Parent.SpanID().String() != clientSpanID {
			t.Errorf("span %s: kind %v, trace %s, parent %s; want a server span under the client's", name, s.SpanKind, s.SpanContext.TraceID(), s.Parent.SpanID())
		}
		if got := attrOf(s, telemetry.AttrRequestID); got != "bazel-7f3a" {
			t.Errorf("span %s: %s = %q", name, telemetry.AttrRequestID, got)
		}
		line := ""
		for _, l := range logs.Lines(`"msg":"gRPC request"`) {
			if strings.Contains(l, name) {
				line = l
			}
		}
		for _, field := range []string{`"request_id":"bazel-7f3a"`, `"trace_id":"` + clientTraceID + `"`, `"span_id":"` + s.SpanContext.SpanID().String() + `"`} {
			if !strings.Contains(line, field) {
				t.Errorf("log line of %s %q lacks %s", name, line, field)
			}
		}
	}
	exp.Reset()

	// Health checks get an id, no span; a call without an id gets a new one.
	if _, err := healthpb.NewHealthClient(h.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-request-id"); len(got) != 1 || len(got[0]) != 32 {
		t.Fatalf("health check answered x-request-id %v, want a new id", got)
	}
	bad := metadata.AppendToOutgoingContext(ctxT(t), "x-request-id", "no spaces allowed")
	if _, err := h.caps.GetCapabilities(bad, &repb.GetCapabilitiesRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-request-id"); len(got) != 1 || len(got[0]) != 32 {
		t.Fatalf("an id with spaces was answered with %v, want a new id", got)
	}
	// The health check's span, had there been one, ends before the next call's.
	spans = waitSpans(t, exp, 1)
	if len(spans) != 1 || !strings.HasSuffix(spans[0].Name, "/GetCapabilities") || spans[0].Parent.IsValid() {
		t.Fatalf("spans after a health check and an untraced call: %v, want the call's root span only", spans)
	}
}

// TestNoTracingNoStatsHandler: without a tracer provider the options carry no stats handler.
func TestNoTracingNoStatsHandler(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	if h.srv.stats != nil {
		t.Fatal("a stats handler without a tracer provider")
	}
	var hdr metadata.MD
	if _, err := h.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if len(hdr.Get("x-request-id")) != 1 {
		t.Fatalf("request ids depend on tracing: header %v", hdr)
	}
}

// waitSpans polls exp until it holds n spans (a server span ends after the client may
// already have its answer), failing the test after a few seconds.
func waitSpans(t *testing.T, exp *tracetest.InMemoryExporter, n int) tracetest.SpanStubs {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		spans := exp.GetSpans()
		if len(spans) >= n {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d spans ended within 5s, want %d: %v", len(spans), n, spans)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
