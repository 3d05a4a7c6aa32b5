package peer

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/stats"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// ctxBackend records the span context each Put ran under on the receiving node.
type ctxBackend struct {
	*storagetest.Memory
	puts chan trace.SpanContext
}

func (b *ctxBackend) Put(ctx context.Context, k storage.Key, body io.Reader, o storage.PutOptions) (storage.PutResult, error) {
	b.puts <- trace.SpanContextFromContext(ctx)
	return b.Memory.Put(ctx, k, body, o)
}

// TestTraceCrossesThePlane: with the handlers internal/app installs (telemetry's
// InternalPlaneHandlers, one provider per node), a push made inside a trace is a client span
// on the origin and a server span on the peer, in the same trace, and the peer applies it
// under that server span; a call made outside any trace (anti-entropy) opens no span at all.
func TestTraceCrossesThePlane(t *testing.T) {
	originExp, peerExp := tracetest.NewInMemoryExporter(), tracetest.NewInMemoryExporter()
	originTP := sdktrace.NewTracerProvider(sdktrace.WithSyncer(originExp))
	peerTP := sdktrace.NewTracerProvider(sdktrace.WithSyncer(peerExp))
	defer func() { _ = originTP.Shutdown(context.Background()); _ = peerTP.Shutdown(context.Background()) }()
	clientHandler, _ := telemetry.InternalPlaneHandlers(originTP)
	_, serverHandler := telemetry.InternalPlaneHandlers(peerTP)
	backend := &ctxBackend{Memory: storagetest.NewMemory(), puts: make(chan trace.SpanContext, 4)}
	p := startPlane(t, backend,
		ServerConfig{StatsHandlers: []stats.Handler{serverHandler}},
		ClientConfig{StatsHandlers: []stats.Handler{clientHandler}})

	ctx, push := originTP.Tracer("test").Start(testCtx(t), "outbox.push")
	body := []byte("replicated")
	k := key(storage.KindCAS, "traced")
	if _, err := p.client.PushObject(ctx, p.addr, infoFor(k, body, version(1)), bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	push.End()
	applied := <-backend.puts

	waitEnded := func(exp *tracetest.InMemoryExporter, n int) tracetest.SpanStubs {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(exp.GetSpans()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d spans ended, want %d", len(exp.GetSpans()), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return exp.GetSpans()
	}
	origin := waitEnded(originExp, 2) // the client span, then the test's parent
	server := waitEnded(peerExp, 1)[0]
	client := origin[0]
	const method = "kura.internal.v1.Replication/PushObject"
	if client.Name != method || client.SpanKind != trace.SpanKindClient || client.Parent.SpanID() != push.SpanContext().SpanID() {
		t.Fatalf("origin span %q kind %v under %s, want the client span under the push", client.Name, client.SpanKind, client.Parent.SpanID())
	}
	if server.Name != method || server.SpanKind != trace.SpanKindServer || server.SpanContext.TraceID() != push.SpanContext().TraceID() ||
		server.Parent.SpanID() != client.SpanContext.SpanID() {
		t.Fatalf("peer span %q kind %v trace %s under %s, want the server span under the client span %s",
			server.Name, server.SpanKind, server.SpanContext.TraceID(), server.Parent.SpanID(), client.SpanContext.SpanID())
	}
	if applied.SpanID() != server.SpanContext.SpanID() {
		t.Fatalf("the peer applied the push under %s, want its server span %s", applied.SpanID(), server.SpanContext.SpanID())
	}

	// Background traffic outside a trace: no span on either node.
	originExp.Reset()
	peerExp.Reset()
	if _, _, err := p.client.BucketDigests(testCtx(t), p.addr, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := p.client.PushObject(testCtx(t), p.addr, infoFor(key(storage.KindCAS, "plain"), body, version(2)), bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if sc := <-backend.puts; sc.IsValid() {
		t.Fatalf("an untraced push was applied under span context %v", sc)
	}
	// A traced call after them: once its spans ended, any of theirs would have too.
	ctx, last := originTP.Tracer("test").Start(testCtx(t), "last")
	if _, _, err := p.client.BucketDigests(ctx, p.addr, 4); err != nil {
		t.Fatal(err)
	}
	last.End()
	if n, m := len(waitEnded(originExp, 2)), len(waitEnded(peerExp, 1)); n != 2 || m != 1 {
		t.Fatalf("untraced calls made spans: %d origin and %d peer spans, want only the last call's 2 and 1", n, m)
	}
}
