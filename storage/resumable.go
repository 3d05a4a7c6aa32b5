package storage

import (
	"context"
	"io"
)

// ResumableWrites keeps the bytes of uploads that have not finished (ByteStream Writes), so a
// client whose stream broke continues where the durable bytes end instead of sending them
// all again. Staged bytes are never served: the object exists only once Complete has stored
// it through the store's ordinary verified write. An upload left without a checkpoint for
// UploadExpiry is removed. Implementations are safe for concurrent use; an upload is held by
// one writer at a time.
type ResumableWrites interface {
	// ResumeWrite takes the upload of key named by the client's uploadID (an opaque token,
	// never a file name) and size (the object's declared size), creating it empty when it is
	// unknown or expired. The caller holds it until it closes the ResumableWrite; a second
	// caller waits for the first to close (or for ctx).
	ResumeWrite(ctx context.Context, key Key, uploadID string, size int64) (ResumableWrite, error)
	// WriteStatus returns the durable size of an unfinished upload (what the last Checkpoint
	// recorded), or an error wrapping ErrUploadNotFound when there is none.
	WriteStatus(ctx context.Context, key Key, uploadID string, size int64) (int64, error)
}

// ResumableWrite is one writer's hold of an unfinished upload. It is not safe for concurrent
// use.
type ResumableWrite interface {
	// Write appends at Offset. The bytes are durable only after Checkpoint. The disk's
	// reserve is kept while writing (ErrInsufficientStorage).
	io.Writer
	// Offset is where the next byte goes: the durable size when the upload was taken, then
	// what was written since.
	Offset() int64
	// Restart drops every staged byte, for a client starting again at offset 0.
	Restart(ctx context.Context) error
	// Checkpoint makes the bytes written so far durable and records their count, which
	// WriteStatus reports from then on (also after a restart of the process).
	Checkpoint(ctx context.Context) error
	// Complete stores the Offset staged bytes under the upload's key with Put(wrap(body),
	// opts) and, when that succeeds, forgets the upload. On error the upload stays as it was
	// (checkpoint it, or Discard it when the data was at fault).
	Complete(ctx context.Context, opts PutOptions, wrap func(io.Reader) io.Reader) (PutResult, error)
	// Discard forgets the upload and removes its bytes.
	Discard(ctx context.Context) error
	// Close releases the hold. Bytes written since the last Checkpoint may be lost.
	Close() error
}
