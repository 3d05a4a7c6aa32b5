package httpapi

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage"
)

func TestNxPutGet(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	hash := "10186433946781097919"
	body := "\x1f\x8b gzip'd tar"
	expect(t, h.do("PUT", "/v1/cache/"+hash, body, "Content-Type", "application/octet-stream", "Authorization", "Bearer s3cret"), http.StatusOK, "")
	if !h.stored(storage.Key{Tenant: testTenant, Namespace: "nx", Kind: storage.KindNx, Name: hash}) {
		t.Fatal("not stored under KURA_TENANT_ID/nx")
	}
	r := h.do("GET", "/v1/cache/"+hash, nil, "Accept", "application/octet-stream")
	expect(t, r, http.StatusOK, body)
	if r.header.Get("Content-Encoding") != "" {
		t.Error("Content-Encoding set")
	}
	// Existing hash: 409, never overwritten.
	expect(t, h.do("PUT", "/v1/cache/"+hash, "other"), http.StatusConflict, "")
	expect(t, h.do("GET", "/v1/cache/"+hash, nil), http.StatusOK, body)
	// ... and answered without the body being sent.
	resp := h.rawRequest("PUT /v1/cache/"+hash+" HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n", nil)
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("raw PUT of an existing hash: %d, want 409", resp.StatusCode)
	}
	expectEmpty404(t, h.do("GET", "/v1/cache/5703458017025013870", nil))
}

func TestNxContentLengthAndHash(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	// Chunked (no Content-Length): 400.
	expectMessage(t, h.do("PUT", "/v1/cache/123", strings.NewReader("abc")), http.StatusBadRequest, "Missing or invalid Content-Length")
	// No Content-Length header at all (and no body): 400.
	resp := h.rawRequest("PUT /v1/cache/124 HTTP/1.1\r\nHost: x\r\n", nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("PUT without Content-Length: %d, want 400", resp.StatusCode)
	}
	// A malformed Content-Length never reaches the handler; net/http answers 400 itself.
	resp = h.rawRequest("PUT /v1/cache/125 HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n", nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("PUT with a bad Content-Length: %d, want 400", resp.StatusCode)
	}
	// An empty body with Content-Length: 0 is a valid entry.
	expect(t, h.do("PUT", "/v1/cache/126", ""), http.StatusOK, "")
	for _, bad := range []string{"abc", "12a", "-1", "0x10", "1%2F2"} {
		expectMessage(t, h.do("PUT", "/v1/cache/"+bad, "x"), http.StatusBadRequest, "Invalid hash")
		expectMessage(t, h.do("GET", "/v1/cache/"+bad, nil), http.StatusBadRequest, "Invalid hash")
	}
	for _, k := range []string{"123", "124", "125"} {
		if h.stored(storage.Key{Tenant: testTenant, Namespace: "nx", Kind: storage.KindNx, Name: k}) {
			t.Errorf("%s stored after a 400", k)
		}
	}
}

func TestNxScopedPath(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("PUT", "/api/nx/acme/web/v1/cache/42", "scoped"), http.StatusOK, "")
	expect(t, h.do("GET", "/api/nx/acme/web/v1/cache/42", nil), http.StatusOK, "scoped")
	expectEmpty404(t, h.do("GET", "/v1/cache/42", nil))
	expectEmpty404(t, h.do("GET", "/api/nx/acme/other/v1/cache/42", nil))
	expectEmpty404(t, h.do("GET", "/api/nx/other/web/v1/cache/42", nil))
	expect(t, h.do("PUT", "/api/nx/acme/web/v1/cache/42", "again"), http.StatusConflict, "")
	if !h.stored(storage.Key{Tenant: "acme", Namespace: "web", Kind: storage.KindNx, Name: "42"}) {
		t.Fatal("not stored under the path's tenant and namespace")
	}
}

// TestNxDenialsArePlainText: Nx needs text/plain on 401 (it prints the body) and ignores 403 on
// PUT; both must never be JSON.
func TestNxDenialsArePlainText(t *testing.T) {
	g := &recordingGuard{decide: func(r policy.Request) policy.Decision {
		switch firstValue(r.Headers, "authorization") {
		case "Bearer good":
			return policy.Decision{Allowed: true}
		case "Bearer readonly":
			if r.Operation == OpWrite {
				return policy.Decision{Status: http.StatusForbidden, Message: "Token is read-only"}
			}
			return policy.Decision{Allowed: true}
		}
		return policy.Decision{Status: http.StatusUnauthorized, Message: "Missing or invalid access token"}
	}}
	h := newHarness(t, harnessOpts{guard: g})
	for _, c := range []struct {
		method, token, body string
		status              int
		msg                 string
	}{
		{"GET", "", "", 401, "Missing or invalid access token"},
		{"PUT", "Bearer bad", "x", 401, "Missing or invalid access token"},
		{"PUT", "Bearer readonly", "x", 403, "Token is read-only"},
	} {
		var body any
		if c.body != "" {
			body = c.body
		}
		r := h.do(c.method, "/v1/cache/77", body, "Authorization", c.token)
		if r.status != c.status {
			t.Fatalf("%s with %q: %d, want %d", c.method, c.token, r.status, c.status)
		}
		if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Fatalf("%s with %q: Content-Type %q, want text/plain", c.method, c.token, ct)
		}
		if strings.TrimSpace(string(r.body)) != c.msg {
			t.Fatalf("%s with %q: body %q", c.method, c.token, r.body)
		}
	}
	if h.stored(storage.Key{Tenant: testTenant, Namespace: "nx", Kind: storage.KindNx, Name: "77"}) {
		t.Fatal("a denied PUT stored the object")
	}
	expect(t, h.do("PUT", "/v1/cache/77", "ok", "Authorization", "Bearer good"), http.StatusOK, "")
	expect(t, h.do("GET", "/v1/cache/77", nil, "Authorization", "Bearer readonly"), http.StatusOK, "ok")
	req := g.last(t)
	if req.Producer != "nx" || req.NamespaceID != "nx" || req.TenantID != testTenant || req.ArtifactKey != "77" ||
		req.Operation != OpRead || req.Route != "/v1/cache/{hash}" || req.ArtifactClass != "blob" {
		t.Fatalf("guard request = %+v", req)
	}
}

// TestNxStoreFailureIsARealError: Nx fails a run on any unexpected GET status, so a store
// failure must be a 503, never a fake miss.
func TestNxStoreFailureIsARealError(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	expect(t, h.do("PUT", "/v1/cache/9", "x"), http.StatusOK, "")
	fs.set(func(f *faultStore) { f.openErr = storage.ErrUnavailable })
	expectMessage(t, h.do("GET", "/v1/cache/9", nil), http.StatusServiceUnavailable, "Storage unavailable")
	fs.set(func(f *faultStore) { f.openErr = errors.New("disk on fire") })
	expectMessage(t, h.do("GET", "/v1/cache/9", nil), http.StatusServiceUnavailable, "Storage unavailable")
	fs.set(func(f *faultStore) { f.openErr = nil })
	r := h.do("GET", "/v1/cache/9", nil)
	expect(t, r, http.StatusOK, "x")
	if got := counterValue(t, h.srv.metrics.reads, "nx", "nx", "blob", "error"); got != 2 {
		t.Errorf("nx read errors = %v, want 2", got)
	}
}
