package reapi

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kuracache/kura/internal/telemetry"
)

// requestID returns ctx carrying the call's request id: the client's x-request-id metadata
// when sane, else a new one. It is sent back as header metadata (merged with any other
// headers the call sets) and added to the call's span. unaryObserve and streamObserve, the
// first interceptors, attach it, so the admission and policy interceptors, the handler and
// the final log line of the call all see it.
func requestID(ctx context.Context, setHeader func(metadata.MD) error) context.Context {
	// ValueFromIncomingContext reads the one key; FromIncomingContext would copy all of the
	// call's metadata (Bazel sends a dozen keys) on every call.
	var sent string
	if v := metadata.ValueFromIncomingContext(ctx, telemetry.RequestIDMetadata); len(v) > 0 {
		sent = v[0]
	}
	id := telemetry.AcceptRequestID(sent)
	_ = setHeader(metadata.Pairs(telemetry.RequestIDMetadata, id)) // fails only once headers went out
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String(telemetry.AttrRequestID, id))
	}
	return telemetry.WithRequestID(ctx, id)
}

// contextStream is a stream with a derived context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
