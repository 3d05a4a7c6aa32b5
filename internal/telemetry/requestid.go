package telemetry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
)

// RequestIDHeader is the HTTP header, and RequestIDMetadata the gRPC metadata key, that carry
// a request's id in both directions: a client may send its own, and every answer carries the
// id the request was logged under.
const (
	RequestIDHeader   = "X-Request-Id"
	RequestIDMetadata = "x-request-id"
)

// MaxRequestIDBytes bounds a client's request id: longer ones are replaced, so a client
// cannot make every log line of its requests arbitrarily large.
const MaxRequestIDBytes = 128

type requestIDKey struct{}

// WithRequestID returns ctx carrying the request id id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id ctx carries, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// AcceptRequestID returns the id a client sent when it is sane (1 to MaxRequestIDBytes bytes
// of printable ASCII, no spaces: it lands in logs, headers and span attributes as is), and
// otherwise a new one.
func AcceptRequestID(sent string) string {
	if validRequestID(sent) {
		return sent
	}
	return NewRequestID()
}

func validRequestID(id string) bool {
	if id == "" || len(id) > MaxRequestIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// NewRequestID returns 16 random bytes in lowercase hex (32 characters), the width of a W3C
// trace id, so the two are equally easy to paste into a log search.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return hex.EncodeToString(b[:])
}
