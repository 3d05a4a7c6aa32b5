package httpapi

import (
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"
)

// Nx self-hosted remote cache: PUT/GET /v1/cache/{hash} (tenant KURA_TENANT_ID, namespace
// "nx") and PUT/GET /api/nx/{tenant_id}/{namespace_id}/v1/cache/{hash}. Nx is strict about
// statuses: a stored PUT is exactly 200 (it fails a run on 202), an existing hash is 409 (which
// it ignores), a PUT without a valid Content-Length is 400, and denials are text/plain 401/403
// because Nx prints the body and calls any other 401 a misconfigured endpoint.

func (s *Server) registerNx() {
	s.route(http.MethodPut, "/v1/cache/:hash", s.handleNx(s.nxDefaultTarget, true))
	s.route(http.MethodGet, "/v1/cache/:hash", s.handleNx(s.nxDefaultTarget, false))
	s.route(http.MethodPut, "/api/nx/:tenant_id/:namespace_id/v1/cache/:hash", s.handleNx(nxScopedTarget, true))
	s.route(http.MethodGet, "/api/nx/:tenant_id/:namespace_id/v1/cache/:hash", s.handleNx(nxScopedTarget, false))
}

func nxHash(c echo.Context) (string, error) {
	h, err := pathParam(c, paramHash)
	if err != nil {
		return "", err
	}
	if !isDecimal(h) {
		return "", badRequest("Invalid hash: Nx hashes are decimal digit strings")
	}
	return h, nil
}

func (s *Server) nxDefaultTarget(c echo.Context) (target, error) {
	h, err := nxHash(c)
	if err != nil {
		return target{}, err
	}
	return sfNx.at(s.cfg.TenantID, nxNamespace, h), nil
}

func nxScopedTarget(c echo.Context) (target, error) {
	tenant, namespace, err := pathScope(c)
	if err != nil {
		return target{}, err
	}
	h, err := nxHash(c)
	if err != nil {
		return target{}, err
	}
	return sfNx.at(tenant, namespace, h), nil
}

func (s *Server) handleNx(resolve func(echo.Context) (target, error), write bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		t, err := resolve(c)
		if err != nil {
			return err
		}
		// Nx sends no query string; the policy still gets one, like on every other surface.
		q, _ := url.ParseQuery(c.Request().URL.RawQuery)
		if !write {
			if err := s.authorize(c, OpRead, t, q, true, t.key.Name); err != nil {
				return err
			}
			return s.serveObject(c, t)
		}
		if err := s.authorize(c, OpWrite, t, q, true, t.key.Name); err != nil {
			return err
		}
		r := c.Request()
		// Go rejects a malformed Content-Length before the handler runs; what is left to
		// refuse is a missing one (chunked, or no header at all).
		if r.ContentLength < 0 || r.Header.Get("Content-Length") == "" {
			s.metrics.write(t.surface, resultRejected, 0)
			return badRequest("Missing or invalid Content-Length")
		}
		return s.putBlob(c, t, putSpec{limit: s.limits.blob, success: http.StatusOK, exists: http.StatusConflict})
	}
}
