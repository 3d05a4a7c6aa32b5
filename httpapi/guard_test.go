package httpapi

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

// TestGuardSeesEverySurface checks the policy context of one request per surface.
func TestGuardSeesEverySurface(t *testing.T) {
	g := &recordingGuard{}
	h := newHarness(t, harnessOpts{guard: g})
	d := sha("b")
	// Parts and completions name only the upload; the guard sees the upload's own identity.
	upload := *startUpload(t, h, "tenant_id=t&namespace_id=n&hash=h2&name=m2&cache_category=c2")
	cases := []struct {
		method, path, body string
		want               GuardRequest
	}{
		{"POST", "/api/cache/cas/id1?tenant_id=t&namespace_id=n", "b",
			GuardRequest{Route: "/api/cache/cas/{id}", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Client: "xcode", ArtifactClass: "blob", ArtifactKey: "id1"}},
		{"GET", "/api/cache/keyvalue/c1?tenant_id=t&namespace_id=n", "",
			GuardRequest{Route: "/api/cache/keyvalue/{cas_id}", Operation: OpRead, TenantID: "t", NamespaceID: "n", Client: "keyvalue", ArtifactClass: "action_cache", ArtifactKey: "c1"}},
		{"PUT", "/api/cache/keyvalue?tenant_id=t&namespace_id=n", `{"cas_id":"c1","entries":[]}`,
			GuardRequest{Route: "/api/cache/keyvalue", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Client: "keyvalue", ArtifactClass: "action_cache"}},
		{"GET", "/api/cache/gradle/k1?tenant_id=t&namespace_id=n", "",
			GuardRequest{Route: "/api/cache/gradle/{cache_key}", Operation: OpRead, TenantID: "t", NamespaceID: "n", Client: "gradle", ArtifactClass: "blob", ArtifactKey: "k1"}},
		{"POST", "/api/cache/module/start?tenant_id=t&namespace_id=n&hash=h&name=m", "",
			GuardRequest{Route: "/api/cache/module/start", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Client: "module", ArtifactClass: "blob", ArtifactKey: "builds/h/m"}},
		{"HEAD", "/api/cache/module/x?tenant_id=t&namespace_id=n&hash=h&name=m&cache_category=c", "",
			GuardRequest{Route: "/api/cache/module/{id}", Operation: OpRead, TenantID: "t", NamespaceID: "n", Client: "module", ArtifactClass: "blob", ArtifactKey: "c/h/m"}},
		{"POST", "/api/cache/module/part?upload_id=" + upload + "&part_number=1", "p",
			GuardRequest{Route: "/api/cache/module/part", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Client: "module", ArtifactClass: "blob", ArtifactKey: "c2/h2/m2"}},
		{"POST", "/api/cache/module/complete?upload_id=" + upload + "&tenant_id=t&namespace_id=n", `{"parts":[1]}`,
			GuardRequest{Route: "/api/cache/module/complete", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Client: "module", ArtifactClass: "blob", ArtifactKey: "c2/h2/m2"}},
		{"PUT", "/api/nx/t/n/v1/cache/5", "b",
			GuardRequest{Route: "/api/nx/{tenant_id}/{namespace_id}/v1/cache/{hash}", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Client: "nx", ArtifactClass: "blob", ArtifactKey: "5"}},
		{"PUT", "/cas/" + d, "b",
			GuardRequest{Route: "/cas/{hash}", Operation: OpWrite, TenantID: testTenant, NamespaceID: "default", Client: "bazel", ArtifactClass: "blob", ArtifactKey: d}},
		{"HEAD", "/inst/ac/" + d, "",
			GuardRequest{Route: "/{namespace}/ac/{hash}", Operation: OpRead, TenantID: testTenant, NamespaceID: "inst", Client: "bazel", ArtifactClass: "action_cache", ArtifactKey: d}},
		{"GET", "/api/metro/cache/ab?namespace_id=rn", "",
			GuardRequest{Route: "/api/metro/cache/{cache_key}", Operation: OpRead, TenantID: testTenant, NamespaceID: "rn", Client: "metro", ArtifactClass: "blob", ArtifactKey: "ab"}},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.want.Route, func(t *testing.T) {
			var body any
			if c.body != "" {
				body = c.body
			}
			h.do(c.method, c.path, body, "X-Token", "tok")
			got := g.last(t)
			if got.Headers.Get("X-Token") != "tok" || got.Query == nil {
				t.Fatalf("headers/query not passed: %+v", got)
			}
			got.Headers, got.Query = nil, nil
			c.want.Method = c.method
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("guard request\n got %+v\nwant %+v", got, c.want)
			}
		})
	}
	// /up and /metrics never run the policy.
	n := g.count()
	h.do("GET", "/up", nil)
	h.do("GET", "/metrics", nil)
	if g.count() != n {
		t.Fatal("the guard ran for /up or /metrics")
	}
}

func TestGuardDenials(t *testing.T) {
	var denial error
	g := &recordingGuard{decide: func(GuardRequest) error { return denial }}
	h := newHarness(t, harnessOpts{guard: g})
	path := "/api/cache/cas/d?tenant_id=t&namespace_id=n"

	denial = &Denial{Status: http.StatusUnauthorized, Message: "Who are you?"}
	expectMessage(t, h.do("POST", path, "x"), http.StatusUnauthorized, "Who are you?")
	denial = &Denial{Status: http.StatusForbidden}
	expectMessage(t, h.do("GET", path, nil), http.StatusForbidden, "Forbidden")
	// A nonsensical status is refused as 403.
	denial = &Denial{Status: 200, Message: "nope"}
	expectMessage(t, h.do("GET", path, nil), http.StatusForbidden, "nope")
	// A wrapped denial still counts.
	denial = errors.Join(errors.New("ctx"), &Denial{Status: 401, Message: "wrapped"})
	expectMessage(t, h.do("GET", path, nil), http.StatusUnauthorized, "wrapped")
	// A policy failure refuses the request (fail closed) with 503.
	denial = errors.New("lua exploded")
	r := h.do("GET", path, nil)
	expectMessage(t, r, http.StatusServiceUnavailable, "Policy check failed")
	if strings.Contains(string(r.body), "lua") {
		t.Fatal("internal policy error leaked to the client")
	}
	if h.stored(storage.Key{Tenant: "t", Namespace: "n", Kind: storage.KindXcode, Name: "d"}) {
		t.Fatal("denied write stored")
	}
	if got := counterValue(t, h.srv.metrics.reads, "xcode", "xcode", "blob", "rejected"); got != 4 {
		t.Errorf("rejected reads = %v, want 4", got)
	}
	// Keyvalue writes are denied before the body is read.
	denial = &Denial{Status: 401, Message: "no"}
	resp := h.rawRequest("PUT /api/cache/keyvalue?tenant_id=t&namespace_id=n HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("keyvalue denial: %d", resp.StatusCode)
	}
}
