package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage"
)

func turboKey(ns, hash string) storage.Key {
	return storage.Key{Tenant: testTenant, Namespace: ns, Kind: storage.KindTurbo, Name: hash}
}

// expectTurboError checks an error answer carries both Kura's {"message"} and the
// {"error":{"code","message"}} turbo parses out of a 403.
func expectTurboError(t testing.TB, r response, status int, code, msg string) {
	t.Helper()
	expectMessage(t, r, status, msg)
	var body struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || body.Error.Code != code || !strings.HasPrefix(body.Error.Message, msg) {
		t.Fatalf("error body %q: want error.code %q and error.message %q (%v)", r.body, code, msg, err)
	}
}

func TestTurboPutGetHead(t *testing.T) {
	h := newHarness(t, harnessOpts{disk: true})
	const hash = "a1b2c3d4e5f60718"
	body := "\x28\xb5\x2f\xfd zstd tar"
	// turbo uploads chunked, with no Content-Length.
	r := h.do("PUT", "/v8/artifacts/"+hash+"?slug=acme-web", strings.NewReader(body),
		"Authorization", "Bearer tok", "Content-Type", "application/octet-stream",
		"x-artifact-duration", "1234", "x-artifact-tag", "c2lnbmF0dXJl+/=")
	expect(t, r, http.StatusAccepted, `{"urls":["http://node-a:4000/v8/artifacts/`+hash+`?slug=acme-web"]}`+"\n")
	if !h.stored(turboKey("acme-web", hash)) {
		t.Fatal("not stored under KURA_TENANT_ID / slug")
	}
	for _, method := range []string{"GET", "HEAD"} {
		r = h.do(method, "/v8/artifacts/"+hash+"?slug=acme-web", nil)
		want := body
		if method == "HEAD" {
			want = ""
		}
		expect(t, r, http.StatusOK, want)
		if r.header.Get("x-artifact-duration") != "1234" || r.header.Get("x-artifact-tag") != "c2lnbmF0dXJl+/=" {
			t.Fatalf("%s headers = %v, want the stored duration and tag", method, r.header)
		}
		if r.header.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Fatalf("%s Content-Length = %q", method, r.header.Get("Content-Length"))
		}
	}
	// The team is the namespace: another slug, or the same value as a teamId, is another
	// namespace only when it differs.
	expectEmpty404(t, h.do("GET", "/v8/artifacts/"+hash+"?slug=other", nil))
	expectEmpty404(t, h.do("HEAD", "/v8/artifacts/"+hash+"?teamId=team_x", nil))
	expect(t, h.do("GET", "/v8/artifacts/"+hash+"?teamId=acme-web", nil), http.StatusOK, body)

	// First writer wins: a second PUT is acknowledged without reading the body, and changes
	// neither the body nor its attributes.
	expect(t, h.do("PUT", "/v8/artifacts/"+hash+"?slug=acme-web", "other", "x-artifact-duration", "1", "x-artifact-tag", "forged"),
		http.StatusAccepted, "-")
	resp := h.rawRequest("PUT /v8/artifacts/"+hash+"?slug=acme-web HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("raw PUT of an existing hash: %d, want 202 without the body", resp.StatusCode)
	}
	r = h.do("GET", "/v8/artifacts/"+hash+"?slug=acme-web", nil)
	expect(t, r, http.StatusOK, body)
	if r.header.Get("x-artifact-tag") != "c2lnbmF0dXJl+/=" || r.header.Get("x-artifact-duration") != "1234" {
		t.Fatalf("second PUT changed the attributes: %v", r.header)
	}
	// Without the optional headers nothing is answered back.
	expect(t, h.do("PUT", "/v8/artifacts/ff00?teamId=team_1", "plain"), http.StatusAccepted, "-")
	r = h.do("GET", "/v8/artifacts/ff00?teamId=team_1", nil)
	if _, ok := r.header["X-Artifact-Tag"]; ok || r.header.Get("x-artifact-duration") != "" {
		t.Fatalf("headers answered for an upload without them: %v", r.header)
	}
	if got := counterValue(t, h.srv.metrics.writes, "turbo", "turborepo", "blob", "stored"); got != 2 {
		t.Errorf("turbo stored writes = %v, want 2", got)
	}
}

func TestTurboBadInput(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for _, c := range []struct {
		method, path string
		hdr          []string
		msg          string
	}{
		{"PUT", "/v8/artifacts/abcd", nil, "Missing teamId or slug"},
		{"GET", "/v8/artifacts/abcd", nil, "Missing teamId or slug"},
		{"HEAD", "/v8/artifacts/abcd?teamId=", nil, ""},
		{"PUT", "/v8/artifacts/not-hex?slug=s", nil, "Invalid hash"},
		{"GET", "/v8/artifacts/zz?slug=s", nil, "Invalid hash"},
		{"PUT", "/v8/artifacts/abcd?slug=%zz", nil, "Invalid query string"},
		{"PUT", "/v8/artifacts/abcd?slug=a%00b", nil, "Invalid slug"},
		{"PUT", "/v8/artifacts/abcd?slug=s", []string{"x-artifact-duration", "-5"}, "Invalid x-artifact-duration"},
		{"PUT", "/v8/artifacts/abcd?slug=s", []string{"x-artifact-duration", "1.5"}, "Invalid x-artifact-duration"},
		{"PUT", "/v8/artifacts/abcd?slug=s", []string{"x-artifact-tag", strings.Repeat("t", 1025)}, "Invalid x-artifact-tag"},
		{"PUT", "/v8/artifacts/abcd?slug=s", []string{"x-artifact-tag", "\xff\xfe"}, "Invalid x-artifact-tag"},
		{"POST", "/v8/artifacts", nil, "Missing teamId or slug"},
	} {
		var body any
		if c.method == "PUT" || c.method == "POST" {
			body = "x"
		}
		r := h.do(c.method, c.path, body, c.hdr...)
		if c.method == "HEAD" {
			if r.status != http.StatusBadRequest {
				t.Fatalf("%s %s: %d, want 400", c.method, c.path, r.status)
			}
			continue
		}
		expectTurboError(t, r, http.StatusBadRequest, "bad_request", c.msg)
	}
	if h.stored(turboKey("s", "abcd")) {
		t.Fatal("a refused PUT stored the object")
	}
}

func TestTurboLimitWhileStreaming(t *testing.T) {
	h := newHarness(t, harnessOpts{disk: true, limits: func(l *limits) { l.blob = 1000 }})
	// Chunked: the limit can only be enforced while the body streams.
	r := h.do("PUT", "/v8/artifacts/abcd?slug=s", strings.NewReader(strings.Repeat("x", 5000)))
	expectTurboError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large", "Request body exceeds the 1000-byte limit")
	r = h.do("PUT", "/v8/artifacts/abce?slug=s", strings.Repeat("x", 1001))
	expectTurboError(t, r, http.StatusRequestEntityTooLarge, "payload_too_large", "Request body exceeds")
	if h.stored(turboKey("s", "abcd")) || h.stored(turboKey("s", "abce")) {
		t.Fatal("an oversized artifact was stored")
	}
	expect(t, h.do("PUT", "/v8/artifacts/abcf?slug=s", strings.NewReader(strings.Repeat("x", 1000))), http.StatusAccepted, "-")
}

func TestTurboQuery(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("PUT", "/v8/artifacts/aa01?teamId=team_a", "12345", "x-artifact-duration", "250", "x-artifact-tag", "sig"), http.StatusAccepted, "-")
	expect(t, h.do("PUT", "/v8/artifacts/aa02?teamId=team_a", "1"), http.StatusAccepted, "-")
	r := h.do("POST", "/v8/artifacts?teamId=team_a", `{"hashes":["aa01","aa02","aa03"]}`, "Content-Type", "application/json")
	expect(t, r, http.StatusOK, "-")
	var got map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"aa01": `{"size":5,"taskDurationMs":250,"tag":"sig"}`,
		"aa02": `{"size":1,"taskDurationMs":0}`,
		"aa03": `{"error":{"message":"Artifact not found"}}`,
	}
	if len(got) != len(want) {
		t.Fatalf("answer %s", r.body)
	}
	for k, v := range want {
		if string(got[k]) != v {
			t.Errorf("%s: %s, want %s", k, got[k], v)
		}
	}
	// Another team sees nothing.
	r = h.do("POST", "/v8/artifacts?slug=other", `{"hashes":["aa01"]}`)
	expect(t, r, http.StatusOK, `{"aa01":{"error":{"message":"Artifact not found"}}}`+"\n")
	for body, msg := range map[string]string{
		`{"hashes":`:            "Invalid artifact query",
		`{}`:                    "Invalid artifact query: missing hashes",
		`{"hashes":["zz"]}`:     "Invalid hash",
		`{"hashes":"aa01"}`:     "Invalid artifact query",
		`{"hashes":[""]}`:       "Invalid hash",
		`[{"hashes":["aa01"]}]`: "Invalid artifact query",
	} {
		expectTurboError(t, h.do("POST", "/v8/artifacts?teamId=team_a", body), http.StatusBadRequest, "bad_request", msg)
	}
	many, _ := json.Marshal(map[string][]string{"hashes": make([]string, maxTurboQueryHashes+1)})
	expectTurboError(t, h.do("POST", "/v8/artifacts?teamId=team_a", many), http.StatusBadRequest, "bad_request", "Invalid artifact query: more than")
	big := `{"hashes":["` + strings.Repeat("a", maxTurboJSONBytes) + `"]}`
	expectTurboError(t, h.do("POST", "/v8/artifacts?teamId=team_a", big), http.StatusRequestEntityTooLarge, "payload_too_large", "Request body exceeds")
}

func TestTurboEventsAndStatus(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("GET", "/v8/artifacts/status?slug=s", nil), http.StatusOK, `{"status":"enabled"}`+"\n")
	expect(t, h.do("GET", "/v8/artifacts/status", nil), http.StatusOK, `{"status":"enabled"}`+"\n")
	events := `[{"sessionId":"0b9","source":"REMOTE","event":"HIT","hash":"aa01","duration":12},
		{"sessionId":"0b9","source":"LOCAL","event":"MISS","hash":"aa02"},
		{"sessionId":"0b9","source":"REMOTE","event":"HIT","hash":"aa03"},
		{"source":"SPACE","event":"BOGUS"}]`
	expect(t, h.do("POST", "/v8/artifacts/events?slug=s", events, "Content-Type", "application/json"), http.StatusOK, "")
	for _, c := range []struct {
		source, event string
		want          float64
	}{{"remote", "hit", 2}, {"local", "miss", 1}, {"other", "other", 1}, {"local", "hit", 0}} {
		if got := counterValue(t, h.srv.metrics.turboEvents, c.source, c.event); got != c.want {
			t.Errorf("events{%s,%s} = %v, want %v", c.source, c.event, got, c.want)
		}
	}
	expectTurboError(t, h.do("POST", "/v8/artifacts/events", `{"not":"an array"}`), http.StatusBadRequest, "bad_request", "Invalid cache events")
	expectTurboError(t, h.do("POST", "/v8/artifacts/events", strings.Repeat(" ", maxTurboJSONBytes+1)), http.StatusRequestEntityTooLarge,
		"payload_too_large", "Request body exceeds")
}

// TestTurboPolicy: the bearer token reaches the policy hooks on every call, with the
// operation each call is; denials come back in turbo's error shape and store nothing.
func TestTurboPolicy(t *testing.T) {
	g := &recordingGuard{decide: func(r policy.Request) policy.Decision {
		switch firstValue(r.Headers, "authorization") {
		case "Bearer rw":
			return policy.Decision{Allowed: true}
		case "Bearer ro":
			if r.Operation == OpWrite {
				return policy.Decision{Status: http.StatusForbidden, Message: "Token is read-only"}
			}
			return policy.Decision{Allowed: true}
		}
		return policy.Decision{Status: http.StatusUnauthorized, Message: "Missing or invalid access token"}
	}}
	h := newHarness(t, harnessOpts{guard: g})
	const path = "/v8/artifacts/beef?teamId=team_k"
	for _, c := range []struct {
		method, path, token string
		body                any
		status              int
		code, msg           string
	}{
		{"PUT", path, "", "x", 401, "not_authorized", "Missing or invalid access token"},
		{"GET", path, "", nil, 401, "not_authorized", "Missing or invalid access token"},
		{"PUT", path, "Bearer ro", "x", 403, "forbidden", "Token is read-only"},
		{"POST", "/v8/artifacts?teamId=team_k", "", `{"hashes":["beef"]}`, 401, "not_authorized", "Missing"},
		{"GET", "/v8/artifacts/status?teamId=team_k", "", nil, 401, "not_authorized", "Missing"},
		{"POST", "/v8/artifacts/events?teamId=team_k", "", `[]`, 401, "not_authorized", "Missing"},
	} {
		expectTurboError(t, h.do(c.method, c.path, c.body, "Authorization", c.token), c.status, c.code, c.msg)
	}
	if r := h.do("HEAD", path, nil); r.status != http.StatusUnauthorized {
		t.Fatalf("HEAD without a token: %d", r.status)
	}
	if h.stored(turboKey("team_k", "beef")) {
		t.Fatal("a denied PUT stored the object")
	}
	expect(t, h.do("PUT", path, "ok", "Authorization", "Bearer rw"), http.StatusAccepted, "-")
	req := g.last(t)
	if req.Producer != "turborepo" || req.NamespaceID != "team_k" || req.TenantID != testTenant || req.ArtifactKey != "beef" ||
		req.ArtifactHash != "beef" || req.Operation != OpWrite || req.Route != "/v8/artifacts/{hash}" {
		t.Fatalf("guard request = %+v", req)
	}
	expect(t, h.do("GET", path, nil, "Authorization", "Bearer ro"), http.StatusOK, "ok")
	if op := g.last(t).Operation; op != OpRead {
		t.Fatalf("GET operation %q", op)
	}
	h.do("HEAD", path, nil, "Authorization", "Bearer ro")
	if op := g.last(t).Operation; op != OpInspect {
		t.Fatalf("HEAD operation %q", op)
	}
	h.do("GET", "/v8/artifacts/status?teamId=team_k", nil, "Authorization", "Bearer ro")
	if r := g.last(t); r.Operation != OpRequest || r.Producer != "turborepo" {
		t.Fatalf("status request = %+v", r)
	}
	// A denied status or events call is not an artifact read; GET, HEAD and the query are.
	if got := counterValue(t, h.srv.metrics.reads, "turbo", "turborepo", "blob", "rejected"); got != 3 {
		t.Errorf("turbo rejected reads = %v, want 3 (GET, HEAD, query)", got)
	}
}
