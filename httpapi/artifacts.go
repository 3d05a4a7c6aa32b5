package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/analytics"
	"github.com/kuracache/kura/storage"
)

// putSpec qualifies one blob write.
type putSpec struct {
	limit   int64 // most body bytes accepted
	success int   // status of a stored write
	// exists is the status when an immutable key already exists (0: success). Nx wants 409.
	exists int
	// expected, when set, is the SHA-256 the body must hash to (Bazel CAS).
	expected *[32]byte
	// attributes are stored with the body (Turborepo's duration and tag).
	attributes storage.Attributes
	// answer writes a success or exists answer with its status; nil: no body. Turborepo
	// expects a JSON document with a 202.
	answer func(c echo.Context, status int) error
}

// reply writes a success or exists answer.
func (spec putSpec) reply(c echo.Context, status int) error {
	if spec.answer != nil {
		return spec.answer(c, status)
	}
	return c.NoContent(status)
}

// putBlob streams the request body into the store under t. Immutable kinds are checked first
// so an existing key is answered without reading a byte of the body (first writer wins).
func (s *Server) putBlob(c echo.Context, t target, spec putSpec) error {
	r := c.Request()
	ctx := r.Context()
	tooLarge := tooLargeMessage(spec.limit)
	existsStatus := spec.exists
	if existsStatus == 0 {
		existsStatus = spec.success
	}
	if err := checkDeclaredLength(r, spec.limit, tooLarge); err != nil {
		s.metrics.write(t.surface, resultRejected, 0)
		return err
	}
	if !t.kind.LastWriterWins() {
		// Local only: asking peers here would make every new key's PUT wait on them.
		_, err := s.local.Stat(ctx, t.key)
		if err == nil {
			s.metrics.write(t.surface, resultExists, 0)
			return spec.reply(c, existsStatus)
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return s.writeFailed(t, "inspect artifact", tooLarge, err)
		}
	}
	br := s.newBodyReader(c, spec.limit)
	res, err := s.local.Put(ctx, t.key, br, storage.PutOptions{
		ContentType:    contentType(r),
		Size:           declaredSize(r),
		Limit:          spec.limit,
		ExpectedSHA256: spec.expected,
		Attributes:     spec.attributes,
	})
	br.done()
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrStale):
		// A namespace clean newer than this write already covers it; to the client the write
		// succeeded and was deleted afterwards.
		s.metrics.write(t.surface, resultExists, 0)
		return spec.reply(c, spec.success)
	case br.tooLarge:
		s.metrics.write(t.surface, resultRejected, 0)
		return &apiError{status: http.StatusRequestEntityTooLarge, message: tooLarge}
	case br.clientErr != nil:
		s.metrics.write(t.surface, resultRejected, 0)
		return &apiError{status: http.StatusBadRequest, message: msgBodyReadFailure, cause: err}
	default:
		return s.writeFailed(t, "store artifact", tooLarge, err)
	}
	if !res.Created {
		// Another request stored the key between our Stat and Put. When this client's body
		// was received in full it still uploaded the artifact, so analytics count it.
		s.metrics.write(t.surface, resultExists, 0)
		if br.complete {
			s.recordTransfer(t, analytics.Upload, res.Info.Size)
		}
		return spec.reply(c, existsStatus)
	}
	s.metrics.write(t.surface, resultStored, res.Info.Size)
	s.recordTransfer(t, analytics.Upload, res.Info.Size)
	return spec.reply(c, spec.success)
}

// writeFailed maps a store error of a write and counts it.
func (s *Server) writeFailed(t target, action, tooLarge string, err error) error {
	return s.writeRefused(t.surface, storeError(action, tooLarge, err))
}

// writeRefused counts a write answered with ae: rejected when the client is at fault, error
// when we are.
func (s *Server) writeRefused(sf surface, ae *apiError) error {
	result := resultRejected
	if ae.status >= 500 {
		result = resultError
	}
	s.metrics.write(sf, result, 0)
	return ae
}

// readFailed maps a store error of a read and counts it: a missing object is a miss, a corrupt
// one (answered 404 as well) and a store failure are errors.
func (s *Server) readFailed(ctx context.Context, t target, err error) error {
	ae := storeError("read artifact", "", err)
	result := resultError
	if errors.Is(err, storage.ErrNotFound) {
		result = resultMiss
	} else if errors.Is(err, storage.ErrCorrupt) {
		s.log.WarnContext(ctx, "corrupt artifact answered as missing", "key", t.key.String(), "error", err)
	}
	s.metrics.read(t, result, 0)
	return ae
}

// copyBufSize is the streaming chunk: large enough to amortise syscalls, small enough that many
// concurrent downloads do not add up to much memory.
const copyBufSize = 64 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// serveObject streams t's body, or the byte range the request asks for (ranges.go). The first
// chunk is read before any header is written so that a missing or corrupt record becomes a
// clean 404 or 503; a failure after that aborts the connection (the client sees a truncated
// transfer, never wrong bytes under a 200 or 206).
func (s *Server) serveObject(c echo.Context, t target) error {
	r := c.Request()
	w := c.Response()
	h := w.Header()
	o, err := s.openObject(r, h, t)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			s.metrics.read(t, resultRejected, 0)
			return ae
		}
		return s.readFailed(r.Context(), t, err)
	}
	rd := o.rd
	defer rd.Close()
	info := rd.Info()
	etag := info.ETag()
	if etagMatches(r.Header.Get("If-None-Match"), etag) {
		h.Set("ETag", etag)
		s.metrics.read(t, resultHit, 0)
		return c.NoContent(http.StatusNotModified)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	n, rerr := readSome(rd, buf)
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		return s.readFailed(r.Context(), t, rerr)
	}
	setObjectHeaders(h, info)
	if o.partial {
		setLength(h, o.length)
		h.Set("Content-Range", contentRange(o.start, o.length, info.Size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}

	rc := http.NewResponseController(w)
	// With no server-wide WriteTimeout, a deadline left behind would hit the connection's next
	// response.
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	sw := &sendWriter{w: w, rc: rc, idle: s.idle, buf: buf}
	if rf, ok := w.Unwrap().(io.ReaderFrom); ok {
		sw.rf = rf
	}
	var sent int64
	if n > 0 {
		if _, werr := sw.Write(buf[:n]); werr != nil {
			s.metrics.read(t, resultError, sent)
			s.log.DebugContext(r.Context(), "send artifact", "key", t.key.String(), "sent", sent, "error", werr)
			return nil
		}
		sent += int64(n)
	}
	if rerr == nil {
		// The rest goes through io.Copy, so a segment reader can hand the socket a verified
		// file section (sendfile) instead of copying it through buf.
		m, cerr := io.Copy(sw, rd)
		sent += m
		rerr = cerr
		if rerr == nil {
			rerr = io.EOF
		}
	}
	switch {
	case errors.Is(rerr, io.EOF):
	case sw.failed != nil:
		// The client went away or stalled past the idle timeout.
		s.metrics.read(t, resultError, sent)
		s.log.DebugContext(r.Context(), "send artifact", "key", t.key.String(), "sent", sent, "error", sw.failed)
		return nil
	default:
		s.metrics.read(t, resultError, sent)
		s.log.ErrorContext(r.Context(), "artifact read failed mid-stream; aborting response", "key", t.key.String(),
			"sent", sent, "size", info.Size, "error", rerr)
		panic(http.ErrAbortHandler)
	}
	s.metrics.read(t, resultHit, sent)
	s.recordTransfer(t, analytics.Download, sent)
	return nil
}

// openedObject is a reader over what a GET answers: the whole body, or (partial) the
// length bytes from start.
type openedObject struct {
	rd            storage.Reader
	partial       bool
	start, length int64
}

// maxRangeOpens bounds how often a range read is re-opened because the object changed
// between finding its size and opening it (mutable kinds); after that the whole body is sent.
const maxRangeOpens = 3

// openObject opens t for a GET. A delete marker is ErrNotFound; an unsatisfiable range is an
// *apiError (416). Only the requested range is read from the store, so resuming the second
// half of a large download never reads the first.
func (s *Server) openObject(r *http.Request, h http.Header, t target) (openedObject, error) {
	ctx := r.Context()
	rng, ranged := byteRange{}, false
	if r.Method == http.MethodGet {
		rng, ranged = parseRange(r.Header.Get("Range"))
	}
	size := int64(-1)
	if ranged && rng.start < 0 {
		// A suffix range needs the size before the open.
		info, err := s.store.Stat(ctx, t.key)
		if err != nil {
			return openedObject{}, err
		}
		if hiddenObject(info) {
			return openedObject{}, fmt.Errorf("open %s: %w (deleted)", t.key, storage.ErrNotFound)
		}
		size = info.Size
	}
	for attempt := 0; ranged && attempt < maxRangeOpens; attempt++ {
		offset, length := rng.openAt(size)
		rd, err := s.store.Open(ctx, t.key, offset, length)
		if err != nil {
			return openedObject{}, err
		}
		info := rd.Info()
		if hiddenObject(info) {
			rd.Close()
			return openedObject{}, fmt.Errorf("open %s: %w (deleted)", t.key, storage.ErrNotFound)
		}
		if !ifRangeHolds(r.Header.Get("If-Range"), info.ETag()) {
			rd.Close()
			break
		}
		if etagMatches(r.Header.Get("If-None-Match"), info.ETag()) {
			// If-None-Match is judged before Range (RFC 9110 §13.2.2): serveObject answers 304.
			return openedObject{rd: rd}, nil
		}
		start, n, ok := rng.fit(info.Size)
		if !ok {
			rd.Close()
			return openedObject{}, rangeNotSatisfiable(h, info.Size)
		}
		if start == offset {
			return openedObject{rd: rd, partial: true, start: start, length: n}, nil
		}
		// The body was replaced by one of another size since the Stat: place the suffix again.
		rd.Close()
		size = info.Size
	}
	rd, err := s.store.Open(ctx, t.key, 0, -1)
	if err != nil {
		return openedObject{}, err
	}
	if hiddenObject(rd.Info()) {
		rd.Close()
		return openedObject{}, fmt.Errorf("open %s: %w (deleted)", t.key, storage.ErrNotFound)
	}
	return openedObject{rd: rd}, nil
}

// setObjectHeaders describes a stored body in a GET or HEAD answer.
func setObjectHeaders(h http.Header, info storage.Info) {
	ct := info.ContentType
	if ct == "" {
		ct = echo.MIMEOctetStream
	}
	h.Set("Content-Type", ct)
	setLength(h, info.Size)
	h.Set("ETag", info.ETag())
	h.Set("Accept-Ranges", "bytes")
	// Stored content types come from clients; never let a browser sniff something else.
	h.Set("X-Content-Type-Options", "nosniff")
	if info.Key.Kind == storage.KindTurbo {
		setTurboHeaders(h, info.Attributes)
	}
}

// statObject answers a HEAD: status with the object's headers, or 404.
func (s *Server) statObject(c echo.Context, t target, status int) error {
	info, err := s.store.Stat(c.Request().Context(), t.key)
	if err == nil && hiddenObject(info) {
		err = fmt.Errorf("stat %s: %w (deleted)", t.key, storage.ErrNotFound)
	}
	if err != nil {
		return s.readFailed(c.Request().Context(), t, err)
	}
	s.metrics.read(t, resultHit, 0)
	if status == http.StatusNoContent {
		return c.NoContent(status)
	}
	setObjectHeaders(c.Response().Header(), info)
	c.Response().WriteHeader(status)
	return nil
}

// sendChunkBytes is the most one sendfile call may send under one write deadline: a client
// must take at least this much per idle timeout (512 KiB per 2 min, about 4 KiB/s) to stay
// connected, as with any other response chunk.
const sendChunkBytes = 512 << 10

// sendWriter writes a response body, pushing the write deadline forward before every chunk
// (see Server.Serve) and remembering whether a failure was the client's. Its ReadFrom passes
// an io.LimitedReader over a file on to net/http's ReadFrom (and so to sendfile), in chunks of
// sendChunkBytes; anything else is copied through buf.
type sendWriter struct {
	w      *echo.Response
	rf     io.ReaderFrom // the net/http response under w; nil: no ReadFrom
	rc     *http.ResponseController
	idle   time.Duration
	buf    []byte
	failed error // first write error
}

func (sw *sendWriter) Write(p []byte) (int, error) {
	_ = sw.rc.SetWriteDeadline(time.Now().Add(sw.idle))
	n, err := sw.w.Write(p)
	if err != nil && sw.failed == nil {
		sw.failed = err
	}
	return n, err
}

func (sw *sendWriter) ReadFrom(src io.Reader) (int64, error) {
	lr, ok := src.(*io.LimitedReader)
	if !ok || sw.rf == nil {
		return io.CopyBuffer(writerOnly{sw}, src, sw.buf)
	}
	var total int64
	chunk := &io.LimitedReader{R: lr.R}
	for lr.N > 0 {
		_ = sw.rc.SetWriteDeadline(time.Now().Add(sw.idle))
		chunk.N = min(lr.N, sendChunkBytes)
		n, err := sw.rf.ReadFrom(chunk)
		lr.N -= n
		total += n
		// Written around echo's Response: keep its byte count (access log, tracing) right.
		sw.w.Size += n
		if err != nil {
			// A failing sendfile cannot tell a socket error from a file error; either way
			// the response is cut short, and what was sent is a prefix of verified bytes.
			if sw.failed == nil {
				sw.failed = err
			}
			return total, err
		}
		if n == 0 {
			break // the source ended early; the caller sees the shortfall
		}
	}
	return total, nil
}

// writerOnly hides sendWriter's ReadFrom from io.CopyBuffer.
type writerOnly struct{ io.Writer }

// readSome reads until it gets at least one byte, an error or EOF.
func readSome(r io.Reader, p []byte) (int, error) {
	for range 100 {
		n, err := r.Read(p)
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

// etagMatches implements If-None-Match's weak comparison against a strong tag.
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	for _, tag := range strings.Split(header, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true
		}
	}
	return false
}
