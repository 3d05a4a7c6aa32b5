package httpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestBazelCAS(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	blob := "hello-remote-cache\n"
	d := sha(blob)
	expectEmpty404(t, h.do("GET", "/cas/"+d, nil))
	expect(t, h.do("HEAD", "/cas/"+d, nil), http.StatusNotFound, "")
	expect(t, h.do("PUT", "/cas/"+d, blob), http.StatusOK, "")
	r := h.do("GET", "/cas/"+d, nil, "Accept-Encoding", "gzip")
	expect(t, r, http.StatusOK, blob)
	if r.header.Get("ETag") != `"`+d+`"` {
		t.Errorf("ETag = %q", r.header.Get("ETag"))
	}
	r = h.do("HEAD", "/cas/"+d, nil)
	expect(t, r, http.StatusOK, "")
	if r.header.Get("Content-Length") != "19" {
		t.Errorf("HEAD Content-Length = %q", r.header.Get("Content-Length"))
	}
	// Shared with REAPI: KindCAS, tenant = KURA_TENANT_ID, namespace "default", name = hex.
	if !h.stored(storage.Key{Tenant: testTenant, Namespace: "default", Kind: storage.KindCAS, Name: d}) {
		t.Fatal("CAS blob not stored as default/cas/<hex>")
	}
	// Re-upload of an existing blob: 200 without reading. (Bodies under 256 KiB are drained
	// by net/http after the answer to keep the connection alive unless the client asked for
	// 100-continue, so this uses Expect.)
	resp := h.rawRequest("PUT /cas/"+d+" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999\r\n", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("re-upload: %d", resp.StatusCode)
	}
}

func TestBazelCASHashMismatch(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	d := sha("expected")
	expectMessage(t, h.do("PUT", "/cas/"+d, "something else"), http.StatusBadRequest, "Digest mismatch")
	expectMessage(t, h.do("PUT", "/cas/"+d, strings.NewReader("chunked else")), http.StatusBadRequest, "Digest mismatch")
	if h.stored(storage.Key{Tenant: testTenant, Namespace: "default", Kind: storage.KindCAS, Name: d}) {
		t.Fatal("a mismatching body was stored")
	}
	expectEmpty404(t, h.do("GET", "/cas/"+d, nil))
	if got := counterValue(t, h.srv.metrics.writes, "cas", "bazel", "blob", "rejected"); got != 2 {
		t.Errorf("rejected = %v", got)
	}
}

func TestBazelEmptyBlobAlwaysPresent(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	empty := sha("")
	for _, p := range []string{"/cas/" + empty, "/inst1/cas/" + empty} {
		r := h.do("GET", p, nil)
		expect(t, r, http.StatusOK, "")
		if r.header.Get("Content-Length") != "0" || r.header.Get("ETag") != `"`+empty+`"` {
			t.Errorf("GET %s headers %v", p, r.header)
		}
		expect(t, h.do("HEAD", p, nil), http.StatusOK, "")
	}
	expect(t, h.do("PUT", "/cas/"+empty, ""), http.StatusOK, "")
	expectMessage(t, h.do("PUT", "/inst1/cas/"+empty, "not empty"), http.StatusBadRequest, "Digest mismatch")
}

func TestBazelActionCache(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	d := sha("action")
	expectEmpty404(t, h.do("GET", "/ac/"+d, nil))
	expect(t, h.do("PUT", "/ac/"+d, "result-v1"), http.StatusOK, "")
	expect(t, h.do("GET", "/ac/"+d, nil), http.StatusOK, "result-v1")
	// Action results are mutable: the last writer wins, and the body need not hash to the key.
	expect(t, h.do("PUT", "/ac/"+d, "result-v2"), http.StatusOK, "")
	expect(t, h.do("GET", "/ac/"+d, nil), http.StatusOK, "result-v2")
	expect(t, h.do("HEAD", "/ac/"+d, nil), http.StatusOK, "")
	if !h.stored(storage.Key{Tenant: testTenant, Namespace: "default", Kind: storage.KindAC, Name: d}) {
		t.Fatal("AC entry not stored as default/ac/<hex>")
	}
}

func TestBazelNamespacePrefix(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	blob := "in a namespace"
	d := sha(blob)
	expect(t, h.do("PUT", "/prefix/cas/"+d, blob), http.StatusOK, "")
	expect(t, h.do("GET", "/prefix/cas/"+d, nil), http.StatusOK, blob)
	expectEmpty404(t, h.do("GET", "/cas/"+d, nil))
	expectEmpty404(t, h.do("GET", "/other/cas/"+d, nil))
	// A namespace that shares a prefix with the API's static routes still routes to Bazel.
	expect(t, h.do("PUT", "/api/cas/"+d, blob), http.StatusOK, "")
	expect(t, h.do("GET", "/api/ac/"+d, nil), http.StatusNotFound, "")
	expect(t, h.do("PUT", "/v1/ac/"+d, "r"), http.StatusOK, "")
	for _, ns := range []string{"prefix", "api"} {
		if !h.stored(storage.Key{Tenant: testTenant, Namespace: ns, Kind: storage.KindCAS, Name: d}) {
			t.Errorf("not stored in namespace %q", ns)
		}
	}
	if !h.stored(storage.Key{Tenant: testTenant, Namespace: "v1", Kind: storage.KindAC, Name: d}) {
		t.Error("AC not stored in namespace v1")
	}
}

func TestBazelInvalidHash(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for _, bad := range []string{
		strings.ToUpper(sha("x")),
		sha("x")[:63],
		sha("x") + "0",
		"zz" + sha("x")[2:],
		sha("x") + "/extra",
	} {
		expectMessage(t, h.do("GET", "/cas/"+bad, nil), http.StatusBadRequest, "Invalid hash")
		expectMessage(t, h.do("PUT", "/ac/"+bad, "x"), http.StatusBadRequest, "Invalid hash")
	}
}
