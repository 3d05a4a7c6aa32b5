package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// apiError is an HTTP answer other than success. An empty message means an empty body (a
// plain 404); otherwise the body is {"message": …} as JSON, or the bare message as text/plain
// when plain is set (Nx denials).
type apiError struct {
	status  int
	message string
	plain   bool
	// retryAfter, when set, is sent as the Retry-After header (seconds): the failure is
	// transient and the client may try again that soon.
	retryAfter int
	// cause is logged for server-side failures; it never reaches the client because it may
	// name files or peers.
	cause error
	// expected marks a 5xx that is the node working as designed (a draining node refusing
	// new requests): logged at debug, not as an error.
	expected bool
	// turbo adds Vercel's error object next to the message (see turboErrors).
	turbo bool
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%d %s: %v", e.status, e.message, e.cause)
	}
	return fmt.Sprintf("%d %s", e.status, e.message)
}

func badRequest(msg string) *apiError { return &apiError{status: http.StatusBadRequest, message: msg} }

var errNotFound = &apiError{status: http.StatusNotFound}

// Messages fixed by the wire contract (docs/contract.md §3) or by the original's clients.
const (
	msgPartTooLarge    = "Part exceeds 10MB limit"
	msgUploadNotFound  = "Upload not found"
	msgInvalidPart     = "Invalid part_number"
	msgUploadTooLarge  = "Total upload size exceeds 2GB limit"
	msgPartsMismatch   = "Parts mismatch or missing parts"
	msgBodyTooLarge    = "Request body exceeds the %d-byte limit"
	msgBodyReadFailure = "Failed to read request body"
)

// storeError maps an error from storage.Store or storage.Multipart to the HTTP answer. It is
// the only place where storage errors become statuses. action says what was being done
// ("store artifact") and tooLarge is the 413 message of the surface.
func storeError(action, tooLarge string, err error) *apiError {
	switch {
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrCorrupt):
		// A corrupt record is dropped by the store and treated as missing (docs/contract.md §5).
		return errNotFound
	case errors.Is(err, storage.ErrUploadNotFound):
		return &apiError{status: http.StatusNotFound, message: msgUploadNotFound}
	case errors.Is(err, storage.ErrInvalidPart):
		return badRequest(msgInvalidPart)
	case errors.Is(err, storage.ErrUploadTooLarge):
		return &apiError{status: http.StatusUnprocessableEntity, message: msgUploadTooLarge}
	case errors.Is(err, storage.ErrPartsMismatch):
		return badRequest(msgPartsMismatch)
	case errors.Is(err, storage.ErrInvalidKey):
		return badRequest(sentinelDetail(err, storage.ErrInvalidKey, "Invalid key"))
	case errors.Is(err, storage.ErrTooLarge):
		return &apiError{status: http.StatusRequestEntityTooLarge, message: tooLarge}
	case errors.Is(err, storage.ErrDigestMismatch):
		return badRequest(sentinelDetail(err, storage.ErrDigestMismatch, "Digest mismatch"))
	case errors.Is(err, storage.ErrBusy):
		// The file-descriptor pool stayed exhausted past its acquire timeout: shed this
		// request rather than queue it without bound. Nothing was stored.
		return &apiError{status: http.StatusServiceUnavailable, message: "Storage busy: failed to " + action + ", retry later",
			retryAfter: 1, cause: err}
	case errors.Is(err, storage.ErrInsufficientStorage):
		return &apiError{status: http.StatusInsufficientStorage, message: "Insufficient storage: failed to " + action, cause: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client went away (its request context ended); nobody reads this answer, but the
		// metrics must not count it as a store failure.
		return &apiError{status: http.StatusBadRequest, message: "Request canceled", cause: err}
	default:
		return &apiError{status: http.StatusServiceUnavailable, message: "Storage unavailable: failed to " + action, cause: err}
	}
}

// sentinelDetail renders "Prefix: detail" from an error like "put k: invalid key: key is
// empty", keeping only the part after the sentinel's text, which describes client input.
func sentinelDetail(err, sentinel error, prefix string) string {
	s := err.Error()
	if i := strings.LastIndex(s, sentinel.Error()); i >= 0 {
		rest := strings.TrimPrefix(s[i+len(sentinel.Error()):], ":")
		rest = strings.TrimSpace(rest)
		if rest != "" {
			return prefix + ": " + rest
		}
	}
	return prefix
}

// handleError is echo's error handler: it renders every error a handler returns.
func (s *Server) handleError(err error, c echo.Context) {
	resp := c.Response()
	if resp.Committed {
		s.log.DebugContext(c.Request().Context(), "error after response was committed", "route", s.routeLabel(c), "error", err)
		return
	}
	var ae *apiError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &he):
		ae = &apiError{status: he.Code}
		if he.Code != http.StatusNotFound {
			ae.message = http.StatusText(he.Code)
			if m, ok := he.Message.(string); ok && m != "" {
				ae.message = m
			}
		}
	default:
		ae = &apiError{status: http.StatusInternalServerError, message: "Internal server error", cause: err}
	}
	if ae.status >= 500 {
		level := slog.LevelError
		if ae.expected {
			level = slog.LevelDebug
		}
		s.log.Log(c.Request().Context(), level, "request failed", "route", s.routeLabel(c), "method", c.Request().Method,
			"status", ae.status, "error", ae)
	}
	writeError(resp, ae)
}

// writeError writes ae as the whole response.
func writeError(w http.ResponseWriter, ae *apiError) {
	h := w.Header()
	// Headers set for a success that never happened must not leak into the error.
	for _, k := range []string{"Content-Length", "Content-Type", "Etag", "Content-Encoding"} {
		h.Del(k)
	}
	if ae.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(ae.retryAfter))
	}
	if ae.message == "" {
		h.Set("Content-Length", "0")
		w.WriteHeader(ae.status)
		return
	}
	var body []byte
	if ae.plain {
		// Exactly "text/plain": Nx 24 compares the whole header and, for anything else on a
		// 401, reports a misconfigured endpoint instead of the message.
		h.Set("Content-Type", "text/plain")
		body = []byte(ae.message + "\n")
	} else if ae.turbo {
		h.Set("Content-Type", "application/json")
		body = turboErrorBody(ae.status, ae.message)
	} else {
		h.Set("Content-Type", "application/json")
		// Marshalling a one-string struct cannot fail.
		body, _ = json.Marshal(struct {
			Message string `json:"message"`
		}{ae.message})
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(ae.status)
	_, _ = w.Write(body)
}

// recoverPanic turns a handler panic into a logged 500 instead of a dropped connection, except
// http.ErrAbortHandler, which handlers raise on purpose to cut a response short (a corrupt
// block detected mid-stream) and which must reach net/http unchanged.
func (s *Server) recoverPanic(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel panic value, compared as net/http does
				panic(v)
			}
			s.log.ErrorContext(c.Request().Context(), "handler panic", "route", s.routeLabel(c), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if c.Response().Committed {
				// Half a response is worse than none: make the client see a broken transfer.
				panic(http.ErrAbortHandler)
			}
			err = &apiError{status: http.StatusInternalServerError, message: "Internal server error"}
		}()
		return next(c)
	}
}
