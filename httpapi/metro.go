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
	s.route(http.MethodPut, "/api/metro/cache/:cache_key", s.handleBlob(s.metroTarget, func() putSpec {
		return putSpec{limit: s.limits.blob, success: http.StatusOK}
	}))
	s.route(http.MethodGet, "/api/metro/cache/:cache_key", s.handleBlob(s.metroTarget, nil))
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
