package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// FuzzQueryAndKeys drives the edge parsing of untrusted identifiers: the query string (with
// legacy aliases), the module key triple and every per-protocol key shape. Whatever is
// accepted must be a valid storage identifier of the right shape; nothing may panic.
func FuzzQueryAndKeys(f *testing.F) {
	f.Add("tenant_id=acme&namespace_id=ios&hash=h&name=n", "abc")
	f.Add("account_handle=a&project_handle=b&hash=x&name=y&cache_category=c", "0123456789")
	f.Add("tenant_id=%zz", strings.Repeat("ab", 32))
	f.Add("tenant_id=a%00b&namespace_id=%FF", "12a")
	f.Add("tenant_id="+strings.Repeat("x", 1100)+"&namespace_id=n&hash=a/b&name=n", "")
	f.Fuzz(func(t *testing.T, rawQuery, key string) {
		q, err := parseQuery(rawQuery)
		if err == nil {
			if tenant, ns, err := tenantNamespace(q); err == nil {
				mustIdent(t, tenant)
				mustIdent(t, ns)
			}
			if tenant, ns, name, err := moduleKey(q); err == nil {
				mustIdent(t, tenant)
				mustIdent(t, ns)
				mustIdent(t, name)
				if strings.Count(name, "/") < 2 {
					t.Fatalf("module key %q lacks its category and hash", name)
				}
			}
			if n, err := parsePartNumber(q.Get(paramPartNumber)); err == nil && (n < 1 || n > storage.MaxPartNumber) {
				t.Fatalf("part number %d accepted", n)
			}
		}
		if isDecimal(key) && strings.Trim(key, "0123456789") != "" {
			t.Fatalf("isDecimal(%q)", key)
		}
		if isHex(key) && strings.Trim(strings.ToLower(key), "0123456789abcdef") != "" {
			t.Fatalf("isHex(%q)", key)
		}
		if isSHA256Hex(key) && (len(key) != 64 || strings.Trim(key, "0123456789abcdef") != "") {
			t.Fatalf("isSHA256Hex(%q)", key)
		}
		if err := checkIdent("key", key); err == nil {
			mustIdent(t, key)
		}
		// Path parameters, both as echo hands them out from a raw (escaped) path and from a
		// decoded one.
		for _, raw := range []bool{false, true} {
			req := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/x"}, Header: http.Header{}}
			if raw {
				req.URL.RawPath = "/x"
			}
			c := fuzzEcho.NewContext(req, nil)
			c.SetParamNames("id")
			c.SetParamValues(key)
			if v, err := pathParam(c, "id"); err == nil {
				mustIdent(t, v)
			}
		}
	})
}

var fuzzEcho = echo.New()

func mustIdent(t *testing.T, v string) {
	t.Helper()
	if v == "" || len(v) > storage.MaxIdentifierBytes || !utf8.ValidString(v) || strings.IndexByte(v, 0) >= 0 {
		t.Fatalf("invalid identifier %q accepted", v)
	}
}

// FuzzKeyValuePayload: any accepted payload has a valid cas_id and a canonical form that is
// a fixed point (decoding it again yields the same bytes).
func FuzzKeyValuePayload(f *testing.F) {
	f.Add([]byte(`{"cas_id":"c","entries":[{"value":"v"}]}`))
	f.Add([]byte(`{"entries":[],"cas_id":"x"}`))
	f.Add([]byte(`{"cas_id":"c","entries":[{"value":"\u2028<&>"}]} `))
	f.Add([]byte(`{"cas_id":"c","entries":null}`))
	f.Add([]byte("\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		casID, doc, err := decodeKeyValue(data)
		if err != nil {
			return
		}
		mustIdent(t, casID)
		id2, doc2, err := decodeKeyValue(doc)
		if err != nil || id2 != casID || !bytes.Equal(doc, doc2) {
			t.Fatalf("canonical form %q is not stable: %q %q %v", doc, id2, doc2, err)
		}
		var v keyValueDoc
		if err := json.Unmarshal(doc, &v); err != nil || v.Entries == nil {
			t.Fatalf("canonical form %q does not decode: %v", doc, err)
		}
	})
}

// FuzzCompletePayload: the completion list decoder never panics and never accepts a document
// without a parts array.
func FuzzCompletePayload(f *testing.F) {
	f.Add([]byte(`{"parts":[1,2,3]}`))
	f.Add([]byte(`{"parts":[]}`))
	f.Add([]byte(`{"parts":null}`))
	f.Add([]byte(`{"parts":[1.5]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		parts, err := decodeComplete(data)
		if err != nil {
			return
		}
		if parts == nil {
			t.Fatalf("accepted %q without a parts array", data)
		}
	})
}
