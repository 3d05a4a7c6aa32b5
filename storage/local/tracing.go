package local

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
)

// tracerName is the instrumentation scope of the commit spans.
const tracerName = "github.com/kuracache/kura/storage/local"

// Span attributes of a commit (kura.storage.*).
const (
	attrOp         = attribute.Key("kura.storage.op")         // put, delete_namespace
	attrKind       = attribute.Key("kura.storage.kind")       // the object's kind (put)
	attrSize       = attribute.Key("kura.storage.size")       // body bytes (put)
	attrInline     = attribute.Key("kura.storage.inline")     // kept in its manifest (keyvalue)
	attrReplicated = attribute.Key("kura.storage.replicated") // applied from a peer
	attrCreated    = attribute.Key("kura.storage.created")    // the write changed the store
)

// commitSpanName names the span of every durable commit: the segment record's fsync and the
// synced Pebble batch of a put, or the batch of a namespace tombstone. Its span context is
// what Change.Trace carries to the outbox, so a replication push continues the write's trace.
const commitSpanName = "storage.commit"

// startPutCommit opens the commit span of a put.
func (s *Store) startPutCommit(ctx context.Context, key storage.Key, size int64, inline, replicated bool) (context.Context, trace.Span) {
	ctx, span := s.tracer.Start(ctx, commitSpanName)
	if span.IsRecording() {
		span.SetAttributes(attrOp.String("put"), attrKind.String(string(key.Kind)), attrSize.Int64(size),
			attrInline.Bool(inline), attrReplicated.Bool(replicated))
	}
	return ctx, span
}

// endCommit records the outcome and ends the span. A stale write (older than what the store
// holds) is an answer, not a failure.
func endCommit(span trace.Span, created bool, err error) {
	defer span.End()
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attrCreated.Bool(created))
	if err != nil && !errors.Is(err, storage.ErrStale) {
		span.RecordError(err)
		span.SetStatus(codes.Error, "commit failed")
	}
}
