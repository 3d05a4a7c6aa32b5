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
// headers the call sets) and added to the call's span.
func requestID(ctx context.Context, setHeader func(metadata.MD) error) context.Context {
	var sent string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(telemetry.RequestIDMetadata); len(v) > 0 {
			sent = v[0]
		}
	}
	id := telemetry.AcceptRequestID(sent)
	_ = setHeader(metadata.Pairs(telemetry.RequestIDMetadata, id)) // fails only once headers went out
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String(telemetry.AttrRequestID, id))
	}
	return telemetry.WithRequestID(ctx, id)
}

// Where the request id is attached: a unary handler registered through Register runs the
// interceptors itself, after decoding the request, so Register's wrapper (outside them) gives
// unary calls their id; a stream handler runs inside the interceptors, so streamRequestID,
// the first stream interceptor of (*Server).ServerOptions, gives streams theirs. Either way
// the policy, the handler and the final log line of the call see it.

func unaryRequestID(ctx context.Context) context.Context {
	return requestID(ctx, func(md metadata.MD) error { return grpc.SetHeader(ctx, md) })
}

func streamRequestID(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &contextStream{ServerStream: ss, ctx: requestID(ss.Context(), ss.SetHeader)})
}

// contextStream is a stream with a derived context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
