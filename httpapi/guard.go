package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"
)

// Operations passed to the Guard.
const (
	OpRead            = "artifact.read"
	OpWrite           = "artifact.write"
	OpNamespaceDelete = "namespace.delete"
)

// Guard is the policy seam (the Lua policy hooks plug in here). Check runs before any artifact
// read, write or delete, after the request's identifiers were validated and before its body is
// read. It returns nil to allow, a *Denial to refuse with that status and message, or any
// other error when the policy itself failed (answered 503; the request is refused).
// Implementations are safe for concurrent use and must not modify the request's Headers or
// Query, which are shared with the handler.
type Guard interface {
	Check(ctx context.Context, req GuardRequest) error
}

// GuardRequest describes one request to the policy.
type GuardRequest struct {
	Route       string // route pattern, e.g. "/api/cache/cas/{id}"
	Method      string
	Operation   string // OpRead, OpWrite or OpNamespaceDelete
	TenantID    string
	NamespaceID string
	// Client is nx, metro, gradle, xcode, bazel, module or keyvalue ("" for clean).
	Client string
	// ArtifactClass is "blob" or "action_cache" ("" for clean).
	ArtifactClass string
	// ArtifactKey is the object name within the namespace ("" for keyvalue writes, whose key
	// is inside the body). Multipart parts and completions carry the upload's tenant,
	// namespace and key as recorded when it started, whatever their query says.
	ArtifactKey string
	Headers     http.Header
	Query       url.Values
}

// Denial refuses a request. Status is normally 401 or 403; a status outside 400..599 is
// answered 403.
type Denial struct {
	Status  int
	Message string
}

func (d *Denial) Error() string { return fmt.Sprintf("denied (%d): %s", d.Status, d.Message) }

// authorize asks the Guard about one request. plain selects a text/plain denial body (Nx shows
// it to the user and insists on text/plain for 401).
func (s *Server) authorize(c echo.Context, op string, t target, q url.Values, plain bool) error {
	if s.guard == nil {
		return nil
	}
	r := c.Request()
	err := s.guard.Check(r.Context(), GuardRequest{
		Route:         s.routeLabel(c),
		Method:        r.Method,
		Operation:     op,
		TenantID:      t.key.Tenant,
		NamespaceID:   t.key.Namespace,
		Client:        t.client,
		ArtifactClass: t.class,
		ArtifactKey:   t.key.Name,
		Headers:       r.Header,
		Query:         q,
	})
	if err == nil {
		return nil
	}
	if t.client != "" {
		if op == OpRead {
			s.metrics.read(t.surface, resultRejected, 0)
		} else {
			s.metrics.write(t.surface, resultRejected, 0)
		}
	}
	var d *Denial
	if errors.As(err, &d) {
		status := d.Status
		if status < 400 || status > 599 {
			status = http.StatusForbidden
		}
		msg := d.Message
		if msg == "" {
			msg = http.StatusText(status)
		}
		return &apiError{status: status, message: msg, plain: plain}
	}
	return &apiError{status: http.StatusServiceUnavailable, message: "Policy check failed", plain: plain,
		cause: fmt.Errorf("guard check for %s %s: %w", r.Method, s.routeLabel(c), err)}
}
