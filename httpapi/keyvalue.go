package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// Keyvalue (Tuist action-cache style entries): PUT /api/cache/keyvalue?tenant_id&namespace_id
// with {"cas_id":"…","entries":[{"value":"…"},…]} and GET /api/cache/keyvalue/{cas_id}. The
// document is decoded strictly, re-encoded canonically and stored whole under cas_id; the last
// writer wins. The body is capped at KURA_MAX_KEYVALUE_BYTES while it is read.

func (s *Server) registerKeyValue() {
	s.route(http.MethodPut, "/api/cache/keyvalue", s.handleKeyValuePut)
	s.route(http.MethodGet, "/api/cache/keyvalue/:cas_id", s.handleKeyValueGet)
}

type keyValueEntryIn struct {
	Value *string `json:"value"`
}

type keyValueDocIn struct {
	CasID   *string            `json:"cas_id"`
	Entries *[]keyValueEntryIn `json:"entries"`
}

type keyValueEntry struct {
	Value string `json:"value"`
}

type keyValueDoc struct {
	CasID   string          `json:"cas_id"`
	Entries []keyValueEntry `json:"entries"`
}

// decodeKeyValue validates a keyvalue payload and returns its cas_id and canonical encoding.
// Errors are client-facing descriptions of what is wrong.
func decodeKeyValue(data []byte) (string, []byte, error) {
	if !utf8.Valid(data) {
		return "", nil, errors.New("payload is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var in keyValueDocIn
	if err := dec.Decode(&in); err != nil {
		return "", nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "", nil, errors.New("unexpected data after the JSON document")
	}
	if in.CasID == nil {
		return "", nil, errors.New("cas_id is required")
	}
	if err := storage.ValidateIdentifier("cas_id", *in.CasID); err != nil {
		return "", nil, errors.New(sentinelDetail(err, storage.ErrInvalidKey, "invalid cas_id"))
	}
	if in.Entries == nil {
		return "", nil, errors.New("entries is required")
	}
	out := keyValueDoc{CasID: *in.CasID, Entries: make([]keyValueEntry, 0, len(*in.Entries))}
	for i, e := range *in.Entries {
		if e.Value == nil {
			return "", nil, fmt.Errorf("entries[%d].value is required", i)
		}
		out.Entries = append(out.Entries, keyValueEntry{Value: *e.Value})
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		return "", nil, fmt.Errorf("encode canonical document: %w", err)
	}
	return out.CasID, bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func (s *Server) handleKeyValuePut(c echo.Context) error {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return err
	}
	tenant, namespace, err := tenantNamespace(q)
	if err != nil {
		return err
	}
	// The policy runs before the body is read (an unauthenticated client must not make us read
	// a megabyte), so it sees no artifact key here.
	t := sfKeyValue.at(tenant, namespace, "")
	if err := s.authorize(c, OpWrite, t, q, false, ""); err != nil {
		return err
	}
	limit := s.limits.keyValue
	data, err := s.readCapped(c, limit)
	if err != nil {
		s.metrics.write(t.surface, resultRejected, 0)
		return err
	}
	casID, doc, err := decodeKeyValue(data)
	if err != nil {
		s.metrics.write(t.surface, resultRejected, 0)
		return badRequest("Invalid key-value payload: " + err.Error())
	}
	// Re-encoding can lengthen rare escapes; the stored document must still fit the limit
	// because replication enforces the same one on the receiving node.
	if int64(len(doc)) > limit {
		s.metrics.write(t.surface, resultRejected, 0)
		return &apiError{status: http.StatusRequestEntityTooLarge, message: tooLargeMessage(limit)}
	}
	t.key.Name = casID
	res, err := s.local.Put(c.Request().Context(), t.key, bytes.NewReader(doc), storage.PutOptions{
		ContentType: echo.MIMEApplicationJSON,
		Size:        int64(len(doc)),
		Limit:       limit,
	})
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrStale):
		s.metrics.write(t.surface, resultExists, 0)
		return c.NoContent(http.StatusNoContent)
	default:
		return s.writeFailed(t, "store key-value entry", tooLargeMessage(limit), err)
	}
	if res.Created {
		s.metrics.write(t.surface, resultStored, res.Info.Size)
	} else {
		s.metrics.write(t.surface, resultExists, 0) // a newer version was already stored
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) handleKeyValueGet(c echo.Context) error {
	t, q, err := queryScoped(c, sfKeyValue, "cas_id")
	if err != nil {
		return err
	}
	if err := s.authorize(c, OpRead, t, q, false, ""); err != nil {
		return err
	}
	return s.serveObject(c, t)
}
