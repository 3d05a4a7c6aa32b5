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
	s.route(http.MethodPut, "/api/cache/gradle/:cache_key", s.handleGradle(s.gradleQueryTarget, true))
	s.route(http.MethodGet, "/api/cache/gradle/:cache_key", s.handleGradle(s.gradleQueryTarget, false))
	s.route(http.MethodPut, "/api/cache/gradle/:tenant_id/:namespace_id/:cache_key", s.handleGradle(s.gradlePathTarget, true))
	s.route(http.MethodGet, "/api/cache/gradle/:tenant_id/:namespace_id/:cache_key", s.handleGradle(s.gradlePathTarget, false))
}

func (s *Server) gradleQueryTarget(c echo.Context) (target, url.Values, error) {
	return queryScoped(c, sfGradle, "cache_key")
}

func (s *Server) gradlePathTarget(c echo.Context) (target, url.Values, error) {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return target{}, nil, err
	}
	tenant, err := pathParam(c, paramTenant)
	if err != nil {
		return target{}, nil, err
	}
	namespace, err := pathParam(c, paramNamespace)
	if err != nil {
		return target{}, nil, err
	}
	key, err := pathParam(c, "cache_key")
	if err != nil {
		return target{}, nil, err
	}
	return sfGradle.at(tenant, namespace, key), q, nil
}

func (s *Server) handleGradle(resolve func(echo.Context) (target, url.Values, error), write bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		t, q, err := resolve(c)
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
		return s.putBlob(c, t, putSpec{limit: s.limits.gradle, success: http.StatusCreated})
	}
}
