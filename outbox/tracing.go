package outbox

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the push spans.
const tracerName = "github.com/kuracache/kura/outbox"

// pushSpanName names the span of one delivery attempt of one entry to one peer.
const pushSpanName = "outbox.push"

// batchSpanName names the span of one PushBatch call, which carries many entries' pushes.
const batchSpanName = "outbox.push_batch"

// resultInterrupted is the push span's result when the worker stopped mid-push (no metric
// counts it: it is neither a delivery nor a failure of the peer).
const resultInterrupted = "interrupted"

// Span attributes of a push (kura.outbox.*, kura.peer.name).
const (
	attrPeer    = attribute.Key("kura.peer.name")
	attrOp      = attribute.Key("kura.outbox.op")
	attrSeq     = attribute.Key("kura.outbox.seq")
	attrAttempt = attribute.Key("kura.outbox.attempt")
	attrKind    = attribute.Key("kura.storage.kind")
	attrResult  = attribute.Key("kura.outbox.result")
	attrQueued  = attribute.Key("kura.outbox.queued_ms") // from the commit to this attempt
	attrItems   = attribute.Key("kura.outbox.batch_items")
)

// startPush opens the span of one push. The entry's trace context (the commit's span, stored
// with the entry) is its parent, so the push — made later, by another goroutine, perhaps by
// another process after a restart — continues the client's trace; the peer client's span
// and the peer's server span hang below it. An entry without one (tracing was off when it
// was written) starts a trace of its own.
//
// Its kind is internal, not client: the RPC's client span is the peer client's, one level
// below, and a second client span would count every push twice in service graphs.
func (o *Outbox) startPush(ctx context.Context, p *peer, it *item, attempt int) (context.Context, trace.Span) {
	if it.entry.Trace.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, it.entry.Trace)
	}
	ctx, span := o.tracer.Start(ctx, pushSpanName)
	if span.IsRecording() {
		attrs := []attribute.KeyValue{
			attrPeer.String(p.name), attrOp.String(it.entry.Op.String()),
			attrSeq.Int64(int64(it.seq)), attrAttempt.Int(attempt + 1),
			attrQueued.Int64(o.now().Sub(it.entry.EnqueuedAt).Milliseconds()),
		}
		if it.entry.Op == OpObject {
			attrs = append(attrs, attrKind.String(string(it.entry.Key.Kind)))
		}
		span.SetAttributes(attrs...)
	}
	return ctx, span
}

// endPush records the push's result and ends its span: a failure, and a write the peer
// refused for good, are errors of the span; a peer that had the object or something newer
// (skipped) is not.
func endPush(span trace.Span, result string, err error) {
	defer span.End()
	if !span.IsRecording() {
		return
	}
	if result != "" {
		span.SetAttributes(attrResult.String(result))
	}
	if err != nil && result != resultSkipped {
		span.RecordError(err)
		span.SetStatus(codes.Error, "push failed")
	}
}

// startBatch opens the span of one PushBatch call. Its parent is the push span of the batch's
// first entry (ctx), so a write that travels alone — the usual case on a quiet cluster — is
// still one tree from the client to the peer's commit; every entry's push span, the first
// included, is also a link, so each entry's trace can be followed to the call that carried it
// and the call to all of them. The peer client's span and the peer's spans hang below it.
func (o *Outbox) startBatch(ctx context.Context, p *peer, links []trace.Link) (context.Context, trace.Span) {
	return o.tracer.Start(ctx, batchSpanName, trace.WithLinks(links...),
		trace.WithAttributes(attrPeer.String(p.name), attrItems.Int(len(links))))
}

// endBatch ends a batch span; a call that failed as a whole is the span's error (each entry's
// own outcome is on its push span).
func endBatch(span trace.Span, err error) {
	defer span.End()
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, "batch failed")
	}
}
