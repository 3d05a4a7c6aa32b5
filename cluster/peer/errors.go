package peer

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/storage"
)

// ErrMalformed reports a message that breaks the protocol (a header missing, out of place or
// with impossible fields). It is a bug in one of the two nodes, never a reason to retry.
var ErrMalformed = errors.New("malformed internal-plane message")

// errorDomain qualifies the reasons below in google.rpc.ErrorInfo details.
const errorDomain = "internal.kura.dev"

// mapping is the one table between storage errors and the internal plane's status codes.
// The reason travels in an ErrorInfo detail so the client recovers the exact sentinel even
// where several share a code. Order matters: the first match wins.
var mapping = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{storage.ErrNotFound, codes.NotFound, "NOT_FOUND"},
	// A corrupt record is dropped by the store: from now on it is simply missing here.
	{storage.ErrCorrupt, codes.NotFound, "NOT_FOUND"},
	{storage.ErrInvalidKey, codes.InvalidArgument, "INVALID_KEY"},
	{storage.ErrDigestMismatch, codes.InvalidArgument, "DIGEST_MISMATCH"},
	{storage.ErrTooLarge, codes.InvalidArgument, "TOO_LARGE"},
	{ErrMalformed, codes.InvalidArgument, "MALFORMED"},
	{errBadHeader, codes.InvalidArgument, "MALFORMED"},
	{storage.ErrInsufficientStorage, codes.ResourceExhausted, "INSUFFICIENT_STORAGE"},
	// The FD pool stayed exhausted (before ErrUnavailable: a busy store is not a down one).
	// The reason lets the pushing peer tell it from a full disk; both are retried.
	{storage.ErrBusy, codes.ResourceExhausted, "BUSY"},
	{storage.ErrUnavailable, codes.Unavailable, "UNAVAILABLE"},
}

// toStatus turns a handler's error into the status sent to the peer.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, m := range mapping {
		if errors.Is(err, m.err) {
			st := status.New(m.code, err.Error())
			if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: m.reason, Domain: errorDomain}); derr == nil {
				st = d
			}
			return st.Err()
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	// Errors that already carry a status (stream.Recv's, say) keep their code.
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return status.Error(st.Code(), err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// sentinelOf recovers the storage sentinel behind a status received from a peer: by reason
// when the peer attached one, else by the codes whose meaning is unambiguous (a transport
// failure is UNAVAILABLE without a reason). nil when there is none.
func sentinelOf(st *status.Status) error {
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != errorDomain {
			continue
		}
		for _, m := range mapping {
			if m.reason == info.GetReason() {
				return m.err
			}
		}
	}
	switch st.Code() {
	case codes.NotFound:
		return storage.ErrNotFound
	case codes.Unavailable:
		return storage.ErrUnavailable
	case codes.Canceled:
		return context.Canceled
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
	case codes.Unimplemented:
		// A peer running an older version that lacks the method (PushBatch): the caller
		// falls back to what that version has.
		return errors.ErrUnsupported
	}
	return nil
}

// RemoteError is what the Client returns when a call fails: it names the action and the
// peer, unwraps to the storage sentinel (errors.Is(err, storage.ErrNotFound), …, or
// context.Canceled / DeadlineExceeded) and still yields the gRPC code (status.Code(err)).
type RemoteError struct {
	Action string // "push object t/ns/kind/name", …
	Addr   string // the peer's internal address
	status *status.Status
	cause  error // the storage sentinel, or nil
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s on peer %s: %s: %s", e.Action, e.Addr, e.status.Code(), e.status.Message())
}

// Unwrap yields the storage sentinel, if any.
func (e *RemoteError) Unwrap() error { return e.cause }

// GRPCStatus lets status.Code and status.FromError see the peer's status.
func (e *RemoteError) GRPCStatus() *status.Status { return e.status }

// fromStatus wraps an error from a gRPC call.
func fromStatus(action, addr string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s on peer %s: %w", action, addr, err)
	}
	return &RemoteError{Action: action, Addr: addr, status: st, cause: sentinelOf(st)}
}

// localCode is the code a client-side failure is counted under in the metrics.
func localCode(err error) codes.Code {
	if errors.Is(err, storage.ErrCorrupt) {
		return codes.DataLoss // the peer sent a body that does not match its header
	}
	for _, m := range mapping {
		if errors.Is(err, m.err) {
			return m.code
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	return codes.Internal
}
