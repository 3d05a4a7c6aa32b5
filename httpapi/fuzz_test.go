package httpapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
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

// FuzzTurboAndObjectRequests sends whole requests, as they arrive on the wire, to the
// Turborepo surface (/v8/artifacts/{hash}?teamId|slug with x-artifact-duration and
// x-artifact-tag) and to the plain-object surface ccache uses (/api/cache/objects/{tenant}/
// {namespace}/{key…}). Whatever the path, query and headers, the server never panics and
// never answers 5xx over a healthy store; what it accepts reads back byte for byte at the
// same address, with turbo's metadata as normalised on upload.
func FuzzTurboAndObjectRequests(f *testing.F) {
	f.Add(false, "0123abcdef", "teamId=team_acme", "1200", "c2lnbmF0dXJl", []byte("artifact"))
	f.Add(false, "ABCdef", "slug=acme&teamId=", "", "", []byte{})
	f.Add(false, "..%2f..%2fetc", "slug=../x", "-1", "\x00", []byte("x"))
	f.Add(true, "default/ccache/ab/cdef0123456789", "", "", "", []byte("ccache entry"))
	f.Add(true, "default/ccache/%2e%2e/%2e%2e/passwd", "", "", "", []byte("x"))
	f.Add(true, "default/ns/a%00b", "", "", "", []byte("x"))
	f.Add(true, "default/ns/"+strings.Repeat("k", 1100), "", "", "", []byte("x"))
	f.Fuzz(func(t *testing.T, objects bool, path, query, duration, tag string, body []byte) {
		// A store of its own per input: turbo's artifacts are first-writer-wins, so an
		// earlier input's upload under the same hash would (rightly) keep its body.
		mem := storagetest.NewMemory()
		reg := prometheus.NewRegistry()
		srv, err := New(Config{TenantID: testTenant, NodeName: "node-a", NodeURL: "http://node-a:4000"},
			Deps{Store: mem, Multipart: mem, Registerer: reg, Gatherer: reg})
		if err != nil {
			t.Fatal(err)
		}
		handler := srv.Handler()
		target := "/v8/artifacts/" + path
		if objects {
			target = "/api/cache/objects/" + path
		}
		if query != "" {
			target += "?" + query
		}
		if strings.ContainsAny(target+duration+tag, "\r\n") {
			return // would end the line early: another request than the one described
		}
		var raw bytes.Buffer
		fmt.Fprintf(&raw, "PUT %s HTTP/1.1\r\nHost: kura\r\nContent-Length: %d\r\n", target, len(body))
		if duration != "" {
			fmt.Fprintf(&raw, "x-artifact-duration: %s\r\n", duration)
		}
		if tag != "" {
			fmt.Fprintf(&raw, "x-artifact-tag: %s\r\n", tag)
		}
		raw.WriteString("\r\n")
		raw.Write(body)
		put, err := http.ReadRequest(bufio.NewReader(&raw))
		if err != nil {
			return // not a request a server would ever parse
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, put)
		if rec.Code >= 500 {
			t.Fatalf("PUT %q: status %d over a healthy store: %s", target, rec.Code, rec.Body)
		}
		if rec.Code/100 != 2 {
			return
		}
		// The GET names the very same request target, as a client repeating it would.
		get, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: kura\r\n\r\n")))
		if err != nil {
			t.Fatalf("PUT %q was accepted but the same target does not make a GET: %v", target, err)
		}
		rec = httptest.NewRecorder()
		handler.ServeHTTP(rec, get)
		if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), body) {
			t.Fatalf("PUT %q accepted (%d bytes) but GET %q answers %d with %d bytes", target, len(body), get.URL, rec.Code, rec.Body.Len())
		}
		if !objects {
			if d := rec.Header().Get(headerTurboDuration); d != "" && strings.Trim(d, "0123456789") != "" {
				t.Fatalf("stored duration %q is not a whole number", d)
			}
			if got := rec.Header().Get(headerTurboTag); got != strings.TrimSpace(tag) && got != "" {
				t.Fatalf("tag %q came back as %q", tag, got)
			}
		}
	})
}
