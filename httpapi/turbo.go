package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// Turborepo remote cache, the v8 API of Vercel's that `turbo` speaks (TURBO_API, TURBO_TOKEN,
// TURBO_TEAM): PUT/GET/HEAD /v8/artifacts/{hash}, POST /v8/artifacts (query many hashes),
// POST /v8/artifacts/events and GET /v8/artifacts/status. The tenant is KURA_TENANT_ID and
// the namespace is the team: turbo sends ?teamId= for a TURBO_TEAM starting with "team_" and
// ?slug= otherwise. turbo uploads with Transfer-Encoding: chunked (no Content-Length), so the
// body is streamed under the limit like Metro's. x-artifact-duration and x-artifact-tag (the
// HMAC signature turbo checks when remoteCache.signature is on) are stored as the object's
// attributes and sent back on GET and HEAD.
//
// Errors carry Vercel's {"error":{"code","message"}} next to Kura's {"message"}: turbo parses
// the former out of every 403 (and reports "invalid JSON" when it is missing), while Kura's
// own tooling and operators read the latter. The extra field costs nothing to either.

const (
	turboNamespaceParam = "teamId"
	turboSlugParam      = "slug"
	headerTurboDuration = "x-artifact-duration"
	headerTurboTag      = "x-artifact-tag"
	// The attribute names under which the headers are stored.
	attrTurboDuration = "turbo.duration-ms"
	attrTurboTag      = "turbo.tag"
	// maxTurboTagBytes bounds x-artifact-tag. turbo's tag is the base64 of an HMAC-SHA256
	// (44 bytes); 1 KiB leaves room for other signers while keeping the manifest small.
	maxTurboTagBytes = 1024
	// maxTurboJSONBytes caps the bodies of the query and events calls, both small JSON
	// documents (turbo sends one event per task of a run).
	maxTurboJSONBytes = 1 << 20
	// maxTurboQueryHashes bounds one artifact query, so one request cannot make the node
	// stat an unbounded number of keys.
	maxTurboQueryHashes = 1000
)

func (s *Server) registerTurbo() {
	s.route(http.MethodGet, "/v8/artifacts/status", turboErrors(s.handleTurboStatus))
	s.route(http.MethodPost, "/v8/artifacts/events", turboErrors(s.handleTurboEvents))
	s.route(http.MethodPost, "/v8/artifacts", turboErrors(s.handleTurboQuery))
	s.route(http.MethodPut, "/v8/artifacts/:hash", turboErrors(s.handleTurboPut))
	s.route(http.MethodGet, "/v8/artifacts/:hash", turboErrors(s.handleTurboGet(OpRead)))
	s.route(http.MethodHead, "/v8/artifacts/:hash", turboErrors(s.handleTurboGet(OpInspect)))
}

// turboErrors renders the errors of h in the shape turbo parses.
func turboErrors(h echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := h(c)
		var ae *apiError
		if errors.As(err, &ae) {
			// A copy: some errors are shared values (errNotFound).
			turbo := *ae
			turbo.turbo = true
			return &turbo
		}
		return err
	}
}

// turboErrorCodes are the error codes of Vercel's API per status. Not "remote_caching_…" for
// 403: turbo would read that as the team's caching status.
var turboErrorCodes = map[int]string{
	http.StatusBadRequest:            "bad_request",
	http.StatusUnauthorized:          "not_authorized",
	http.StatusForbidden:             "forbidden",
	http.StatusNotFound:              "not_found",
	http.StatusRequestEntityTooLarge: "payload_too_large",
	http.StatusInsufficientStorage:   "insufficient_storage",
	http.StatusServiceUnavailable:    "service_unavailable",
}

// turboErrorBody is the JSON of an error answer on the Turborepo surface.
func turboErrorBody(status int, message string) []byte {
	code, ok := turboErrorCodes[status]
	switch {
	case ok:
	case status < 500:
		code = "client_error"
	default:
		code = "internal_error"
	}
	type detail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	// Marshalling strings cannot fail.
	b, _ := json.Marshal(struct {
		Message string `json:"message"`
		Error   detail `json:"error"`
	}{message, detail{code, message}})
	return b
}

// turboNamespace returns the team of the request: teamId, else slug.
func turboNamespace(q url.Values, required bool) (string, error) {
	for _, name := range []string{turboNamespaceParam, turboSlugParam} {
		if v := q.Get(name); v != "" {
			if err := checkIdent(name, v); err != nil {
				return "", err
			}
			return v, nil
		}
	}
	if required {
		return "", badRequest("Missing teamId or slug")
	}
	return "", nil
}

// checkTurboHash: turbo's task hashes are hex (16 digits of xxHash64 today).
func checkTurboHash(h string) error {
	if !isHex(h) {
		return badRequest("Invalid hash: Turborepo hashes are hex strings")
	}
	return nil
}

// turboTarget resolves /v8/artifacts/{hash}?teamId|slug.
func (s *Server) turboTarget(c echo.Context) (target, url.Values, error) {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return target{}, nil, err
	}
	namespace, err := turboNamespace(q, true)
	if err != nil {
		return target{}, nil, err
	}
	h, err := pathParam(c, paramHash)
	if err != nil {
		return target{}, nil, err
	}
	if err := checkTurboHash(h); err != nil {
		return target{}, nil, err
	}
	return sfTurbo.at(s.cfg.TenantID, namespace, h), q, nil
}

// turboAttributes reads the metadata turbo sends with an upload.
func turboAttributes(h http.Header) (storage.Attributes, error) {
	m := map[string]string{}
	if d := h.Get(headerTurboDuration); d != "" {
		n, err := strconv.ParseUint(d, 10, 63)
		if err != nil {
			return storage.Attributes{}, badRequest("Invalid x-artifact-duration: want a whole number of milliseconds")
		}
		m[attrTurboDuration] = strconv.FormatUint(n, 10)
	}
	if tag := h.Get(headerTurboTag); tag != "" {
		if len(tag) > maxTurboTagBytes {
			return storage.Attributes{}, badRequest("Invalid x-artifact-tag: longer than " + strconv.Itoa(maxTurboTagBytes) + " bytes")
		}
		m[attrTurboTag] = tag
	}
	a, err := storage.NewAttributes(m)
	if err != nil {
		return storage.Attributes{}, badRequest("Invalid x-artifact-tag: " + sentinelDetail(err, storage.ErrInvalidAttributes, "not storable"))
	}
	return a, nil
}

// setTurboHeaders answers the stored duration and tag the way turbo reads them.
func setTurboHeaders(h http.Header, a storage.Attributes) {
	if d := a.Get(attrTurboDuration); d != "" {
		h.Set(headerTurboDuration, d)
	}
	if tag := a.Get(attrTurboTag); tag != "" {
		h.Set(headerTurboTag, tag)
	}
}

func (s *Server) handleTurboPut(c echo.Context) error {
	t, q, err := s.turboTarget(c)
	if err != nil {
		return err
	}
	attrs, err := turboAttributes(c.Request().Header)
	if err != nil {
		s.metrics.write(t.surface, resultRejected, 0)
		return err
	}
	if err := s.authorize(c, OpWrite, t, q, false, t.key.Name); err != nil {
		return err
	}
	// Vercel answers 202 with where the artifact can be fetched; turbo checks the status only.
	param := turboNamespaceParam
	if q.Get(turboNamespaceParam) == "" {
		param = turboSlugParam
	}
	loc := s.cfg.NodeURL + "/v8/artifacts/" + url.PathEscape(t.key.Name) + "?" + url.Values{param: {t.key.Namespace}}.Encode()
	return s.putBlob(c, t, putSpec{
		limit:      s.limits.blob,
		success:    http.StatusAccepted,
		attributes: attrs,
		answer: func(c echo.Context, status int) error {
			return c.JSON(status, map[string][]string{"urls": {loc}})
		},
	})
}

func (s *Server) handleTurboGet(op string) echo.HandlerFunc {
	return func(c echo.Context) error {
		t, q, err := s.turboTarget(c)
		if err != nil {
			return err
		}
		if err := s.authorize(c, op, t, q, false, t.key.Name); err != nil {
			return err
		}
		if op == OpInspect {
			return s.statObject(c, t, http.StatusOK)
		}
		return s.serveObject(c, t)
	}
}

// turboArtifactInfo is one present hash in a query answer.
type turboArtifactInfo struct {
	Size           int64  `json:"size"`
	TaskDurationMs int64  `json:"taskDurationMs"`
	Tag            string `json:"tag,omitempty"`
}

type turboArtifactError struct {
	Error struct {
		Message string `json:"message"`
	} `json:"error"`
}

func (s *Server) handleTurboQuery(c echo.Context) error {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	namespace, err := turboNamespace(q, true)
	if err != nil {
		return err
	}
	scope := sfTurbo.at(s.cfg.TenantID, namespace, "")
	if err := s.authorize(c, OpInspect, scope, q, false, ""); err != nil {
		return err
	}
	body, err := s.readCapped(c, maxTurboJSONBytes)
	if err != nil {
		return err
	}
	var req struct {
		Hashes []string `json:"hashes"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return badRequest("Invalid artifact query: " + err.Error())
	}
	if req.Hashes == nil {
		return badRequest("Invalid artifact query: missing hashes")
	}
	if len(req.Hashes) > maxTurboQueryHashes {
		return badRequest("Invalid artifact query: more than " + strconv.Itoa(maxTurboQueryHashes) + " hashes")
	}
	for _, h := range req.Hashes {
		if err := checkIdent(paramHash, h); err != nil {
			return err
		}
		if err := checkTurboHash(h); err != nil {
			return err
		}
	}
	out := make(map[string]any, len(req.Hashes))
	ctx := c.Request().Context()
	for _, h := range req.Hashes {
		info, err := s.store.Stat(ctx, sfTurbo.at(s.cfg.TenantID, namespace, h).key)
		switch {
		case err == nil:
			d, _ := strconv.ParseInt(info.Attributes.Get(attrTurboDuration), 10, 64)
			out[h] = turboArtifactInfo{Size: info.Size, TaskDurationMs: d, Tag: info.Attributes.Get(attrTurboTag)}
		case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrCorrupt):
			var miss turboArtifactError
			miss.Error.Message = "Artifact not found"
			out[h] = miss
		default:
			return storeError("query artifacts", "", err)
		}
	}
	return c.JSON(http.StatusOK, out)
}

// authorizeTurboRequest asks the policy about a call that names no artifact (events,
// status). turbo sends its team there too; another client of the API may not, and neither
// call carries anything that needs a namespace, so the team is optional.
func (s *Server) authorizeTurboRequest(c echo.Context) error {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	namespace, err := turboNamespace(q, false)
	if err != nil {
		return err
	}
	return s.authorize(c, OpRequest, sfTurbo.at(s.cfg.TenantID, namespace, ""), q, false, "")
}

func (s *Server) handleTurboEvents(c echo.Context) error {
	if err := s.authorizeTurboRequest(c); err != nil {
		return err
	}
	body, err := s.readCapped(c, maxTurboJSONBytes)
	if err != nil {
		return err
	}
	var events []struct {
		Source string `json:"source"`
		Event  string `json:"event"`
	}
	if err := json.Unmarshal(body, &events); err != nil {
		return badRequest("Invalid cache events: " + err.Error())
	}
	for _, e := range events {
		s.metrics.turboEvents.WithLabelValues(turboLabel(e.Source, "local", "remote"), turboLabel(e.Event, "hit", "miss")).Inc()
	}
	return c.NoContent(http.StatusOK)
}

// turboLabel bounds a client-supplied label to the values the API defines.
func turboLabel(v string, allowed ...string) string {
	v = strings.ToLower(v)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	return "other"
}

func (s *Server) handleTurboStatus(c echo.Context) error {
	if err := s.authorizeTurboRequest(c); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "enabled"})
}
