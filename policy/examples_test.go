package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The ready-made policies in examples/policies, loaded by the real engine. The e2e suite runs
// them again behind the real binary with the real clients.

func example(name string) string { return filepath.Join("..", "examples", "policies", name) }

func exampleEngine(t *testing.T, name string, configure func(*Config)) *testEngine {
	t.Helper()
	src, err := os.ReadFile(example(name))
	if err != nil {
		t.Fatal(err)
	}
	return newTestEngine(t, string(src), configure)
}

type decisionCase struct {
	name            string
	r               *Request
	allowed         bool
	status          int
	principalPrefix string
}

func runDecisionCases(t *testing.T, e *testEngine, cases []decisionCase) {
	t.Helper()
	for _, c := range cases {
		d := decide(e, c.r)
		if d.Allowed != c.allowed || (!c.allowed && d.Status != c.status) {
			t.Errorf("%s: %+v, want allowed=%v status=%d", c.name, d, c.allowed, c.status)
		}
	}
}

func TestExampleStaticTokens(t *testing.T) {
	dir := t.TempDir()
	ciDigest := sha256.Sum256([]byte("ci-secret"))
	tokens := "# token namespaces access\n" +
		"reader ios,acme/android read\n" +
		"sha256:" + hex.EncodeToString(ciDigest[:]) + " ios write\n" +
		"ops * operator\n" +
		"broken line\n"
	path := filepath.Join(dir, "tokens")
	if err := os.WriteFile(path, []byte(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, source := range []string{"file", "env"} {
		t.Run(source, func(t *testing.T) {
			e := exampleEngine(t, "static-tokens.lua", func(c *Config) {
				if source == "file" {
					c.Files = map[string]string{"tokens": path}
				} else {
					c.Env = map[string]string{"KURA_POLICY_TOKENS": "reader ios,acme/android read; ci-secret ios write;ops * operator"}
				}
			})
			runDecisionCases(t, e, []decisionCase{
				{"no token", req(OpRead, "acme", "ios"), false, 401, ""},
				{"unknown token", req(OpRead, "acme", "ios", "Authorization: Bearer nope"), false, 401, ""},
				{"reader reads its namespace", req(OpRead, "acme", "ios", "Authorization: Bearer reader"), true, 0, ""},
				{"reader reads another tenant's android", req(OpRead, "acme", "android", "Authorization: Bearer reader"), true, 0, ""},
				{"reader cannot write", req(OpWrite, "acme", "ios", "Authorization: Bearer reader"), false, 403, ""},
				{"reader elsewhere", req(OpRead, "acme", "web", "Authorization: Bearer reader"), false, 403, ""},
				{"writer (hashed in the file) writes", req(OpWrite, "acme", "ios", "Authorization: Bearer ci-secret"), true, 0, ""},
				{"writer through X-Api-Key", req(OpWrite, "acme", "ios", "X-Api-Key: ci-secret"), true, 0, ""},
				{"writer through Basic (Gradle)", req(OpWrite, "acme", "ios", "Authorization: Basic Z3JhZGxlOmNpLXNlY3JldA=="), true, 0, ""},
				{"writer cannot clean", req(OpNamespaceDelete, "acme", "ios", "Authorization: Bearer ci-secret"), false, 403, ""},
				{"operator cleans", req(OpNamespaceDelete, "acme", "ios", "Authorization: Bearer ops"), true, 0, ""},
				{"inspect is a read", req(OpInspect, "acme", "ios", "Authorization: Bearer reader"), true, 0, ""},
			})
		})
	}
}

func TestExampleJWTNamespaces(t *testing.T) {
	e := exampleEngine(t, "jwt-namespaces.lua", func(c *Config) {
		c.JWTVerifiers = map[string]JWTVerifier{"ci": {Algorithms: []string{"HS256"}, Secret: []byte("k"), Audiences: []string{"kura"}}}
	})
	tok := func(claims jwt.MapClaims) string {
		claims["aud"] = "kura"
		if _, ok := claims["exp"]; !ok {
			claims["exp"] = time.Now().Add(time.Hour).Unix()
		}
		return "Authorization: Bearer " + hs256(t, "k", claims)
	}
	ios := tok(jwt.MapClaims{"sub": "ios-ci", "namespaces": []string{"ios"}})
	reader := tok(jwt.MapClaims{"sub": "r", "namespaces": "ios, android", "read_only": true})
	ops := tok(jwt.MapClaims{"sub": "ops", "namespaces": []string{"*"}, "operator": true})
	otherTenant := tok(jwt.MapClaims{"sub": "x", "namespaces": []string{"*"}, "tenant": "globex"})
	runDecisionCases(t, e, []decisionCase{
		{"no token", req(OpWrite, "acme", "ios"), false, 401, ""},
		{"ios token writes ios", req(OpWrite, "acme", "ios", ios), true, 0, ""},
		{"ios token reading android", req(OpRead, "acme", "android", ios), false, 403, ""},
		{"ios token cannot clean", req(OpNamespaceDelete, "acme", "ios", ios), false, 403, ""},
		{"read-only reads", req(OpRead, "acme", "android", reader), true, 0, ""},
		{"read-only cannot write", req(OpWrite, "acme", "ios", reader), false, 403, ""},
		{"operator cleans", req(OpNamespaceDelete, "acme", "web", ops), true, 0, ""},
		{"token of another tenant", req(OpRead, "acme", "ios", otherTenant), false, 403, ""},
		{"forged", req(OpRead, "acme", "ios", "Authorization: Bearer "+hs256(t, "wrong", jwt.MapClaims{"aud": "kura", "exp": time.Now().Add(time.Hour).Unix(), "namespaces": []string{"ios"}})), false, 401, ""},
		{"expired", req(OpRead, "acme", "ios", tok(jwt.MapClaims{"namespaces": []string{"ios"}, "exp": time.Now().Add(-time.Hour).Unix()})), false, 401, ""},
	})
}

func TestExampleHTTPAuthz(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		var q map[string]string
		_ = json.NewDecoder(r.Body).Decode(&q)
		switch {
		case r.URL.Path != "/v1/cache/authorize":
			w.WriteHeader(http.StatusNotFound)
		case q["token"] == "unknown":
			w.WriteHeader(http.StatusUnauthorized)
		case q["token"] == "down":
			w.WriteHeader(http.StatusBadGateway)
		case q["token"] == "ci" && (q["operation"] != "artifact.write" || q["namespace_id"] == "ios"):
			_, _ = w.Write([]byte(`{"allow": true, "ttl_seconds": 60}`))
		default:
			_, _ = w.Write([]byte(`{"allow": false, "message": "not for you"}`))
		}
	}))
	defer srv.Close()
	e := exampleEngine(t, "http-authz.lua", func(c *Config) {
		c.HookTimeout = 2 * time.Second
		c.HTTPClients = map[string]HTTPClient{"authz": {BaseURL: srv.URL, ConnectTimeout: time.Second, RequestTimeout: time.Second}}
	})
	runDecisionCases(t, e, []decisionCase{
		{"no token", req(OpRead, "acme", "ios"), false, 401, ""},
		{"allowed write", req(OpWrite, "acme", "ios", "Authorization: Bearer ci"), true, 0, ""},
		{"refused write", req(OpWrite, "acme", "web", "Authorization: Bearer ci"), false, 403, ""},
		{"unknown token", req(OpRead, "acme", "ios", "Authorization: Bearer unknown"), false, 401, ""},
		{"service failing", req(OpRead, "acme", "ios", "Authorization: Bearer down"), false, 503, ""},
	})
	before := calls
	decide(e, req(OpWrite, "acme", "ios", "Authorization: Bearer ci"))
	if calls != before {
		t.Fatal("the service's ttl_seconds did not cache the answer")
	}
}

func TestExampleOperatorDelete(t *testing.T) {
	e := exampleEngine(t, "operator-delete.lua", func(c *Config) {
		c.Env = map[string]string{"KURA_POLICY_OPERATOR_TOKEN": "ops-token"}
	})
	runDecisionCases(t, e, []decisionCase{
		{"anonymous write", req(OpWrite, "acme", "ios"), true, 0, ""},
		{"anonymous clean", req(OpNamespaceDelete, "acme", "ios"), false, 401, ""},
		{"wrong token clean", req(OpNamespaceDelete, "acme", "ios", "Authorization: Bearer nope"), false, 401, ""},
		{"operator clean", req(OpNamespaceDelete, "acme", "ios", "Authorization: Bearer ops-token"), true, 0, ""},
		{"operator by api key", req(OpNamespaceDelete, "acme", "ios", "X-Api-Key: ops-token"), true, 0, ""},
	})
}

func TestExampleSignedResponses(t *testing.T) {
	e := exampleEngine(t, "signed-responses.lua", func(c *Config) {
		c.Signers = map[string][]byte{"responses": []byte("response-key")}
	})
	r := req(OpRead, "acme", "ios")
	h := e.ResponseHeaders(context.Background(), r, decide(e, r), 200)
	want, _ := e.env.sign("responses", "200 acme/ios artifact-1")
	if h["x-kura-signature"] != want || h["x-kura-signed-payload"] != "200 acme/ios artifact-1" {
		t.Fatalf("headers %v, want signature %s", h, want)
	}
}
