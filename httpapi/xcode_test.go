package httpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

func xcodeKey(tenant, ns, id string) storage.Key {
	return storage.Key{Tenant: tenant, Namespace: ns, Kind: storage.KindXcode, Name: id}
}

func TestXcodeRoundTrip(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	body := "xcode-binary"
	expect(t, h.do("POST", "/api/cache/cas/artifact-1?tenant_id=acme&namespace_id=ios", body,
		"Content-Type", "application/x-xcode"), http.StatusNoContent, "")
	r := h.do("GET", "/api/cache/cas/artifact-1?tenant_id=acme&namespace_id=ios", nil)
	expect(t, r, http.StatusOK, body)
	sum := sha256.Sum256([]byte(body))
	if got, want := r.header.Get("ETag"), `"`+hex.EncodeToString(sum[:])+`"`; got != want {
		t.Errorf("ETag = %q, want %q", got, want)
	}
	if got := r.header.Get("Content-Length"); got != fmt.Sprint(len(body)) {
		t.Errorf("Content-Length = %q", got)
	}
	if got := r.header.Get("Content-Type"); got != "application/x-xcode" {
		t.Errorf("Content-Type = %q, want the stored one", got)
	}
	// If-None-Match with the ETag: 304 without a body.
	expect(t, h.do("GET", "/api/cache/cas/artifact-1?tenant_id=acme&namespace_id=ios", nil,
		"If-None-Match", r.header.Get("ETag")), http.StatusNotModified, "")
	// Missing object: 404, empty body.
	expectEmpty404(t, h.do("GET", "/api/cache/cas/other?tenant_id=acme&namespace_id=ios", nil))
}

func TestXcodeLegacyAliases(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("POST", "/api/cache/cas/a1?account_handle=acme&project_handle=ios", "data"), http.StatusNoContent, "")
	// Written through the aliases, read through the canonical names: same object.
	expect(t, h.do("GET", "/api/cache/cas/a1?tenant_id=acme&namespace_id=ios", nil), http.StatusOK, "data")
	if !h.stored(xcodeKey("acme", "ios", "a1")) {
		t.Fatal("object not stored under the aliased tenant and namespace")
	}
}

// TestPathKeysDecodedOnce: escapes in a path key are decoded exactly once, whether or not
// the path needed its raw form for routing.
func TestPathKeysDecodedOnce(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	q := "?tenant_id=acme&namespace_id=ios"
	for raw, name := range map[string]string{
		"a%2525b":       "a%25b",
		"a%25b":         "a%b",
		"a%2Fb":         "a/b",
		"sp%20ace":      "sp ace",
		"%C3%A9t%C3%A9": "été",
	} {
		expect(t, h.do("POST", "/api/cache/cas/"+raw+q, raw), http.StatusNoContent, "")
		if !h.stored(xcodeKey("acme", "ios", name)) {
			t.Errorf("%s: not stored as %q", raw, name)
		}
		expect(t, h.do("GET", "/api/cache/cas/"+raw+q, nil), http.StatusOK, raw)
	}
	expect(t, h.do("PUT", "/api/nx/ac%2Fme/web/v1/cache/1", "x"), http.StatusOK, "")
	if !h.stored(storage.Key{Tenant: "ac/me", Namespace: "web", Kind: storage.KindNx, Name: "1"}) {
		t.Error("escaped tenant segment not decoded")
	}
}

func TestXcodeTenantIsolation(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("POST", "/api/cache/cas/same?tenant_id=a&namespace_id=ios", "tenant-a"), http.StatusNoContent, "")
	expectEmpty404(t, h.do("GET", "/api/cache/cas/same?tenant_id=b&namespace_id=ios", nil))
	expect(t, h.do("POST", "/api/cache/cas/same?tenant_id=b&namespace_id=ios", "tenant-b"), http.StatusNoContent, "")
	expect(t, h.do("GET", "/api/cache/cas/same?tenant_id=a&namespace_id=ios", nil), http.StatusOK, "tenant-a")
	expect(t, h.do("GET", "/api/cache/cas/same?tenant_id=b&namespace_id=ios", nil), http.StatusOK, "tenant-b")
}

func TestXcodeMissingAndInvalidParameters(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	long := strings.Repeat("k", storage.MaxIdentifierBytes+1)
	cases := []struct {
		method, path, msg string
	}{
		{"POST", "/api/cache/cas/a?namespace_id=ios", "Missing tenant_id"},
		{"GET", "/api/cache/cas/a?tenant_id=acme", "Missing namespace_id"},
		{"GET", "/api/cache/cas/a?tenant_id=&namespace_id=ios", "Missing tenant_id"},
		{"GET", "/api/cache/cas/" + long + "?tenant_id=acme&namespace_id=ios", "Invalid id"},
		{"POST", "/api/cache/cas/a%00b?tenant_id=acme&namespace_id=ios", "Invalid id"},
		{"POST", "/api/cache/cas/a%FFb?tenant_id=acme&namespace_id=ios", "Invalid id"},
		{"GET", "/api/cache/cas/a?tenant_id=" + long + "&namespace_id=ios", "Invalid tenant_id"},
		{"GET", "/api/cache/cas/a?tenant_id=ac%00me&namespace_id=ios", "Invalid tenant_id"},
		{"GET", "/api/cache/cas/a?tenant_id=acme&namespace_id=%FF", "Invalid namespace_id"},
		{"GET", "/api/cache/cas/a?tenant_id=%zz&namespace_id=ios", "Invalid query string"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.msg, func(t *testing.T) {
			expectMessage(t, h.do(c.method, c.path, "x"), http.StatusBadRequest, c.msg)
		})
	}
	if h.stored(xcodeKey("acme", "ios", "a")) {
		t.Fatal("an object was stored by a rejected request")
	}
}

func TestXcodeLimit(t *testing.T) {
	const limit = 1024
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.MaxXcodeBytes = limit }})
	q := "?tenant_id=acme&namespace_id=ios"
	// Exactly the limit is accepted.
	expect(t, h.do("POST", "/api/cache/cas/exact"+q, strings.Repeat("a", limit)), http.StatusNoContent, "")
	// One byte over, declared: 413 at once, nothing stored.
	expectMessage(t, h.do("POST", "/api/cache/cas/over"+q, strings.Repeat("a", limit+1)),
		http.StatusRequestEntityTooLarge, "Request body exceeds the 1024-byte limit")
	// One byte over, chunked (no Content-Length): caught while streaming, nothing stored.
	expectMessage(t, h.do("POST", "/api/cache/cas/over-chunked"+q, io.LimitReader(zeroes{}, limit+1)),
		http.StatusRequestEntityTooLarge, "Request body exceeds")
	for _, id := range []string{"over", "over-chunked"} {
		if h.stored(xcodeKey("acme", "ios", id)) {
			t.Errorf("%s was stored despite the 413", id)
		}
	}
	if !h.stored(xcodeKey("acme", "ios", "exact")) {
		t.Error("a body of exactly the limit was not stored")
	}
	if got := counterValue(t, h.srv.metrics.writes, "xcode", "xcode", "blob", "rejected"); got != 2 {
		t.Errorf("rejected writes = %v, want 2", got)
	}
}

// TestHugeDeclaredLengthRejectedWithoutBody sends only headers declaring 10 GiB: the answer
// must come back without the client sending a single body byte.
func TestHugeDeclaredLengthRejectedWithoutBody(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	paths := []string{
		"POST /api/cache/cas/huge?tenant_id=acme&namespace_id=ios",
		"PUT /api/cache/gradle/abc?tenant_id=acme&namespace_id=android",
		"PUT /v1/cache/123",
		"PUT /api/metro/cache/abcd",
		"PUT /cas/" + strings.Repeat("ab", 32),
		"PUT /ac/" + strings.Repeat("ab", 32),
		"PUT /api/cache/keyvalue?tenant_id=acme&namespace_id=ios",
	}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			resp := h.rawRequest(p+" HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n", nil)
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("status = %d, want 413", resp.StatusCode)
			}
		})
	}
}

// TestExistingImmutableKeyAnsweredWithoutBody: an existing key is answered with the success
// status before any body byte is sent.
func TestExistingImmutableKeyAnsweredWithoutBody(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("POST", "/api/cache/cas/dup?tenant_id=acme&namespace_id=ios", "first"), http.StatusNoContent, "")
	resp := h.rawRequest("POST /api/cache/cas/dup?tenant_id=acme&namespace_id=ios HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n", nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("status = %d, want 204", resp.StatusCode)
	}
	// First writer wins.
	expect(t, h.do("POST", "/api/cache/cas/dup?tenant_id=acme&namespace_id=ios", "second"), http.StatusNoContent, "")
	expect(t, h.do("GET", "/api/cache/cas/dup?tenant_id=acme&namespace_id=ios", nil), http.StatusOK, "first")
	if got := counterValue(t, h.srv.metrics.writes, "xcode", "xcode", "blob", "exists"); got != 2 {
		t.Errorf("exists writes = %v, want 2", got)
	}
}

// zeroes is an endless reader of 'z' bytes.
type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'z'
	}
	return len(p), nil
}
