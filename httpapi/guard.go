package httpapi

import (
	"context"
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/policy"
)

// Operations passed to the Guard (docs/contract.md §8).
const (
	OpRead            = policy.OpRead
	OpWrite           = policy.OpWrite
	OpInspect         = policy.OpInspect // HEAD
	OpNamespaceDelete = policy.OpNamespaceDelete
	OpRequest         = policy.OpRequest // a call that touches no artifact (Turborepo's status, events)
)

// Guard is the access policy (the Lua hooks, *policy.Engine). Decide runs before any artifact
// read, write or delete, after the request's identifiers were validated and before its body
// is read; a denial is answered in the client's own terms and nothing is read or stored.
// ResponseHeaders adds the policy's headers to every response of a request it decided on.
// Implementations are safe for concurrent use and never modify the request they are given.
type Guard interface {
	Decide(ctx context.Context, r *policy.Request) policy.Decision
	HasResponseHeaders() bool
	ResponseHeaders(ctx context.Context, r *policy.Request, d policy.Decision, status int) map[string]string
}

// authorize asks the Guard about one request. plain selects a text/plain denial body (Nx shows
// it to the user and insists on text/plain for 401). hash is the content hash the client
// named, when the protocol has one.
func (s *Server) authorize(c echo.Context, op string, t target, q url.Values, plain bool, hash string) error {
	if s.guard == nil {
		return nil
	}
	r := c.Request()
	pr := &policy.Request{
		Transport:     policy.TransportHTTP,
		Route:         s.routeLabel(c),
		Method:        r.Method,
		Operation:     op,
		TenantID:      t.key.Tenant,
		NamespaceID:   t.key.Namespace,
		Producer:      t.client,
		ArtifactClass: t.class,
		ArtifactKey:   t.key.Name,
		ArtifactHash:  hash,
		Headers:       policy.HTTPHeaders(r.Header),
		Query:         q,
	}
	ctx := r.Context()
	d := s.guard.Decide(ctx, pr)
	if s.guard.HasResponseHeaders() {
		resp := c.Response()
		resp.Before(func() {
			for k, v := range s.guard.ResponseHeaders(ctx, pr, d, resp.Status) {
				resp.Header().Set(k, v)
			}
		})
	}
	if d.Allowed {
		return nil
	}
	if t.client != "" && op != OpRequest {
		if op == OpWrite {
			s.metrics.write(t.surface, resultRejected, 0)
		} else {
			s.metrics.read(t, resultRejected, 0)
		}
	}
	status := d.Status
	if status < 400 || status > 599 {
		status = http.StatusForbidden
	}
	msg := d.Message
	if msg == "" {
		msg = http.StatusText(status)
	}
	if status == http.StatusUnauthorized && t.client == sfGradle.client {
		// Gradle reports a credential problem ("… 401 Unauthorized") only for a Basic
		// challenge; without it some versions retry without credentials.
		c.Response().Header().Set("WWW-Authenticate", `Basic realm="kura", charset="UTF-8"`)
	}
	return &apiError{status: status, message: msg, plain: plain}
}
