package httpapi

import (
	"net/http"
	"testing"

	"github.com/kuracache/kura/storage"
)

func TestCleanNamespace(t *testing.T) {
	g := &recordingGuard{}
	h := newHarness(t, harnessOpts{guard: g})
	d := sha("blob")
	expect(t, h.do("POST", "/api/cache/cas/x?tenant_id=acme&namespace_id=ios", "x"), http.StatusNoContent, "")
	expect(t, h.do("PUT", "/api/cache/gradle/acme/ios/k", "g"), http.StatusCreated, "")
	expect(t, h.do("PUT", "/api/cache/keyvalue?tenant_id=acme&namespace_id=ios", `{"cas_id":"c","entries":[]}`), http.StatusNoContent, "")
	expect(t, h.do("PUT", "/api/nx/acme/ios/v1/cache/1", "n"), http.StatusOK, "")
	expect(t, h.do("POST", "/api/cache/cas/x?tenant_id=acme&namespace_id=android", "keep"), http.StatusNoContent, "")
	expect(t, h.do("POST", "/api/cache/cas/x?tenant_id=other&namespace_id=ios", "keep"), http.StatusNoContent, "")
	expect(t, h.do("PUT", "/cas/"+d, "blob", "X", "y"), http.StatusOK, "")

	expectMessage(t, h.do("DELETE", "/api/cache/clean?tenant_id=acme", nil), http.StatusBadRequest, "Missing namespace_id")
	expectMessage(t, h.do("DELETE", "/api/cache/clean?namespace_id=ios", nil), http.StatusBadRequest, "Missing tenant_id")
	expect(t, h.do("DELETE", "/api/cache/clean?account_handle=acme&project_handle=ios", nil), http.StatusNoContent, "")
	req := g.last(t)
	if req.Operation != OpNamespaceDelete || req.TenantID != "acme" || req.NamespaceID != "ios" || req.Route != "/api/cache/clean" {
		t.Fatalf("guard request = %+v", req)
	}

	gone := []storage.Key{
		{Tenant: "acme", Namespace: "ios", Kind: storage.KindXcode, Name: "x"},
		{Tenant: "acme", Namespace: "ios", Kind: storage.KindGradle, Name: "k"},
		{Tenant: "acme", Namespace: "ios", Kind: storage.KindKeyValue, Name: "c"},
		{Tenant: "acme", Namespace: "ios", Kind: storage.KindNx, Name: "1"},
	}
	for _, k := range gone {
		if h.stored(k) {
			t.Errorf("%s survived the clean", k)
		}
	}
	kept := []storage.Key{
		{Tenant: "acme", Namespace: "android", Kind: storage.KindXcode, Name: "x"},
		{Tenant: "other", Namespace: "ios", Kind: storage.KindXcode, Name: "x"},
		{Tenant: testTenant, Namespace: "default", Kind: storage.KindCAS, Name: d},
	}
	for _, k := range kept {
		if !h.stored(k) {
			t.Errorf("%s was removed by another namespace's clean", k)
		}
	}
	expectEmpty404(t, h.do("GET", "/api/cache/cas/x?tenant_id=acme&namespace_id=ios", nil))
	// The Bazel namespace is cleaned by its own name under KURA_TENANT_ID.
	expect(t, h.do("DELETE", "/api/cache/clean?tenant_id="+testTenant+"&namespace_id=default", nil), http.StatusNoContent, "")
	expectEmpty404(t, h.do("GET", "/cas/"+d, nil))
}

func TestCleanStoreFailure(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	fs.set(func(f *faultStore) { f.deleteErr = storage.ErrUnavailable })
	expectMessage(t, h.do("DELETE", "/api/cache/clean?tenant_id=a&namespace_id=b", nil), http.StatusServiceUnavailable, "Storage unavailable: failed to clean namespace")
}
