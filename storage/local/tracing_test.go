package local

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// TestCommitSpans: every durable commit (segment put, inline keyvalue, tombstone) is a span
// under the caller's, with its kind and size, and OnCommit sees that span's context, which is
// what the outbox stores to continue the trace; an existing immutable object commits nothing.
func TestCommitSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var seen []trace.SpanContext
	opts := testOpts(t)
	opts.TracerProvider = tp
	opts.Observer = commitFunc(func(_ *meta.Batch, c storage.Change) error {
		seen = append(seen, c.Trace)
		return nil
	})
	s := openStore(t, opts)

	parentCtx, parent := tp.Tracer("test").Start(context.Background(), "request")
	body := []byte("segment body")
	if _, err := s.Put(parentCtx, cas("traced"), bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	kv := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "doc"}
	if _, err := s.Put(parentCtx, kv, strings.NewReader(`{"entries":[]}`), storage.PutOptions{Size: 14}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNamespace(parentCtx, "acme", "other", 0); err != nil {
		t.Fatal(err)
	}
	parent.End()

	spans := exp.GetSpans()
	if len(spans) != 4 { // three commits and the parent
		t.Fatalf("got %d spans, want 4: %v", len(spans), spans)
	}
	want := []map[attribute.Key]string{
		{attrOp: "put", attrKind: "cas", attrSize: "12", attrInline: "false", attrReplicated: "false", attrCreated: "true"},
		{attrOp: "put", attrKind: "keyvalue", attrSize: "14", attrInline: "true", attrCreated: "true"},
		{attrOp: "delete_namespace", attrReplicated: "false", attrCreated: "true"},
	}
	for i, w := range want {
		sp := spans[i]
		if sp.Name != commitSpanName || sp.Parent.SpanID() != parent.SpanContext().SpanID() || sp.SpanContext.TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("span %d: %q under %s, want %s under the request", i, sp.Name, sp.Parent.SpanID(), commitSpanName)
		}
		got := map[attribute.Key]string{}
		for _, kv := range sp.Attributes {
			got[kv.Key] = kv.Value.String()
		}
		for k, v := range w {
			if got[k] != v {
				t.Errorf("span %d: %s = %q, want %q", i, k, got[k], v)
			}
		}
		if i >= len(seen) || !seen[i].Equal(sp.SpanContext) {
			t.Errorf("commit %d: OnCommit saw trace %v, want the commit span %v", i, seen, sp.SpanContext)
		}
	}
	exp.Reset()

	// An existing immutable object: answered before any commit, so no span.
	if _, err := s.Put(context.Background(), cas("traced"), bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	// A replicated write older than the namespace's tombstone is stale: a span, but no error.
	if err := s.DeleteNamespace(context.Background(), "acme", "app", 0); err != nil {
		t.Fatal(err)
	}
	exp.Reset()
	old := storage.MakeVersion(1, 0)
	if _, err := s.Put(context.Background(), kv, strings.NewReader(`{}`), storage.PutOptions{Size: 2, Version: old}); err == nil {
		t.Fatal("a write older than the tombstone was accepted")
	}
	for _, sp := range exp.GetSpans() {
		if sp.Status.Code == codes.Error {
			t.Errorf("stale write span %q has an error status", sp.Name)
		}
	}
}

// TestNoTracerNoSpans: without a tracer provider OnCommit sees no span context.
func TestNoTracerNoSpans(t *testing.T) {
	var seen []trace.SpanContext
	opts := testOpts(t)
	opts.Observer = commitFunc(func(_ *meta.Batch, c storage.Change) error {
		seen = append(seen, c.Trace)
		return nil
	})
	s := openStore(t, opts)
	put(t, s, cas("plain"), []byte("x"))
	if len(seen) != 1 || seen[0].IsValid() {
		t.Fatalf("OnCommit saw %v, want one invalid span context", seen)
	}
}
