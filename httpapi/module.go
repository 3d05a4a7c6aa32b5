package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// Module cache multipart uploads (Tuist): start → part… → complete, then HEAD/GET by the
// (cache_category, hash, name) triple, stored under "{cache_category}/{hash}/{name}". Parts are
// staged by storage.Multipart, which enforces the 10 MiB part and 2 GiB total limits; this file
// also refuses an over-long declared part before reading it.

func (s *Server) registerModule() {
	s.route(http.MethodPost, "/api/cache/module/start", s.handleModuleStart)
	s.route(http.MethodPost, "/api/cache/module/part", s.handleModulePart)
	s.route(http.MethodPost, "/api/cache/module/complete", s.handleModuleComplete)
	s.route(http.MethodHead, "/api/cache/module/:id", s.handleModuleRead(true))
	s.route(http.MethodGet, "/api/cache/module/:id", s.handleModuleRead(false))
}

func moduleTarget(q url.Values) (target, error) {
	tenant, namespace, name, err := moduleKey(q)
	if err != nil {
		return target{}, err
	}
	return sfModule.at(tenant, namespace, name), nil
}

type startResponse struct {
	UploadID *string `json:"upload_id"`
}

func (s *Server) handleModuleStart(c echo.Context) error {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	t, err := moduleTarget(q)
	if err != nil {
		return err
	}
	if err := s.authorize(c, OpWrite, t, q, false, queryValue(q, paramHash)); err != nil {
		return err
	}
	ctx := c.Request().Context()
	_, err = s.local.Stat(ctx, t.key) // local only, like every write-path check
	if err == nil {
		s.metrics.write(t.surface, resultExists, 0)
		return c.JSON(http.StatusOK, startResponse{})
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return s.writeFailed(t, "inspect artifact", "", err)
	}
	id, err := s.mp.StartUpload(ctx, t.key, echo.MIMEOctetStream)
	if err != nil {
		return s.writeFailed(t, "start upload", "", err)
	}
	return c.JSON(http.StatusOK, startResponse{UploadID: &id})
}

// uploadRequest validates the upload_id of a part or completion request and the optional
// tenant_id and namespace_id (or their aliases) that Tuist sends along.
func uploadRequest(q url.Values) (id, tenant, namespace string, err error) {
	id = q.Get(paramUploadID)
	if id == "" {
		return "", "", "", badRequest("Missing upload_id")
	}
	if err := checkIdent(paramUploadID, id); err != nil {
		return "", "", "", err
	}
	if tenant, err = optionalIdent(q, paramTenant, ""); err != nil {
		return "", "", "", err
	}
	if namespace, err = optionalIdent(q, paramNamespace, ""); err != nil {
		return "", "", "", err
	}
	return id, tenant, namespace, nil
}

// uploadTarget resolves an upload to the object it will be stored as, so the policy decides
// a part or a completion on the same tenant, namespace and key as the start that created it,
// whatever the request's query claims. It runs before the policy: the id is a random UUID, so
// answering "Upload not found" first tells an unauthorized client nothing it could use, and
// the policy is never asked about a request that names no real tenant.
//
// A request that names a tenant or namespace must name the upload's own: under tenant
// isolation (docs/contract.md §2) another tenant's upload does not exist for it.
func (s *Server) uploadTarget(c echo.Context, id, tenant, namespace string) (target, *apiError) {
	key, err := s.mp.UploadKey(c.Request().Context(), id)
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrCorrupt):
		// The upload's state is unreadable and will be removed; the client must start over.
		s.log.WarnContext(c.Request().Context(), "corrupt multipart upload answered as missing", "upload", id, "error", err)
		return target{}, &apiError{status: http.StatusNotFound, message: msgUploadNotFound}
	default:
		return target{}, storeError("look up upload", msgPartTooLarge, err)
	}
	if (tenant != "" && tenant != key.Tenant) || (namespace != "" && namespace != key.Namespace) {
		return target{}, &apiError{status: http.StatusNotFound, message: msgUploadNotFound}
	}
	return target{surface: sfModule, key: key}, nil
}

func parsePartNumber(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > storage.MaxPartNumber {
		return 0, badRequest(msgInvalidPart)
	}
	return n, nil
}

func (s *Server) handleModulePart(c echo.Context) error {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	id, tenant, namespace, err := uploadRequest(q)
	if err != nil {
		return err
	}
	part, err := parsePartNumber(q.Get(paramPartNumber))
	if err != nil {
		return err
	}
	// A missing upload is not counted as a failed artifact write, like the part failures
	// below: the completion is what writes the artifact.
	t, ae := s.uploadTarget(c, id, tenant, namespace)
	if ae != nil {
		return ae
	}
	if err := s.authorize(c, OpWrite, t, q, false, ""); err != nil {
		return err
	}
	if err := checkDeclaredLength(c.Request(), s.limits.part, msgPartTooLarge); err != nil {
		return err
	}
	br := s.newBodyReader(c, s.limits.part)
	err = s.mp.PutPart(c.Request().Context(), id, part, br)
	br.done()
	switch {
	case err == nil:
		return c.NoContent(http.StatusNoContent)
	case br.tooLarge:
		return &apiError{status: http.StatusRequestEntityTooLarge, message: msgPartTooLarge}
	case br.clientErr != nil:
		return &apiError{status: http.StatusBadRequest, message: msgBodyReadFailure, cause: err}
	default:
		return storeError("store upload part", msgPartTooLarge, err)
	}
}

type completeRequest struct {
	Parts *[]int `json:"parts"`
}

// decodeComplete parses {"parts":[1,2,…]} strictly.
func decodeComplete(data []byte) ([]int, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var req completeRequest
	if err := dec.Decode(&req); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("unexpected data after the JSON document")
	}
	if req.Parts == nil {
		return nil, errors.New("parts is required")
	}
	return *req.Parts, nil
}

func (s *Server) handleModuleComplete(c echo.Context) error {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	id, tenant, namespace, err := uploadRequest(q)
	if err != nil {
		return err
	}
	t, ae := s.uploadTarget(c, id, tenant, namespace)
	if ae != nil {
		return s.writeRefused(sfModule, ae)
	}
	if err := s.authorize(c, OpWrite, t, q, false, ""); err != nil {
		return err
	}
	data, err := s.readCapped(c, s.limits.completeBody)
	if err != nil {
		return err
	}
	parts, err := decodeComplete(data)
	if err != nil {
		return badRequest("Invalid completion payload: " + err.Error())
	}
	res, err := s.mp.CompleteUpload(c.Request().Context(), id, parts)
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrStale):
		s.metrics.write(t.surface, resultExists, 0)
		return c.NoContent(http.StatusNoContent)
	default:
		return s.writeFailed(t, "complete upload", msgPartTooLarge, err)
	}
	if res.Created {
		s.metrics.write(t.surface, resultStored, res.Info.Size)
	} else {
		s.metrics.write(t.surface, resultExists, 0)
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) handleModuleRead(head bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		q, err := parseQuery(c.Request().URL.RawQuery)
		if err != nil {
			return err
		}
		// The path id is not part of the key (the query triple is) but is still untrusted input.
		if _, err := pathParam(c, "id"); err != nil {
			return err
		}
		t, err := moduleTarget(q)
		if err != nil {
			return err
		}
		op := OpRead
		if head {
			op = OpInspect
		}
		if err := s.authorize(c, op, t, q, false, queryValue(q, paramHash)); err != nil {
			return err
		}
		if head {
			return s.statObject(c, t, http.StatusNoContent)
		}
		return s.serveObject(c, t)
	}
}
