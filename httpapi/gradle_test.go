package httpapi

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

func TestGradleBothForms(t *testing.T) {
	g := &recordingGuard{}
	h := newHarness(t, harnessOpts{guard: g})
	key := "26559688abc8f0263b527eeb04e8ef80"
	// Stock Gradle: key appended to the URL, Basic credentials sent pre-emptively.
	r := h.do("PUT", "/api/cache/gradle/acme/android/"+key, "gradle-entry",
		"Content-Type", "application/vnd.gradle.build-cache-artifact.v1", "Authorization", "Basic dXNlcjpwYXNz")
	expect(t, r, http.StatusCreated, "")
	req := g.last(t)
	if firstValue(req.Headers, "authorization") != "Basic dXNlcjpwYXNz" || req.Operation != OpWrite || req.Producer != "gradle" ||
		req.TenantID != "acme" || req.NamespaceID != "android" || req.ArtifactKey != key ||
		req.Route != "/api/cache/gradle/{tenant_id}/{namespace_id}/{cache_key}" {
		t.Fatalf("guard request = %+v", req)
	}
	r = h.do("GET", "/api/cache/gradle/acme/android/"+key, nil)
	expect(t, r, http.StatusOK, "gradle-entry")
	if ct := r.header.Get("Content-Type"); ct != "application/vnd.gradle.build-cache-artifact.v1" {
		t.Errorf("Content-Type = %q", ct)
	}
	// The query form names the same object.
	expect(t, h.do("GET", "/api/cache/gradle/"+key+"?tenant_id=acme&namespace_id=android", nil), http.StatusOK, "gradle-entry")
	expect(t, h.do("GET", "/api/cache/gradle/"+key+"?account_handle=acme&project_handle=android", nil), http.StatusOK, "gradle-entry")
	expect(t, h.do("PUT", "/api/cache/gradle/k2?tenant_id=acme&namespace_id=android", "q-form"), http.StatusCreated, "")
	expect(t, h.do("GET", "/api/cache/gradle/acme/android/k2", nil), http.StatusOK, "q-form")
	// Misses and isolation.
	expectEmpty404(t, h.do("GET", "/api/cache/gradle/acme/ios/"+key, nil))
	expectEmpty404(t, h.do("GET", "/api/cache/gradle/other/android/"+key, nil))
	expectMessage(t, h.do("GET", "/api/cache/gradle/"+key+"?tenant_id=acme", nil), http.StatusBadRequest, "Missing namespace_id")
	expectMessage(t, h.do("PUT", "/api/cache/gradle/"+key, "x"), http.StatusBadRequest, "Missing tenant_id")
	// An existing entry: 201 again, first writer wins.
	expect(t, h.do("PUT", "/api/cache/gradle/acme/android/"+key, "other"), http.StatusCreated, "")
	expect(t, h.do("GET", "/api/cache/gradle/acme/android/"+key, nil), http.StatusOK, "gradle-entry")
}

// TestGradleLimit: 413 only when the body really is larger than the limit (Gradle 4.x turns
// the remote cache off after one 413).
func TestGradleLimit(t *testing.T) {
	const limit = 4096
	h := newHarness(t, harnessOpts{limits: func(l *limits) { l.gradle = limit }})
	base := "/api/cache/gradle/acme/android/"
	expect(t, h.do("PUT", base+"exact", strings.Repeat("g", limit)), http.StatusCreated, "")
	expect(t, h.do("PUT", base+"chunked-exact", io.LimitReader(zeroes{}, limit)), http.StatusCreated, "")
	expectMessage(t, h.do("PUT", base+"over", strings.Repeat("g", limit+1)), http.StatusRequestEntityTooLarge, "Request body exceeds")
	expectMessage(t, h.do("PUT", base+"chunked-over", io.LimitReader(zeroes{}, limit+1)), http.StatusRequestEntityTooLarge, "Request body exceeds")
	for name, want := range map[string]bool{"exact": true, "chunked-exact": true, "over": false, "chunked-over": false} {
		if got := h.stored(storage.Key{Tenant: "acme", Namespace: "android", Kind: storage.KindGradle, Name: name}); got != want {
			t.Errorf("%s stored = %v, want %v", name, got, want)
		}
	}
}

func TestGradleDefaultLimitIs100MiB(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	if h.srv.limits.gradle != 100<<20 {
		t.Fatalf("gradle limit = %d", h.srv.limits.gradle)
	}
	resp := h.rawRequest("PUT /api/cache/gradle/acme/android/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 104857601\r\n", nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status = %d, want 413 for 100 MiB + 1", resp.StatusCode)
	}
}
