package httpapi

import (
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"
)

// Metro (metro-cache HttpStore / HttpGetStore): PUT/GET /api/metro/cache/{cache_key}, the key
// being hex of any length; tenant_id and namespace_id are optional query parameters (the
// HttpStore "params" option) defaulting to KURA_TENANT_ID and "metro". Metro uploads a gzip
// stream with Transfer-Encoding: chunked and gunzips every 200 itself, so bytes are stored and
// served exactly as sent and no Content-Encoding is ever set.

func (s *Server) registerMetro() {
	s.route(http.MethodPut, "/api/metro/cache/:cache_key", s.handleMetro(true))
	s.route(http.MethodGet, "/api/metro/cache/:cache_key", s.handleMetro(false))
}

func (s *Server) metroTarget(c echo.Context) (target, url.Values, error) {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return target{}, nil, err
	}
	tenant, err := optionalIdent(q, paramTenant, s.cfg.TenantID)
	if err != nil {
		return target{}, nil, err
	}
	namespace, err := optionalIdent(q, paramNamespace, metroNamespace)
	if err != nil {
		return target{}, nil, err
	}
	key, err := pathParam(c, "cache_key")
	if err != nil {
		return target{}, nil, err
	}
	if !isHex(key) {
		return target{}, nil, badRequest("Invalid cache_key: Metro keys are hex strings")
	}
	return sfMetro.at(tenant, namespace, key), q, nil
}

func (s *Server) handleMetro(write bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		t, q, err := s.metroTarget(c)
		if err != nil {
			return err
		}
		if !write {
			if err := s.authorize(c, OpRead, t, q, false); err != nil {
				return err
			}
			return s.serveObject(c, t)
		}
		if err := s.authorize(c, OpWrite, t, q, false); err != nil {
			return err
		}
		return s.putBlob(c, t, putSpec{limit: s.limits.blob, success: http.StatusOK})
	}
}
