package httpapi

import (
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/kuracache/kura/policy"
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
		want               policy.Request
	}{
		{"POST", "/api/cache/cas/id1?tenant_id=t&namespace_id=n", "b",
			policy.Request{Transport: "http", Route: "/api/cache/cas/{id}", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Producer: "xcode", ArtifactClass: "blob", ArtifactKey: "id1"}},
		{"GET", "/api/cache/keyvalue/c1?tenant_id=t&namespace_id=n", "",
			policy.Request{Transport: "http", Route: "/api/cache/keyvalue/{cas_id}", Operation: OpRead, TenantID: "t", NamespaceID: "n", Producer: "keyvalue", ArtifactClass: "action_cache", ArtifactKey: "c1"}},
		{"PUT", "/api/cache/keyvalue?tenant_id=t&namespace_id=n", `{"cas_id":"c1","entries":[]}`,
			policy.Request{Transport: "http", Route: "/api/cache/keyvalue", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Producer: "keyvalue", ArtifactClass: "action_cache"}},
		{"GET", "/api/cache/gradle/k1?tenant_id=t&namespace_id=n", "",
			policy.Request{Transport: "http", Route: "/api/cache/gradle/{cache_key}", Operation: OpRead, TenantID: "t", NamespaceID: "n", Producer: "gradle", ArtifactClass: "blob", ArtifactKey: "k1"}},
		{"POST", "/api/cache/module/start?tenant_id=t&namespace_id=n&hash=h&name=m", "",
			policy.Request{Transport: "http", Route: "/api/cache/module/start", Operation: OpWrite, ArtifactHash: "h", TenantID: "t", NamespaceID: "n", Producer: "module", ArtifactClass: "blob", ArtifactKey: "builds/h/m"}},
		{"HEAD", "/api/cache/module/x?tenant_id=t&namespace_id=n&hash=h&name=m&cache_category=c", "",
			policy.Request{Transport: "http", Route: "/api/cache/module/{id}", Operation: OpInspect, ArtifactHash: "h", TenantID: "t", NamespaceID: "n", Producer: "module", ArtifactClass: "blob", ArtifactKey: "c/h/m"}},
		{"POST", "/api/cache/module/part?upload_id=" + upload + "&part_number=1", "p",
			policy.Request{Transport: "http", Route: "/api/cache/module/part", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Producer: "module", ArtifactClass: "blob", ArtifactKey: "c2/h2/m2"}},
		{"POST", "/api/cache/module/complete?upload_id=" + upload + "&tenant_id=t&namespace_id=n", `{"parts":[1]}`,
			policy.Request{Transport: "http", Route: "/api/cache/module/complete", Operation: OpWrite, TenantID: "t", NamespaceID: "n", Producer: "module", ArtifactClass: "blob", ArtifactKey: "c2/h2/m2"}},
		{"PUT", "/api/nx/t/n/v1/cache/5", "b",
			policy.Request{Transport: "http", Route: "/api/nx/{tenant_id}/{namespace_id}/v1/cache/{hash}", Operation: OpWrite, ArtifactHash: "5", TenantID: "t", NamespaceID: "n", Producer: "nx", ArtifactClass: "blob", ArtifactKey: "5"}},
		{"PUT", "/cas/" + d, "b",
			policy.Request{Transport: "http", Route: "/cas/{hash}", Operation: OpWrite, ArtifactHash: d, TenantID: testTenant, NamespaceID: "default", Producer: "bazel", ArtifactClass: "blob", ArtifactKey: d}},
		{"HEAD", "/inst/ac/" + d, "",
			policy.Request{Transport: "http", Route: "/{namespace}/ac/{hash}", Operation: OpInspect, ArtifactHash: d, TenantID: testTenant, NamespaceID: "inst", Producer: "bazel", ArtifactClass: "action_cache", ArtifactKey: d}},
		{"GET", "/api/metro/cache/ab?namespace_id=rn", "",
			policy.Request{Transport: "http", Route: "/api/metro/cache/{cache_key}", Operation: OpRead, TenantID: testTenant, NamespaceID: "rn", Producer: "metro", ArtifactClass: "blob", ArtifactKey: "ab"}},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.want.Route, func(t *testing.T) {
			var body any
			if c.body != "" {
				body = c.body
			}
			h.do(c.method, c.path, body, "X-Token", "tok")
			got := g.last(t)
			if v := got.Headers.Values("x-token"); len(v) != 1 || v[0] != "tok" || got.Query == nil {
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
	var denial policy.Decision
	g := &recordingGuard{decide: func(policy.Request) policy.Decision { return denial }}
	h := newHarness(t, harnessOpts{guard: g})
	path := "/api/cache/cas/d?tenant_id=t&namespace_id=n"

	denial = policy.Decision{Status: http.StatusUnauthorized, Message: "Who are you?"}
	expectMessage(t, h.do("POST", path, "x"), http.StatusUnauthorized, "Who are you?")
	denial = policy.Decision{Status: http.StatusForbidden}
	expectMessage(t, h.do("GET", path, nil), http.StatusForbidden, "Forbidden")
	// A nonsensical status is refused as 403.
	denial = policy.Decision{Status: 200, Message: "nope"}
	expectMessage(t, h.do("GET", path, nil), http.StatusForbidden, "nope")
	denial = policy.Decision{Status: http.StatusServiceUnavailable, Message: "Authentication backend unavailable"}
	expectMessage(t, h.do("GET", path, nil), http.StatusServiceUnavailable, "Authentication backend unavailable")
	if h.stored(storage.Key{Tenant: "t", Namespace: "n", Kind: storage.KindXcode, Name: "d"}) {
		t.Fatal("denied write stored")
	}
	if got := counterValue(t, h.srv.metrics.reads, "xcode", "xcode", "blob", "rejected"); got != 3 {
		t.Errorf("rejected reads = %v, want 3", got)
	}
	// Keyvalue writes are denied before the body is read.
	denial = policy.Decision{Status: 401, Message: "no"}
	resp := h.rawRequest("PUT /api/cache/keyvalue?tenant_id=t&namespace_id=n HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("keyvalue denial: %d", resp.StatusCode)
	}
}

func TestGuardDenialsInEachClientsTerms(t *testing.T) {
	g := &recordingGuard{decide: func(r policy.Request) policy.Decision {
		if strings.Contains(firstValue(r.Headers, "authorization"), "ro") && r.Operation == OpWrite {
			return policy.Decision{Status: http.StatusForbidden, Message: "Read-only token"}
		}
		return policy.Decision{Status: http.StatusUnauthorized, Message: "Missing or invalid token"}
	}}
	h := newHarness(t, harnessOpts{guard: g})
	// Nx: text/plain, or Nx reports a misconfigured endpoint instead of the message.
	for _, c := range []struct {
		method, auth string
		status       int
		message      string
	}{{"GET", "", 401, "Missing or invalid token"}, {"PUT", "Bearer ro", 403, "Read-only token"}} {
		r := h.do(c.method, "/v1/cache/123", "b", "Authorization", c.auth)
		if r.status != c.status || r.header.Get("Content-Type") != "text/plain" || strings.TrimSpace(string(r.body)) != c.message {
			t.Errorf("Nx %s: %d %q %q", c.method, r.status, r.header.Get("Content-Type"), r.body)
		}
	}
	// Gradle: a Basic challenge on 401, so Gradle reports the credential problem.
	r := h.do("GET", "/api/cache/gradle/t/n/0123abcd", nil)
	if r.status != 401 || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic ") {
		t.Errorf("Gradle 401: %d, WWW-Authenticate %q", r.status, r.header.Get("WWW-Authenticate"))
	}
	expectMessage(t, r, http.StatusUnauthorized, "Missing or invalid token")
	// Everything else: JSON {"message"}.
	expectMessage(t, h.do("GET", "/ac/"+sha("x"), nil), http.StatusUnauthorized, "Missing or invalid token")
}

func TestGuardResponseHeaders(t *testing.T) {
	g := &recordingGuard{
		decide: func(r policy.Request) policy.Decision {
			if r.NamespaceID == "closed" {
				return policy.Decision{Status: 403}
			}
			return policy.Decision{Allowed: true, Principal: &policy.Principal{ID: "p"}}
		},
		headers: func(r policy.Request, d policy.Decision, status int) map[string]string {
			who := "nobody"
			if d.Principal != nil {
				who = d.Principal.ID
			}
			return map[string]string{"x-policy": fmt.Sprintf("%s %s %d", r.Operation, who, status)}
		},
	}
	h := newHarness(t, harnessOpts{guard: g})
	for _, c := range []struct {
		method, path, body, want string
	}{
		{"POST", "/api/cache/cas/a?tenant_id=t&namespace_id=n", "x", "artifact.write p 204"},
		{"GET", "/api/cache/cas/a?tenant_id=t&namespace_id=n", "", "artifact.read p 200"},
		{"GET", "/api/cache/cas/missing?tenant_id=t&namespace_id=n", "", "artifact.read p 404"},
		{"GET", "/api/cache/cas/a?tenant_id=t&namespace_id=closed", "", "artifact.read nobody 403"},
		{"HEAD", "/ac/" + sha("y"), "", "artifact.inspect p 404"},
	} {
		var body any
		if c.body != "" {
			body = c.body
		}
		if got := h.do(c.method, c.path, body).header.Get("X-Policy"); got != c.want {
			t.Errorf("%s %s: x-policy %q, want %q", c.method, c.path, got, c.want)
		}
	}
	// Requests the policy never saw (health, metrics, a malformed request) get nothing.
	for _, path := range []string{"/up", "/metrics", "/api/cache/cas/a?namespace_id=n"} {
		if got := h.do("GET", path, nil).header.Get("X-Policy"); got != "" {
			t.Errorf("%s: x-policy %q", path, got)
		}
	}
}

func firstValue(h policy.Headers, name string) string {
	if v := h.Values(name); len(v) > 0 {
		return v[0]
	}
	return ""
}
