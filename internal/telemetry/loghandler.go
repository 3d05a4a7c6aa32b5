package telemetry

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute names of the correlation fields ContextHandler adds.
const (
	LogRequestID = "request_id"
	LogTraceID   = "trace_id"
	LogSpanID    = "span_id"
)

// ContextHandler enriches every record logged with a context (Logger.InfoContext and the
// like) with the request id (request_id) and the active span's trace_id and span_id that the
// context carries, so a log line can be found from a trace and the other way round. Records
// logged without a context, or with one that carries neither, pass through unchanged.
type ContextHandler struct {
	inner slog.Handler
}

var _ slog.Handler = ContextHandler{}

// NewContextHandler wraps inner.
func NewContextHandler(inner slog.Handler) ContextHandler { return ContextHandler{inner: inner} }

// Enabled implements slog.Handler.
func (h ContextHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (h ContextHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx == nil {
		return h.inner.Handle(ctx, r)
	}
	id := RequestID(ctx)
	sc := trace.SpanContextFromContext(ctx)
	if id == "" && !sc.IsValid() {
		return h.inner.Handle(ctx, r)
	}
	// The record may share its attribute storage with the caller's copy: add to a clone.
	r = r.Clone()
	if id != "" {
		r.AddAttrs(slog.String(LogRequestID, id))
	}
	if sc.IsValid() {
		r.AddAttrs(slog.String(LogTraceID, sc.TraceID().String()), slog.String(LogSpanID, sc.SpanID().String()))
	}
	return h.inner.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h ContextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return ContextHandler{inner: h.inner.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler. The correlation fields of a logger with a group land in
// that group; Kura's loggers use none.
func (h ContextHandler) WithGroup(name string) slog.Handler {
	return ContextHandler{inner: h.inner.WithGroup(name)}
}
