package reapi

import (
	"context"
	"errors"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/storage"
)

// Sentinels for problems found by this package; storage's sentinels cover the rest.
var (
	// errInvalidArgument: the request is malformed (bad digest, resource name, offset, …).
	errInvalidArgument = errors.New("invalid argument")
	// errOutOfRange: a read_offset outside the blob (ByteStream's own code for it).
	errOutOfRange = errors.New("out of range")
	// errServerLimit: a stored object is larger than this server reads into memory.
	errServerLimit = errors.New("server limit exceeded")
)

// codeOf maps an error to its gRPC code. It is the one place where storage errors become
// gRPC codes; every handler and every per-item status goes through it.
func codeOf(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, errInvalidArgument),
		errors.Is(err, storage.ErrInvalidKey),
		errors.Is(err, storage.ErrDigestMismatch),
		// REAPI convention: a blob over the server's size limit is INVALID_ARGUMENT.
		errors.Is(err, storage.ErrTooLarge):
		return codes.InvalidArgument
	case errors.Is(err, errOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, storage.ErrNotFound),
		// A corrupt record is dropped by the store and is, from now on, missing.
		errors.Is(err, storage.ErrCorrupt):
		return codes.NotFound
	case errors.Is(err, storage.ErrInsufficientStorage), errors.Is(err, errServerLimit),
		// The file-descriptor pool stayed exhausted: Bazel retries RESOURCE_EXHAUSTED with
		// backoff, which is what a transient overload wants.
		errors.Is(err, storage.ErrBusy):
		return codes.ResourceExhausted
	case errors.Is(err, storage.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	// Errors that already carry a status (from stream.Recv, say) keep their code.
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Code()
	}
	return codes.Internal
}

// toStatus turns err into a gRPC status error with the error's text as the message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err // already a status error, not wrapped
	}
	return status.Error(codeOf(err), err.Error())
}

// toStatusProto is toStatus for the per-item statuses of batch responses.
func toStatusProto(err error) *spb.Status {
	if err == nil {
		return &spb.Status{Code: int32(codes.OK)}
	}
	return &spb.Status{Code: int32(codeOf(err)), Message: err.Error()}
}
