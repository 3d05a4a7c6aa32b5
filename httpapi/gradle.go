package httpapi

import (
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"
)

// Gradle build cache: PUT/GET /api/cache/gradle/{cache_key}?tenant_id&namespace_id (Tuist's
// form) and PUT/GET /api/cache/gradle/{tenant_id}/{namespace_id}/{cache_key}, the form stock
// Gradle can use: HttpBuildCache appends the key to the configured URL and drops any query
// string. PUT answers 201; entries are immutable; the limit is 100 MiB, and 413 is reserved for
// bodies that really are larger (Gradle 4.x turns its remote cache off after one 413 or 5xx).

func (s *Server) registerGradle() {
	// The spec is built per request: limits may be tuned after New (tests do).
	put := func() putSpec { return putSpec{limit: s.limits.gradle, success: http.StatusCreated} }
	s.route(http.MethodPut, "/api/cache/gradle/:cache_key", s.handleBlob(s.gradleQueryTarget, put))
	s.route(http.MethodGet, "/api/cache/gradle/:cache_key", s.handleBlob(s.gradleQueryTarget, nil))
	s.route(http.MethodPut, "/api/cache/gradle/:tenant_id/:namespace_id/:cache_key", s.handleBlob(s.gradlePathTarget, put))
	s.route(http.MethodGet, "/api/cache/gradle/:tenant_id/:namespace_id/:cache_key", s.handleBlob(s.gradlePathTarget, nil))
}

func (s *Server) gradleQueryTarget(c echo.Context) (target, url.Values, error) {
	return queryScoped(c, sfGradle, "cache_key")
}

func (s *Server) gradlePathTarget(c echo.Context) (target, url.Values, error) {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return target{}, nil, err
	}
	tenant, namespace, err := pathScope(c)
	if err != nil {
		return target{}, nil, err
	}
	key, err := pathParam(c, "cache_key")
	if err != nil {
		return target{}, nil, err
	}
	return sfGradle.at(tenant, namespace, key), q, nil
}

// handleBlob serves one blob surface whose target comes from resolve: a write (put != nil)
// stores the body as put() says, a read streams the stored object. The policy seam runs first.
func (s *Server) handleBlob(resolve func(echo.Context) (target, url.Values, error), put func() putSpec) echo.HandlerFunc {
	return func(c echo.Context) error {
		t, q, err := resolve(c)
		if err != nil {
			return err
		}
		if put == nil {
			if err := s.authorize(c, OpRead, t, q, false, ""); err != nil {
				return err
			}
			return s.serveObject(c, t)
		}
		if err := s.authorize(c, OpWrite, t, q, false, ""); err != nil {
			return err
		}
		return s.putBlob(c, t, put())
	}
}
