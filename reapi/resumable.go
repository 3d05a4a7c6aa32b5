package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"

	"github.com/kuracache/kura/storage"
)

// resumable returns the store's resumable writes when the upload named by rn is one: an
// uncompressed upload (the offsets of compressed ones count compressed bytes, and a zstd
// decoder's state cannot be kept) of a blob of at least Config.ResumableMinBytes, on a local
// store that keeps resumable writes.
func (s *Server) resumable(rn resourceName) (storage.ResumableWrites, bool) {
	if rn.compressor != repb.Compressor_IDENTITY || s.cfg.ResumableMinBytes < 0 || rn.digest.size < s.cfg.ResumableMinBytes {
		return nil, false
	}
	rws, ok := s.local.(storage.ResumableWrites)
	return rws, ok
}

// writeResumable receives an upload into the store's staged file for it, starting at the
// durable size of an earlier, broken stream of the same resource name (or at 0, which drops
// what was staged). When the stream breaks, the bytes received are made durable
// (Checkpoint) so QueryWriteStatus reports them and a new Write continues there. A stream
// closed without finish_write before the end is answered with the bytes committed, as
// ByteStream prescribes. Once every byte is there the blob is stored through the store's
// verified write; bad data discards the upload. created reports whether this call stored it.
func (b *byteStreamServer) writeResumable(ctx context.Context, stream grpc.ServerStream, first *writeChunk,
	rn resourceName, key storage.Key, rws storage.ResumableWrites) (_ *bspb.WriteResponse, created bool, err error) {
	d := rn.digest
	w, err := rws.ResumeWrite(ctx, key, rn.uploadID, d.size)
	if err != nil {
		return nil, false, fmt.Errorf("resume the upload of blob %s: %w", d, err)
	}
	defer func() {
		if cerr := w.Close(); cerr != nil {
			b.s.log.WarnContext(ctx, "close a resumable upload", "blob", d.String(), "err", cerr)
		}
	}()
	// Another Write of the same name may have completed it while this one waited for the hold.
	if info, err := b.s.local.Stat(ctx, key); err == nil && checkExisting(storage.PutResult{Info: info}, d) == nil {
		if err := w.Discard(ctx); err != nil {
			b.s.log.WarnContext(ctx, "discard the upload of a stored blob", "blob", d.String(), "err", err)
		}
		return &bspb.WriteResponse{CommittedSize: d.size}, false, nil
	}
	switch off := first.writeOffset; {
	case off == 0 && w.Offset() > 0:
		if err := w.Restart(ctx); err != nil {
			return nil, false, fmt.Errorf("restart the upload of blob %s: %w", d, err)
		}
	case off != w.Offset():
		return nil, false, fmt.Errorf("%w: write_offset %d: %d bytes of this upload are committed (QueryWriteStatus); continue at %d or start again at 0",
			errInvalidArgument, off, w.Offset(), w.Offset())
	}
	upload := newUploadBody(stream, first, d, false, first.writeOffset)
	var writeErr error
	for {
		chunk, rerr := upload.NextChunk()
		if len(chunk) > 0 {
			if _, writeErr = w.Write(chunk); writeErr != nil {
				break
			}
		}
		if rerr != nil {
			break // io.EOF, or upload.err
		}
	}
	// The stream's own context may be gone (a client that cancelled): keeping its bytes
	// must not depend on it.
	keep := func() {
		if err := w.Checkpoint(context.WithoutCancel(ctx)); err != nil {
			b.s.log.WarnContext(ctx, "keep the bytes of a broken upload", "blob", d.String(), "err", err)
		}
	}
	switch {
	case upload.err != nil:
		keep()
		return nil, false, upload.err
	case writeErr != nil:
		keep()
		return nil, false, fmt.Errorf("stage blob %s: %w", d, writeErr)
	case w.Offset() < d.size && upload.finished:
		if err := w.Discard(context.WithoutCancel(ctx)); err != nil {
			b.s.log.WarnContext(ctx, "discard a short upload", "blob", d.String(), "err", err)
		}
		return nil, false, fmt.Errorf("%w: blob %s: finish_write after %d bytes", errInvalidArgument, d, w.Offset())
	case w.Offset() < d.size:
		keep()
		return &bspb.WriteResponse{CommittedSize: w.Offset()}, false, nil
	}
	res, err := putResult(w.Complete(ctx, b.s.putOptions(d), func(r io.Reader) io.Reader { return verifyBody(d, r) }))
	switch {
	case err != nil && (errors.Is(err, storage.ErrDigestMismatch) || errors.Is(err, errInvalidArgument)):
		if derr := w.Discard(context.WithoutCancel(ctx)); derr != nil {
			b.s.log.WarnContext(ctx, "discard a bad upload", "blob", d.String(), "err", derr)
		}
		return nil, false, fmt.Errorf("blob %s: %w", d, err)
	case err != nil:
		// No room, say: the bytes stay, and a Write at offset size completes them later.
		keep()
		return nil, false, fmt.Errorf("store blob %s: %w", d, err)
	case !res.Created:
		if err := checkExisting(res, d); err != nil {
			return nil, false, err
		}
	}
	return &bspb.WriteResponse{CommittedSize: d.size}, res.Created, nil
}
