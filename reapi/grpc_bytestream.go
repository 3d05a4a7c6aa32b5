package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"

	"github.com/kuracache/kura/storage"
)

// readChunkBytes is the most data one ReadResponse carries (1 MiB, well under the 4 MiB
// message limit clients apply by default).
const readChunkBytes = 1 << 20

// byteStreamServer implements google.bytestream.ByteStream over the CAS.
type byteStreamServer struct {
	s *Server
}

var _ bspb.ByteStreamServer = (*byteStreamServer)(nil)

// Read streams a blob (or its zstd compression) in chunks of at most readChunkBytes; the
// blob is never held in memory as a whole.
func (b *byteStreamServer) Read(req *bspb.ReadRequest, stream bspb.ByteStream_ReadServer) (err error) {
	ctx := stream.Context()
	rn, err := parseReadResourceName(req.GetResourceName())
	if err != nil {
		return toStatus(err)
	}
	d, offset, limit := rn.digest, req.GetReadOffset(), req.GetReadLimit()
	switch {
	case limit < 0:
		return toStatus(fmt.Errorf("%w: read_limit %d is negative", errInvalidArgument, limit))
	case offset < 0 || offset > d.size:
		return toStatus(fmt.Errorf("%w: read_offset %d is outside blob %s", errOutOfRange, offset, d))
	case rn.compressor != repb.Compressor_IDENTITY && limit != 0:
		return toStatus(fmt.Errorf("%w: read_limit must be 0 for compressed-blobs reads (it would count compressed bytes)", errInvalidArgument))
	}
	length := d.size - offset
	if limit > 0 && limit < length {
		length = limit
	}
	served := int64(0)
	defer func() { b.s.metrics.read(rn.namespace(), storage.KindCAS, readResult(err), served) }()

	var body io.Reader
	if d.isEmpty() {
		body = eofReader{} // always present, never stored
	} else {
		r, err := b.s.store.Open(ctx, casKey(b.s.tenant(), rn.namespace(), d), offset, length)
		if err != nil {
			return toStatus(fmt.Errorf("open blob %s: %w", d, err))
		}
		defer func() { _ = r.Close() }()
		if err := checkStoredSize(r.Info(), d); err != nil {
			return toStatus(err)
		}
		body = r
	}
	if rn.compressor == repb.Compressor_IDENTITY {
		served, err = sendChunks(stream, body, length)
	} else {
		served, err = b.sendCompressed(stream, body, length)
	}
	if err != nil {
		return toStatus(fmt.Errorf("read blob %s: %w", d, err))
	}
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// sendChunks sends exactly length bytes of body. Each chunk is read straight into a pooled
// buffer whose reference goes to gRPC with the message (readcodec.go): the transport gives it
// back to the pool once the bytes are on the connection, so no buffer is reused while gRPC
// may still hold it.
func sendChunks(stream bspb.ByteStream_ReadServer, body io.Reader, length int64) (int64, error) {
	sent := int64(0)
	for sent < length {
		n := int(min(length-sent, readChunkBytes))
		b := chunkPool.Get(n)
		if _, err := io.ReadFull(body, *b); err != nil {
			chunkPool.Put(b)
			return sent, fmt.Errorf("read from the store at byte %d: %w", sent, err)
		}
		if err := stream.SendMsg(&readChunk{data: mem.NewBuffer(b, chunkPool)}); err != nil {
			return sent, fmt.Errorf("send: %w", err)
		}
		sent += int64(n)
	}
	return sent, nil
}

// sendCompressed streams length bytes of body through a zstd encoder into ReadResponses.
func (b *byteStreamServer) sendCompressed(stream bspb.ByteStream_ReadServer, body io.Reader, length int64) (int64, error) {
	w := &chunkWriter{stream: stream}
	enc, err := b.s.codecs.encoder(w)
	if err != nil {
		return 0, err
	}
	defer b.s.codecs.putEncoder(enc)
	n, err := io.Copy(enc, io.LimitReader(body, length))
	if err != nil {
		_ = enc.Close()
		return n, fmt.Errorf("compress: %w", err)
	}
	if n != length {
		_ = enc.Close()
		return n, fmt.Errorf("the store returned %d bytes instead of %d", n, length)
	}
	if err := enc.Close(); err != nil {
		return n, fmt.Errorf("compress: %w", err)
	}
	return n, w.flush()
}

// chunkWriter collects compressed output into messages of readChunkBytes.
type chunkWriter struct {
	stream bspb.ByteStream_ReadServer
	buf    []byte
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = make([]byte, 0, readChunkBytes)
		}
		n := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:n]...)
		p, written = p[n:], written+n
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// flush sends what is buffered; a compressed stream always yields at least one message.
func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.stream.Send(&bspb.ReadResponse{Data: w.buf})
	w.buf = nil
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// Write receives a blob and streams it into Store.Put, which hashes while it stores and
// commits only if size and SHA-256 match. Put reads the stream itself (uploadBody), in the
// handler's goroutine, so memory use does not depend on the blob's size and the data goes
// from gRPC's receive buffers to the store without a copy of ours.
func (b *byteStreamServer) Write(stream bspb.ByteStream_WriteServer) (err error) {
	ctx := stream.Context()
	first := &writeChunk{}
	defer first.free()
	err = stream.RecvMsg(first)
	if errors.Is(err, io.EOF) {
		return toStatus(fmt.Errorf("%w: the write stream carried no request", errInvalidArgument))
	}
	if err != nil {
		return toStatus(fmt.Errorf("receive the first write request: %w", err))
	}
	rn, err := parseWriteResourceName(first.resourceName)
	if err != nil {
		b.s.metrics.write(storage.KindCAS, resultRejected, 0)
		return toStatus(err)
	}
	d, compressed := rn.digest, rn.compressor != repb.Compressor_IDENTITY
	created := false
	defer func() {
		stored := int64(0)
		if created {
			stored = d.size
		}
		b.s.metrics.write(storage.KindCAS, writeResult(err, created), stored)
	}()
	if limit := b.s.cfg.MaxCASBlobSizeBytes; limit > 0 && d.size > limit {
		return toStatus(fmt.Errorf("%w: blob %s is larger than max_cas_blob_size_bytes (%d)", errInvalidArgument, d, limit))
	}

	// A blob that is already here completes the upload at once, without reading the rest.
	done := &bspb.WriteResponse{CommittedSize: d.size}
	if compressed {
		done.CommittedSize = -1 // REAPI: -1 for a compressed upload that was already complete
	}
	if d.isEmpty() {
		return stream.SendAndClose(done)
	}
	key := casKey(b.s.tenant(), rn.namespace(), d)
	switch info, err := b.s.local.Stat(ctx, key); { // local only: an upload never waits on peers
	case err == nil:
		if err := checkExisting(storage.PutResult{Info: info}, d); err != nil {
			return toStatus(err)
		}
		return stream.SendAndClose(done)
	case !errors.Is(err, storage.ErrNotFound):
		return toStatus(fmt.Errorf("look up blob %s: %w", d, err))
	}

	if rws, ok := b.s.resumable(rn); ok {
		resp, stored, err := b.writeResumable(ctx, stream, first, rn, key, rws)
		if err != nil {
			return toStatus(err)
		}
		created = stored
		return stream.SendAndClose(resp)
	}
	if first.writeOffset != 0 {
		return toStatus(fmt.Errorf("%w: write_offset %d: only uncompressed uploads of blobs of at least %d bytes are resumable here; start this one at 0 (QueryWriteStatus reports NOT_FOUND for it)",
			errInvalidArgument, first.writeOffset, max(b.s.cfg.ResumableMinBytes, 0)))
	}
	received, res, err := b.receive(ctx, stream, first, rn, key)
	if err != nil {
		return toStatus(err)
	}
	if !res.Created {
		// Someone else stored it meanwhile (or a tombstone made it moot): complete as present.
		if err := checkExisting(res, d); err != nil {
			return toStatus(err)
		}
		return stream.SendAndClose(done)
	}
	created = true
	if compressed {
		// Offsets of compressed uploads count compressed bytes after the first request.
		return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: received})
	}
	return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: d.size})
}

// receive stores the stream's data with Store.Put and returns the number of bytes received
// (compressed bytes for compressed uploads) and the Put's result. first is the stream's
// first request, already received; the next ones are decoded into it.
func (b *byteStreamServer) receive(ctx context.Context, stream grpc.ServerStream, first *writeChunk,
	rn resourceName, key storage.Key) (int64, storage.PutResult, error) {
	d, compressed := rn.digest, rn.compressor != repb.Compressor_IDENTITY
	upload := newUploadBody(stream, first, d, compressed, 0)
	var body io.Reader = upload
	var tracked *trackingReader
	if compressed {
		dec, err := b.s.codecs.decoder(upload)
		if err != nil {
			return 0, storage.PutResult{}, err
		}
		defer b.s.codecs.putDecoder(dec)
		tracked = &trackingReader{r: &boundedReader{r: dec, left: d.size}}
		body = tracked
	}
	res, err := putResult(b.s.local.Put(ctx, key, verifyBody(d, body), b.s.putOptions(d)))
	switch {
	case upload.err != nil:
		// The stream failed or broke the protocol: that, not what Put made of it, is the answer.
		return upload.received, storage.PutResult{}, upload.err
	case err != nil && tracked != nil && tracked.err != nil:
		return upload.received, storage.PutResult{}, fmt.Errorf("blob %s: %w", d, dataError(tracked.err))
	case err != nil:
		return upload.received, storage.PutResult{}, fmt.Errorf("store blob %s: %w", d, err)
	}
	return upload.received, res, nil
}

// uploadBody is a ByteStream Write's data as Store.Put reads it: the requests are received
// as the store asks for more, checked as they arrive (offsets, the resource name, the
// declared size), and their data handed over in gRPC's own buffers (storage.ChunkReader).
// The data ends at finish_write or at the end of the stream; a stream closed early is
// judged by the store's size and hash checks.
type uploadBody struct {
	stream     grpc.ServerStream
	req        *writeChunk // the request whose data is being read
	name       string      // the first request's resource name
	d          digest
	compressed bool

	pending  [][]byte // data of req not yet handed out
	received int64    // offset of the data received so far (first write_offset + data bytes)
	last     bool     // req was the last request (finish_write or end of stream)
	finished bool     // the client sent finish_write
	err      error    // the stream's failure or a broken rule; sticky
}

var _ storage.ChunkReader = (*uploadBody)(nil)

// newUploadBody starts at offset start: 0, or where a resumed upload continues.
func newUploadBody(stream grpc.ServerStream, first *writeChunk, d digest, compressed bool, start int64) *uploadBody {
	u := &uploadBody{stream: stream, req: first, name: first.resourceName, d: d, compressed: compressed, received: start}
	u.err = u.accept()
	return u
}

// NextChunk implements storage.ChunkReader.
func (u *uploadBody) NextChunk() ([]byte, error) {
	for len(u.pending) == 0 {
		if err := u.fill(); err != nil {
			return nil, err
		}
	}
	p := u.pending[0]
	u.pending = u.pending[1:]
	return p, nil
}

func (u *uploadBody) Read(p []byte) (int, error) {
	for len(u.pending) == 0 {
		if err := u.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, u.pending[0])
	if u.pending[0] = u.pending[0][n:]; len(u.pending[0]) == 0 {
		u.pending = u.pending[1:]
	}
	return n, nil
}

// fill receives the next request (which frees the buffers of the previous one).
func (u *uploadBody) fill() error {
	if u.err != nil {
		return u.err
	}
	if u.last {
		return io.EOF
	}
	err := u.stream.RecvMsg(u.req)
	if errors.Is(err, io.EOF) {
		u.last = true
		return io.EOF
	}
	if err != nil {
		u.err = fmt.Errorf("receive write request: %w", err)
		return u.err
	}
	if err := u.accept(); err != nil {
		u.err = err
		return err
	}
	return nil
}

// accept checks the request just received and queues its data.
func (u *uploadBody) accept() error {
	req := u.req
	if req.resourceName != "" && req.resourceName != u.name {
		return fmt.Errorf("%w: resource_name changed within the write stream (from %q to %q)",
			errInvalidArgument, truncate(u.name), truncate(req.resourceName))
	}
	if req.writeOffset != u.received {
		return fmt.Errorf("%w: write_offset %d does not continue the stream at %d", errInvalidArgument, req.writeOffset, u.received)
	}
	n := req.dataLen()
	if !u.compressed && u.received+n > u.d.size {
		return fmt.Errorf("%w: blob %s: more data than its size (%d bytes received)", errInvalidArgument, u.d, u.received+n)
	}
	u.pending = req.data
	u.received += n
	u.last = req.finishWrite
	u.finished = u.finished || req.finishWrite
	return nil
}

// QueryWriteStatus reports a complete blob as committed, and an unfinished resumable upload
// (writeResumable) by its durable size. Anything else is NOT_FOUND: the client restarts at
// offset 0.
func (b *byteStreamServer) QueryWriteStatus(ctx context.Context, req *bspb.QueryWriteStatusRequest) (*bspb.QueryWriteStatusResponse, error) {
	rn, err := parseWriteResourceName(req.GetResourceName())
	if err != nil {
		return nil, toStatus(err)
	}
	d := rn.digest
	committed := d.size
	if rn.compressor != repb.Compressor_IDENTITY {
		committed = -1
	}
	if d.isEmpty() {
		return &bspb.QueryWriteStatusResponse{CommittedSize: committed, Complete: true}, nil
	}
	key := casKey(b.s.tenant(), rn.namespace(), d)
	info, err := b.s.local.Stat(ctx, key)
	if err == nil {
		err = checkStoredSize(info, d)
	}
	if err == nil {
		return &bspb.QueryWriteStatusResponse{CommittedSize: committed, Complete: true}, nil
	}
	if rws, ok := b.s.resumable(rn); ok && errors.Is(err, storage.ErrNotFound) {
		n, serr := rws.WriteStatus(ctx, key, rn.uploadID, d.size)
		if serr == nil {
			return &bspb.QueryWriteStatusResponse{CommittedSize: n}, nil
		}
		if !errors.Is(serr, storage.ErrUploadNotFound) {
			return nil, toStatus(fmt.Errorf("write status of blob %s: %w", d, serr))
		}
	}
	return nil, toStatus(fmt.Errorf("write status of blob %s: %w (no unfinished upload of it is kept; write from offset 0)", d, err))
}
