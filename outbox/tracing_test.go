package outbox

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
)

var commitSpan = trace.NewSpanContext(trace.SpanContextConfig{
	TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
	SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
	TraceFlags: trace.FlagsSampled,
})

func TestEntryTraceContext(t *testing.T) {
	for _, e := range sampleEntries() {
		e.Trace = commitSpan
		b, err := AppendEntry(nil, e)
		if err != nil {
			t.Fatal(err)
		}
		plain := e
		plain.Trace = trace.SpanContext{}
		pb, _ := AppendEntry(nil, plain)
		if b[0] != entryFormatV2 || pb[0] != entryFormatV1 || len(b) != len(pb)+traceContextBytes {
			t.Fatalf("%s: traced %d bytes (format %d), untraced %d (format %d)", e.describe(), len(b), b[0], len(pb), pb[0])
		}
		got, err := DecodeEntry(b)
		if err != nil {
			t.Fatalf("decode %s: %v", e.describe(), err)
		}
		if got.Trace.TraceID() != commitSpan.TraceID() || got.Trace.SpanID() != commitSpan.SpanID() ||
			!got.Trace.IsSampled() || !got.Trace.IsRemote() || got.Key != e.Key || got.Version != e.Version {
			t.Fatalf("round trip of %s: got %+v", e.describe(), got)
		}
		// Damage in the trace context is caught like any other.
		for i := range b {
			d := bytes.Clone(b)
			d[i] ^= 0x10
			if _, err := DecodeEntry(d); err == nil {
				t.Fatalf("%s: byte %d flipped and still decoded", e.describe(), i)
			}
		}
	}
}

// TestEntryFormatV1Unchanged: an untraced entry encodes exactly as before trace contexts
// existed, so entries already on disk decode, and a node with tracing off writes entries an
// older version reads.
func TestEntryFormatV1Unchanged(t *testing.T) {
	// Written by the encoder before format 2 existed.
	const v1 = "0101878080c0b39a98dd01f6e1998dcc6e05616c6963650361707003636173086465616462656566a894e5e8"
	e := sampleEntries()[0]
	e.Key.Tenant = "alice"
	b, err := AppendEntry(nil, e)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != v1 {
		t.Fatalf("untraced entry encodes to %s, want the V1 bytes %s", got, v1)
	}
	raw, _ := hex.DecodeString(v1)
	got, err := DecodeEntry(raw)
	if err != nil || got.Trace.IsValid() || got.Key != e.Key {
		t.Fatalf("V1 entry decodes to %+v, %v", got, err)
	}
}

// spanSender records the span context each push was made under.
type spanSender struct {
	fakeSender
	mu  sync.Mutex
	ctx []trace.SpanContext
}

func (s *spanSender) PushObject(ctx context.Context, addr string, info storage.Info, body io.Reader) (bool, error) {
	s.mu.Lock()
	s.ctx = append(s.ctx, trace.SpanContextFromContext(ctx))
	s.mu.Unlock()
	return s.fakeSender.PushObject(ctx, addr, info, body)
}

// tracedOutbox wires storage/local and the outbox as internal/app does, both tracing to an
// in-memory exporter, with one target "b" served by sender, and runs the outbox until the
// test ends.
func tracedOutbox(t *testing.T, sender Sender) (*Outbox, *local.Store, *tracetest.InMemoryExporter, *sdktrace.TracerProvider) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	dir := openDataDir(t)
	ob, err := New(Config{DB: dir.DB(), Sender: sender, Registerer: prometheus.NewRegistry(), TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	st := openLocalStore(t, local.Options{Dir: dir, Registerer: prometheus.NewRegistry(), TracerProvider: tp, Observer: ob})
	ob.SetTargets([]Target{{Name: "b", Addr: "B"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ob.Run(ctx, st) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		_ = tp.Shutdown(context.Background())
	})
	return ob, st, exp, tp
}

// waitForSpan waits until exp holds a span called name.
func waitForSpan(t *testing.T, exp *tracetest.InMemoryExporter, name string) {
	t.Helper()
	testsupport.WaitFor(t, "the "+name+" span", 20*time.Second, func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == name {
				return true
			}
		}
		return false
	})
}

// TestPushContinuesTheCommitTrace wires storage/local and the outbox as internal/app does: the
// push of a traced write is a child of the write's commit span, and the Sender is called
// under the push span (so the peer client's span and the peer's server span follow).
func TestPushContinuesTheCommitTrace(t *testing.T) {
	sender := &spanSender{}
	sender.behave = func(context.Context, string, delivery) (bool, error) { return true, nil }
	_, st, exp, tp := tracedOutbox(t, sender)

	reqCtx, req := tp.Tracer("test").Start(context.Background(), "PUT /api/cache/gradle/{cache_key}")
	if _, err := st.Put(reqCtx, casKey("traced"), bytes.NewReader([]byte("body")), storage.PutOptions{Size: 4}); err != nil {
		t.Fatal(err)
	}
	req.End()
	waitForSpan(t, exp, pushSpanName)
	var commit, push tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		switch s.Name {
		case "storage.commit":
			commit = s
		case pushSpanName:
			push = s
		}
	}
	if push.SpanContext.TraceID() != req.SpanContext().TraceID() || push.Parent.SpanID() != commit.SpanContext.SpanID() {
		t.Fatalf("push span in trace %s under %s, want the request's trace %s under the commit %s",
			push.SpanContext.TraceID(), push.Parent.SpanID(), req.SpanContext().TraceID(), commit.SpanContext.SpanID())
	}
	if push.Status.Code == codes.Error {
		t.Errorf("push span status %v", push.Status)
	}
	attrs := map[string]string{}
	for _, kv := range push.Attributes {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	if attrs["kura.peer.name"] != "b" || attrs["kura.outbox.op"] != "object" || attrs["kura.outbox.result"] != "applied" || attrs["kura.storage.kind"] != "cas" {
		t.Errorf("push span attributes %v", attrs)
	}
	sender.mu.Lock()
	defer sender.mu.Unlock()
	if len(sender.ctx) != 1 || sender.ctx[0].SpanID() != push.SpanContext.SpanID() {
		t.Fatalf("the sender was called under %v, want the push span %s", sender.ctx, push.SpanContext.SpanID())
	}
}

// spanBatchSender acknowledges every batched object and records the span each call was made
// under.
type spanBatchSender struct {
	spanSender
	batchCtx []trace.SpanContext
	items    []int
}

func (s *spanBatchSender) PushBatch(ctx context.Context, addr string, objs []storage.PutItem) ([]storage.PutItemResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batchCtx = append(s.batchCtx, trace.SpanContextFromContext(ctx))
	s.items = append(s.items, len(objs))
	return make([]storage.PutItemResult, len(objs)), nil
}

// TestBatchSpanJoinsThePushes: writes queued while dispatch is paused travel in one PushBatch.
// Each keeps its own push span under its own commit; the call's span is a child of the first
// write's push span (a lone write stays one tree) and links every push it carried, and the
// sender is called under the call's span.
func TestBatchSpanJoinsThePushes(t *testing.T) {
	sender := &spanBatchSender{}
	ob, st, exp, tp := tracedOutbox(t, sender)
	ob.SetPaused(true)
	const writes = 3
	for i := range writes {
		reqCtx, req := tp.Tracer("test").Start(context.Background(), "PUT")
		if _, err := st.Put(reqCtx, casKey(string(rune('a'+i))), bytes.NewReader([]byte("body")), storage.PutOptions{Size: 4}); err != nil {
			t.Fatal(err)
		}
		req.End()
	}
	ob.SetPaused(false)
	waitForSpan(t, exp, batchSpanName)
	var (
		batch  tracetest.SpanStub
		pushes = map[trace.SpanID]tracetest.SpanStub{}
		commit = map[trace.SpanID]tracetest.SpanStub{}
	)
	for _, s := range exp.GetSpans() {
		switch s.Name {
		case batchSpanName:
			batch = s
		case pushSpanName:
			pushes[s.SpanContext.SpanID()] = s
		case "storage.commit":
			commit[s.SpanContext.SpanID()] = s
		}
	}
	if len(pushes) != writes || len(batch.Links) != writes {
		t.Fatalf("%d push spans, batch span links %d; want %d of each", len(pushes), len(batch.Links), writes)
	}
	for _, l := range batch.Links {
		push, ok := pushes[l.SpanContext.SpanID()]
		if !ok {
			t.Fatalf("batch span links %s, not a push span", l.SpanContext.SpanID())
		}
		if _, ok := commit[push.Parent.SpanID()]; !ok {
			t.Errorf("push span %s is not under a commit span", push.SpanContext.SpanID())
		}
	}
	if parent, ok := pushes[batch.Parent.SpanID()]; !ok || parent.SpanContext.TraceID() != batch.SpanContext.TraceID() {
		t.Errorf("batch span's parent %s is not one of the push spans", batch.Parent.SpanID())
	}
	sender.mu.Lock()
	defer sender.mu.Unlock()
	if len(sender.batchCtx) != 1 || sender.batchCtx[0].SpanID() != batch.SpanContext.SpanID() || sender.items[0] != writes {
		t.Fatalf("PushBatch calls under %v carrying %v objects; want one call of %d under the batch span %s",
			sender.batchCtx, sender.items, writes, batch.SpanContext.SpanID())
	}
	attrs := map[string]string{}
	for _, kv := range batch.Attributes {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	if attrs["kura.peer.name"] != "b" || attrs["kura.outbox.batch_items"] != "3" {
		t.Errorf("batch span attributes %v", attrs)
	}
}
