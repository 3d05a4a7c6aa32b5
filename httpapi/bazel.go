package httpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// Bazel HTTP cache (--remote_cache=http://…): GET/PUT/HEAD [/{namespace}]/ac/{sha256} and
// [/{namespace}]/cas/{sha256}, namespace "default" without the prefix, tenant KURA_TENANT_ID.
// Objects use storage.KindAC and storage.KindCAS named by the lowercase hex digest, exactly as
// the REAPI server names them, so a blob written over HTTP is readable over gRPC and vice
// versa. CAS bodies must hash to their key; the empty blob is always present. A namespace
// literally named "ac" or "cas" cannot be used with the prefix form (the paths would be
// ambiguous).

// emptySHA256 is the digest of zero bytes, which REAPI clients assume every cache holds.
var emptySHA256 = sha256.Sum256(nil)

func (s *Server) registerBazel() {
	for _, prefix := range []string{"", "/:namespace"} {
		for _, sf := range []surface{sfBazelAC, sfBazelCAS} {
			p := prefix + "/" + string(sf.kind) + "/:hash"
			s.route(http.MethodGet, p, s.handleBazel(sf, http.MethodGet))
			s.route(http.MethodHead, p, s.handleBazel(sf, http.MethodHead))
			s.route(http.MethodPut, p, s.handleBazel(sf, http.MethodPut))
		}
	}
}

func (s *Server) bazelTarget(c echo.Context, sf surface) (target, [32]byte, error) {
	namespace := bazelNamespace
	if c.Param("namespace") != "" {
		ns, err := pathParam(c, "namespace")
		if err != nil {
			return target{}, [32]byte{}, err
		}
		namespace = ns
	}
	h, err := pathParam(c, paramHash)
	if err != nil {
		return target{}, [32]byte{}, err
	}
	if !isSHA256Hex(h) {
		return target{}, [32]byte{}, badRequest("Invalid hash: expected 64 lowercase hex digits (SHA-256)")
	}
	var digest [32]byte
	// isSHA256Hex guarantees the decode succeeds.
	_, _ = hex.Decode(digest[:], []byte(h))
	return sf.at(s.cfg.TenantID, namespace, h), digest, nil
}

func (s *Server) handleBazel(sf surface, method string) echo.HandlerFunc {
	return func(c echo.Context) error {
		t, digest, err := s.bazelTarget(c, sf)
		if err != nil {
			return err
		}
		q, _ := url.ParseQuery(c.Request().URL.RawQuery)
		op := OpRead
		switch method {
		case http.MethodPut:
			op = OpWrite
		case http.MethodHead:
			op = OpInspect
		}
		if err := s.authorize(c, op, t, q, false, t.key.Name); err != nil {
			return err
		}
		switch {
		case method == http.MethodPut && sf.kind == storage.KindCAS:
			return s.putBlob(c, t, putSpec{limit: s.limits.blob, success: http.StatusOK, expected: &digest})
		case method == http.MethodPut:
			return s.putBlob(c, t, putSpec{limit: s.limits.actionResult, success: http.StatusOK})
		case sf.kind == storage.KindCAS && digest == emptySHA256:
			return s.serveEmpty(c, t, method == http.MethodHead)
		case method == http.MethodHead:
			return s.statObject(c, t, http.StatusOK)
		default:
			return s.serveObject(c, t)
		}
	}
}

// serveEmpty answers a read of the empty blob without asking the store.
func (s *Server) serveEmpty(c echo.Context, t target, head bool) error {
	info := storage.Info{Key: t.key, ContentType: echo.MIMEOctetStream, SHA256: emptySHA256}
	s.metrics.read(t, resultHit, 0)
	if !head && etagMatches(c.Request().Header.Get("If-None-Match"), info.ETag()) {
		c.Response().Header().Set("ETag", info.ETag())
		return c.NoContent(http.StatusNotModified)
	}
	if !head {
		// Every range of an empty body is unsatisfiable (ranges.go).
		r := c.Request()
		if _, ranged := parseRange(r.Header.Get("Range")); ranged && ifRangeHolds(r.Header.Get("If-Range"), info.ETag()) {
			return rangeNotSatisfiable(c.Response().Header(), 0)
		}
	}
	setObjectHeaders(c.Response().Header(), info)
	c.Response().WriteHeader(http.StatusOK)
	return nil
}
