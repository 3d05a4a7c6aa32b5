package httpapi

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/internal/lifecycle"
)

// probeRoutes answer whatever the node's state: load balancers, kubelets, Prometheus and the
// operator watching the status page must keep seeing a draining node as it is.
var probeRoutes = map[string]bool{"/": true, "/up": true, "/ready": true, "/metrics": true}

// state is the node's traffic state (Serving when the server has no lifecycle).
func (s *Server) state() lifecycle.State {
	if s.lifecycle == nil {
		return lifecycle.Serving
	}
	return s.lifecycle.State()
}

// admit counts every request but the probes as in flight, and refuses new ones once the node
// drains: with a retryable 503 and Connection: close, so keep-alive clients reconnect to
// another node while what this one already accepted finishes.
func (s *Server) admit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.lifecycle == nil || probeRoutes[c.Path()] {
			return next(c)
		}
		if !s.lifecycle.Enter() {
			c.Response().Header().Set("Connection", "close")
			return &apiError{status: http.StatusServiceUnavailable, retryAfter: 1, expected: true,
				message: "Draining: this node is shutting down; retry on another node"}
		}
		defer s.lifecycle.Leave()
		return next(c)
	}
}

// readyResponse is GET /ready.
type readyResponse struct {
	Ready bool   `json:"ready"`
	State string `json:"state"`
}

// handleReady answers 200 only while the node is serving: 503 while it joins (the store is
// opening, or the first bootstrap round has neither finished nor timed out) and from the
// moment a drain starts.
func (s *Server) handleReady(c echo.Context) error {
	st := s.state()
	status := http.StatusOK
	if st != lifecycle.Serving {
		status = http.StatusServiceUnavailable
	}
	return c.JSON(status, readyResponse{Ready: status == http.StatusOK, State: st.String()})
}
