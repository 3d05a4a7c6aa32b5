package httpapi

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

func TestKeyValueRoundTrip(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	q := "?tenant_id=acme&namespace_id=ios"
	// Whitespace and key order are not preserved: the canonical document is stored.
	in := `{ "entries": [ {"value":"hello"}, {"value":"wörld <&>"} ],  "cas_id": "cas-1" }`
	expect(t, h.do("PUT", "/api/cache/keyvalue"+q, in, "Content-Type", "application/json"), http.StatusNoContent, "")
	r := h.do("GET", "/api/cache/keyvalue/cas-1"+q, nil)
	expect(t, r, http.StatusOK, `{"cas_id":"cas-1","entries":[{"value":"hello"},{"value":"wörld <&>"}]}`)
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if r.header.Get("ETag") == "" {
		t.Error("no ETag")
	}
	// Last writer wins.
	expect(t, h.do("PUT", "/api/cache/keyvalue"+q, `{"cas_id":"cas-1","entries":[]}`), http.StatusNoContent, "")
	expect(t, h.do("GET", "/api/cache/keyvalue/cas-1"+q, nil), http.StatusOK, `{"cas_id":"cas-1","entries":[]}`)
	// Other tenant, other namespace, unknown id: 404.
	expectEmpty404(t, h.do("GET", "/api/cache/keyvalue/cas-1?tenant_id=other&namespace_id=ios", nil))
	expectEmpty404(t, h.do("GET", "/api/cache/keyvalue/cas-1?tenant_id=acme&namespace_id=macos", nil))
	expectEmpty404(t, h.do("GET", "/api/cache/keyvalue/cas-2"+q, nil))
	// Aliases.
	expect(t, h.do("GET", "/api/cache/keyvalue/cas-1?account_handle=acme&project_handle=ios", nil), http.StatusOK, "-")
	expectMessage(t, h.do("PUT", "/api/cache/keyvalue?tenant_id=acme", `{}`), http.StatusBadRequest, "Missing namespace_id")
	expectMessage(t, h.do("GET", "/api/cache/keyvalue/cas-1?namespace_id=ios", nil), http.StatusBadRequest, "Missing tenant_id")
}

func TestKeyValueInvalidPayloads(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	q := "?tenant_id=acme&namespace_id=ios"
	cases := map[string]string{
		"not json":          `hello`,
		"empty body":        ``,
		"array":             `[1,2]`,
		"null document":     `null`,
		"missing cas_id":    `{"entries":[]}`,
		"empty cas_id":      `{"cas_id":"","entries":[]}`,
		"numeric cas_id":    `{"cas_id":1,"entries":[]}`,
		"missing entries":   `{"cas_id":"c"}`,
		"null entries":      `{"cas_id":"c","entries":null}`,
		"entries object":    `{"cas_id":"c","entries":{}}`,
		"entry missing val": `{"cas_id":"c","entries":[{}]}`,
		"entry null val":    `{"cas_id":"c","entries":[{"value":null}]}`,
		"entry number":      `{"cas_id":"c","entries":[{"value":3}]}`,
		"unknown field":     `{"cas_id":"c","entries":[],"extra":1}`,
		"unknown entry fld": `{"cas_id":"c","entries":[{"value":"v","x":1}]}`,
		"trailing data":     `{"cas_id":"c","entries":[]} {}`,
		"truncated":         `{"cas_id":"c","entries":[`,
		"invalid utf8":      "{\"cas_id\":\"c\xff\",\"entries\":[]}",
		"nul in cas_id":     `{"cas_id":"a\u0000b","entries":[]}`,
		"long cas_id":       `{"cas_id":"` + strings.Repeat("x", 1025) + `","entries":[]}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			expectMessage(t, h.do("PUT", "/api/cache/keyvalue"+q, body), http.StatusBadRequest, "Invalid key-value payload: ")
		})
	}
	if h.stored(storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindKeyValue, Name: "c"}) {
		t.Fatal("an invalid payload was stored")
	}
}

func TestKeyValueLimit(t *testing.T) {
	const limit = 200
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.MaxKeyValueBytes = limit }})
	q := "?tenant_id=acme&namespace_id=ios"
	doc := func(n int) string {
		prefix := `{"cas_id":"big","entries":[{"value":"`
		suffix := `"}]}`
		return prefix + strings.Repeat("v", n-len(prefix)-len(suffix)) + suffix
	}
	expect(t, h.do("PUT", "/api/cache/keyvalue"+q, doc(limit)), http.StatusNoContent, "")
	expectMessage(t, h.do("PUT", "/api/cache/keyvalue"+q, strings.Replace(doc(limit+1), "big", "bog", 1)),
		http.StatusRequestEntityTooLarge, "Request body exceeds the 200-byte limit")
	// Chunked: the cap applies while streaming, the rest is never read.
	expectMessage(t, h.do("PUT", "/api/cache/keyvalue"+q, io.MultiReader(strings.NewReader(`{"cas_id":"bog","entries":[{"value":"`), zeroes{})),
		http.StatusRequestEntityTooLarge, "Request body exceeds")
	if h.stored(storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindKeyValue, Name: "bog"}) {
		t.Fatal("an over-limit payload was stored")
	}
	// A document that fits when sent but not once canonicalised: U+2028 is re-escaped to six
	// bytes, and replication enforces the same limit on the stored form.
	grow := `{"cas_id":"g","entries":[{"value":"` + strings.Repeat("\u2028", 50) + `"}]}`
	if len(grow) > limit {
		t.Fatalf("test document is %d bytes, must fit the limit", len(grow))
	}
	expectMessage(t, h.do("PUT", "/api/cache/keyvalue"+q, grow), http.StatusRequestEntityTooLarge, "Request body exceeds")
}
