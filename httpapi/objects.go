package httpapi

import (
	"bytes"
	"errors"
	"mime"
	"net/http"
	"net/url"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// Plain HTTP objects: GET/HEAD/PUT/DELETE /api/cache/objects/{tenant_id}/{namespace_id}/{key…},
// the surface ccache's "flat" and "subdirs" remote-storage layouts use unmodified (its
// "bazel" layout uses the Bazel HTTP surface). The key is the rest of the path, slashes
// included, an opaque identifier validated like every other one and never a file path.
//
// Objects are last-writer-wins (storage.KindObjects): ccache rewrites a manifest under the
// same key, so a PUT always stores (201). A DELETE stores a delete marker, an empty body with
// storage.ObjectDeletedContentType, as a newer write of the key (204): it replicates through
// the outbox like any write, and an older copy arriving later (a push still in flight,
// anti-entropy, bootstrap) loses to it by the ordinary last-writer-wins rule, so a deleted
// object is never resurrected; a later PUT wins over the marker in the same way. A marker is
// read as 404. DELETE writes the marker whether or not this node holds the key, because a
// peer may hold a copy this node has not received yet.

const (
	objectsPrefix = "/api/cache/objects/:tenant_id/:namespace_id/"
	// objectsRoute is the route's name in metrics and policy contexts.
	objectsRoute = "/api/cache/objects/{tenant_id}/{namespace_id}/{key}"
)

// sfObjects: the policy's producer is "ccache" (docs/contract.md §8), the main client.
var sfObjects = surface{storage.KindObjects, "ccache", classBlob}

func (s *Server) registerObjects() {
	p := objectsPrefix + "*"
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete} {
		s.route(m, p, s.handleObject(m))
	}
	s.routes[p] = objectsRoute
}

func objectsTarget(c echo.Context) (target, url.Values, error) {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return target{}, nil, err
	}
	tenant, namespace, err := pathScope(c)
	if err != nil {
		return target{}, nil, err
	}
	key, err := objectKey(c)
	if err != nil {
		return target{}, nil, err
	}
	return sfObjects.at(tenant, namespace, key), q, nil
}

// objectKey is the rest of the path after the namespace, decoded once (see pathParam) and
// validated as an identifier named "key".
func objectKey(c echo.Context) (string, error) {
	v := c.Param("*")
	if c.Request().URL.RawPath != "" {
		var err error
		if v, err = url.PathUnescape(v); err != nil {
			return "", badRequest("Invalid key: malformed escape")
		}
	}
	if v == "" {
		return "", badRequest("Missing key")
	}
	if err := checkIdent("key", v); err != nil {
		return "", err
	}
	return v, nil
}

func (s *Server) handleObject(method string) echo.HandlerFunc {
	return func(c echo.Context) error {
		t, q, err := objectsTarget(c)
		if err != nil {
			return err
		}
		op := OpRead
		switch method {
		case http.MethodPut, http.MethodDelete:
			op = OpWrite
		case http.MethodHead:
			op = OpInspect
		}
		if err := s.authorize(c, op, t, q, false, ""); err != nil {
			return err
		}
		switch method {
		case http.MethodGet:
			return s.serveObject(c, t)
		case http.MethodHead:
			return s.statObject(c, t, http.StatusOK)
		case http.MethodPut:
			if isDeleteMarkerType(c.Request().Header.Get("Content-Type")) {
				s.metrics.write(t.surface, resultRejected, 0)
				return badRequest("Invalid Content-Type: " + storage.ObjectDeletedContentType + " is reserved for delete markers")
			}
			return s.putBlob(c, t, putSpec{limit: s.limits.blob, success: http.StatusCreated})
		default:
			return s.deleteObject(c, t)
		}
	}
}

// deleteObject stores t's delete marker (see the comment at the top of the file).
func (s *Server) deleteObject(c echo.Context, t target) error {
	_, err := s.local.Put(c.Request().Context(), t.key, bytes.NewReader(nil), storage.PutOptions{
		ContentType: storage.ObjectDeletedContentType,
		Size:        0,
	})
	if err != nil && !errors.Is(err, storage.ErrStale) {
		// ErrStale: a namespace clean newer than this delete already removed the object.
		return s.writeFailed(t, "delete object", tooLargeMessage(s.limits.blob), err)
	}
	s.metrics.write(t.surface, resultDeleted, 0)
	return c.NoContent(http.StatusNoContent)
}

// isDeleteMarkerType reports whether a client's Content-Type names the delete marker.
func isDeleteMarkerType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == storage.ObjectDeletedContentType
}

// hiddenObject reports whether info is a delete marker, which every read answers as missing.
func hiddenObject(info storage.Info) bool {
	return info.Key.Kind == storage.KindObjects && info.ContentType == storage.ObjectDeletedContentType
}
