package httpapi

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// bodyReader wraps a request body: it enforces a byte limit while streaming (independently of
// the store, so no implementation can be talked into reading past it), pushes the connection's
// read deadline forward on every read so a stalled upload is dropped after the idle timeout,
// and remembers whether a failure came from the client rather than from the store.
type bodyReader struct {
	r        io.Reader
	rc       *http.ResponseController
	idle     time.Duration
	limit    int64 // 0: none
	n        int64
	tooLarge bool
	// complete is set once the body was read to its end.
	complete bool
	// clientErr is the first read error other than io.EOF: a client that disconnected, sent a
	// short or malformed body, or stalled past the idle timeout.
	clientErr error
}

func (s *Server) newBodyReader(c echo.Context, limit int64) *bodyReader {
	return &bodyReader{
		r:     c.Request().Body,
		rc:    http.NewResponseController(c.Response()),
		idle:  s.idle,
		limit: limit,
	}
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.tooLarge {
		return 0, fmt.Errorf("read request body: %w", storage.ErrTooLarge)
	}
	if b.clientErr != nil {
		return 0, b.clientErr
	}
	if b.limit > 0 && int64(len(p)) > b.limit-b.n+1 {
		// Never ask for more than one byte past the limit: that byte is enough to know.
		p = p[:b.limit-b.n+1]
	}
	// The deadline is best effort: a writer that cannot set one (not a net.Conn) still works.
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.limit > 0 && b.n > b.limit {
		n -= int(b.n - b.limit)
		b.n = b.limit
		b.tooLarge = true
		return n, fmt.Errorf("read request body: %w", storage.ErrTooLarge)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		b.clientErr = fmt.Errorf("read request body: %w", err)
		return n, b.clientErr
	}
	if err != nil {
		b.complete = true
	}
	return n, err
}

// done clears the read deadline once the body is consumed, so a slow handler after the
// upload (a store commit) is not mistaken for a stalled client.
func (b *bodyReader) done() { _ = b.rc.SetReadDeadline(time.Time{}) }

// boundBodyDrain bounds what happens to a request body the handler did not read (an existing
// key, a 413, a denial): net/http drains up to 256 KiB of it before answering so the
// connection can be reused, and with no server-wide ReadTimeout a client that declared a body
// and never sends it would hold that drain forever. After the handler, the drain gets the same
// idle deadline as any body read. net/http resets the deadline before the next request.
func (s *Server) boundBodyDrain(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		defer func() {
			if c.Request().ContentLength != 0 {
				_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(s.idle))
			}
		}()
		return next(c)
	}
}

// declaredSize is the Content-Length the client declared, or storage.UnknownSize for a
// chunked body.
func declaredSize(r *http.Request) int64 {
	if r.ContentLength < 0 {
		return storage.UnknownSize
	}
	return r.ContentLength
}

// checkDeclaredLength answers 413 at once, without reading a byte, when the declared
// Content-Length is above limit. Equal to the limit is accepted: Gradle 4.x disables its
// remote cache for the rest of the build after a single 413, so it must only ever mean "too
// large".
func checkDeclaredLength(r *http.Request, limit int64, tooLarge string) error {
	if limit > 0 && r.ContentLength > limit {
		return &apiError{status: http.StatusRequestEntityTooLarge, message: tooLarge}
	}
	return nil
}

func tooLargeMessage(limit int64) string { return fmt.Sprintf(msgBodyTooLarge, limit) }

// readCapped reads a small body (a JSON document) into memory, failing with 413 past limit.
func (s *Server) readCapped(c echo.Context, limit int64) ([]byte, error) {
	if err := checkDeclaredLength(c.Request(), limit, tooLargeMessage(limit)); err != nil {
		return nil, err
	}
	br := s.newBodyReader(c, limit)
	defer br.done()
	buf := make([]byte, 0, min(max(c.Request().ContentLength, 512), limit+1))
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := br.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			if br.tooLarge {
				return nil, &apiError{status: http.StatusRequestEntityTooLarge, message: tooLargeMessage(limit)}
			}
			return nil, &apiError{status: http.StatusBadRequest, message: msgBodyReadFailure, cause: err}
		}
	}
}

// contentType is the request's media type if it is well formed, else application/octet-stream.
// It is stored and served back, so a malformed value must not reach the store.
func contentType(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if ct == "" || len(ct) > 255 {
		return echo.MIMEOctetStream
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return echo.MIMEOctetStream
	}
	if f := mime.FormatMediaType(mt, params); f != "" {
		return f
	}
	return echo.MIMEOctetStream
}

// setLength sets Content-Length.
func setLength(h http.Header, n int64) { h.Set("Content-Length", strconv.FormatInt(n, 10)) }
