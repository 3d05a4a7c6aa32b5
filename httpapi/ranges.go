package httpapi

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// HTTP ranges (RFC 9110 §14) on every GET surface: one byte range is answered 206 with
// Content-Range and only that range is read from the store; a range that starts at or past
// the end is 416 with "Content-Range: bytes */SIZE". A header that is malformed, names another
// unit or asks for several ranges is ignored and the whole body is sent with 200, as RFC 9110
// allows: build clients and download tools (curl -C -, resumable fetches) ask for one range,
// and multipart/byteranges would defeat the sendfile path for no client that needs it.
// If-Range carrying the strong ETag keeps the range; anything else (another ETag, a weak one,
// a date: Kura sends no Last-Modified) gets the whole body. HEAD ignores Range (RFC 9110 only
// defines it for GET) and, like every full answer, says Accept-Ranges: bytes.

// byteRange is one parsed range-spec, before it is fitted to a body size.
type byteRange struct {
	// start is the first byte, or -1 for a suffix range ("bytes=-n": the last n bytes).
	start int64
	// end is the last byte (inclusive), -1 when open ("bytes=a-"), or n for a suffix range.
	end int64
}

// maxRangeHeaderBytes bounds the header we parse; a single range of two int64 fits in 50.
const maxRangeHeaderBytes = 256

// parseRange parses a Range header for a single byte range. ok is false when the header is
// absent or must be ignored (malformed, another unit, several ranges).
func parseRange(h string) (r byteRange, ok bool) {
	if h == "" || len(h) > maxRangeHeaderBytes {
		return byteRange{}, false
	}
	unit, set, found := strings.Cut(h, "=")
	if !found || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return byteRange{}, false
	}
	set = strings.TrimSpace(set)
	if set == "" || strings.Contains(set, ",") {
		return byteRange{}, false
	}
	first, last, found := strings.Cut(set, "-")
	if !found {
		return byteRange{}, false
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)
	if first == "" {
		n, err := parsePos(last)
		if err != nil || n == 0 {
			// "bytes=-0" asks for nothing; ignoring it serves the body, which is harmless.
			return byteRange{}, false
		}
		return byteRange{start: -1, end: n}, true
	}
	a, err := parsePos(first)
	if err != nil {
		return byteRange{}, false
	}
	if last == "" {
		return byteRange{start: a, end: -1}, true
	}
	b, err := parsePos(last)
	if err != nil || b < a {
		return byteRange{}, false
	}
	return byteRange{start: a, end: b}, true
}

// parsePos parses a non-negative decimal position (digits only: no sign, no spaces).
func parsePos(s string) (int64, error) {
	if s == "" {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// openAt is where a store read for r should start and how much it should read, for a body of
// size bytes (size < 0: not known yet, only possible for a non-suffix range).
func (r byteRange) openAt(size int64) (offset, length int64) {
	if r.start < 0 {
		n := min(r.end, size)
		return size - n, n
	}
	if r.end < 0 {
		return r.start, -1
	}
	return r.start, r.end - r.start + 1
}

// fit fits r to a body of size bytes: the first byte and the length to send, or ok=false when
// the range is not satisfiable (it starts at or past the end, or the body is empty).
func (r byteRange) fit(size int64) (start, length int64, ok bool) {
	if size <= 0 {
		return 0, 0, false
	}
	if r.start < 0 {
		n := min(r.end, size)
		return size - n, n, true
	}
	if r.start >= size {
		return 0, 0, false
	}
	end := size - 1
	if r.end >= 0 && r.end < end {
		end = r.end
	}
	return r.start, end - r.start + 1, true
}

// ifRangeHolds reports whether an If-Range header lets the range stand: absent, or exactly
// the strong entity tag of the body (RFC 9110 §13.1.5 requires the strong comparison).
func ifRangeHolds(header, etag string) bool {
	header = strings.TrimSpace(header)
	return header == "" || header == etag
}

// contentRange renders a 206's Content-Range.
func contentRange(start, length, size int64) string {
	return fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size)
}

// rangeNotSatisfiable is the 416 answer for a body of size bytes.
func rangeNotSatisfiable(h http.Header, size int64) *apiError {
	h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
	return &apiError{status: http.StatusRequestedRangeNotSatisfiable, message: "Range not satisfiable"}
}
