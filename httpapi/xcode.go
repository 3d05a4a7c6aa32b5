package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

// Xcode CAS (Tuist): POST/GET /api/cache/cas/{id}?tenant_id&namespace_id. The body is opaque
// and immutable once stored; the limit is KURA_MAX_XCODE_BYTES.

func (s *Server) registerXcode() {
	s.route(http.MethodPost, "/api/cache/cas/:id", s.handleXcodePut)
	s.route(http.MethodGet, "/api/cache/cas/:id", s.handleXcodeGet)
}

func (s *Server) handleXcodePut(c echo.Context) error {
	t, q, err := queryScoped(c, sfXcode, "id")
	if err != nil {
		return err
	}
	if err := s.authorize(c, OpWrite, t, q, false, ""); err != nil {
		return err
	}
	return s.putBlob(c, t, putSpec{limit: s.limits.xcode, success: http.StatusNoContent})
}

func (s *Server) handleXcodeGet(c echo.Context) error {
	t, q, err := queryScoped(c, sfXcode, "id")
	if err != nil {
		return err
	}
	if err := s.authorize(c, OpRead, t, q, false, ""); err != nil {
		return err
	}
	return s.serveObject(c, t)
}
