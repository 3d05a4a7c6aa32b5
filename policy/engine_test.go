package policy

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

const tokenScript = `
local tokens = {
  rw = {namespace = "ios", write = true},
  ro = {namespace = "ios", write = false},
}

function authenticate(ctx)
  local c = ctx.credentials
  if c == nil or c.scheme ~= "bearer" then
    return {deny = {status = 401, message = "Missing bearer token"}}
  end
  local t = tokens[c.token]
  if t == nil then
    return {deny = {message = "Unknown token"}}
  end
  return {principal = {id = c.token, kind = "token", attributes = t}}
end

function authorize(ctx, principal)
  if principal.attributes.namespace ~= ctx.namespace_id then
    return {deny = {status = 403, message = "Forbidden: " .. principal.id .. " cannot use " .. ctx.namespace_id}}
  end
  if ctx.operation == "artifact.write" and not principal.attributes.write then
    return {allow = false}
  end
  return {allow = true}
end
`

func TestDecideRunsAuthenticateThenAuthorize(t *testing.T) {
	e := newTestEngine(t, tokenScript)
	cases := []struct {
		name    string
		r       *Request
		allowed bool
		status  int
		message string
	}{
		{"no token", req(OpRead, "acme", "ios"), false, 401, "Missing bearer token"},
		{"unknown token defaults to 401", req(OpRead, "acme", "ios", "Authorization: Bearer nope"), false, 401, "Unknown token"},
		{"read-write writes", req(OpWrite, "acme", "ios", "Authorization: Bearer rw"), true, 0, ""},
		{"read-only reads", req(OpRead, "acme", "ios", "Authorization: Bearer ro"), true, 0, ""},
		{"read-only cannot write", req(OpWrite, "acme", "ios", "Authorization: Bearer ro"), false, 403, "Forbidden"},
		{"other namespace", req(OpRead, "acme", "android", "Authorization: Bearer rw"), false, 403, "Forbidden: rw cannot use android"},
		{"basic is not bearer", req(OpRead, "acme", "ios", "Authorization: Basic dXNlcjpwYXNz"), false, 401, "Missing bearer token"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := decide(e, c.r)
			if d.Allowed != c.allowed || d.Status != c.status || d.Message != c.message {
				t.Fatalf("got %+v, want allowed=%v status=%d message=%q", d, c.allowed, c.status, c.message)
			}
		})
	}
	d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer rw"))
	if d.Principal == nil || d.Principal.ID != "rw" || d.Principal.Kind != "token" {
		t.Fatalf("principal = %+v", d.Principal)
	}
	if attrs, _ := d.Principal.Attributes.(map[string]any); attrs["namespace"] != "ios" || attrs["write"] != true {
		t.Fatalf("principal attributes = %#v", d.Principal.Attributes)
	}
}

func TestContextFields(t *testing.T) {
	// authenticate echoes ctx back as the principal's attributes.
	e := newTestEngine(t, `
function authenticate(ctx)
  return {principal = {id = "echo", attributes = ctx}, ttl_seconds = 0}
end`)
	r := req(OpWrite, "acme", "ios", "Authorization: Basic dXNlcjpwYXNz", "X-Custom: a", "X-Custom: b")
	r.ArtifactHash = "abc"
	r.ArtifactClass = "blob"
	r.Query = map[string][]string{"tenant_id": {"acme"}, "namespace_id": {"ios"}}
	d := decide(e, r)
	ctx, _ := d.Principal.Attributes.(map[string]any)
	want := map[string]any{
		"transport": "http", "route": "/api/cache/cas/{id}", "method": "GET", "operation": "artifact.write",
		"server_tenant_id": "acme", "tenant_id": "acme", "namespace_id": "ios", "producer": "xcode",
		"client": "xcode", "artifact_class": "blob", "artifact_key": "artifact-1", "artifact_hash": "abc",
	}
	for k, v := range want {
		if ctx[k] != v {
			t.Errorf("ctx.%s = %#v, want %#v", k, ctx[k], v)
		}
	}
	headers, _ := ctx["headers"].(map[string]any)
	if headers["authorization"] != "Basic dXNlcjpwYXNz" || headers["x-custom"] != "a, b" {
		t.Errorf("ctx.headers = %#v", headers)
	}
	query, _ := ctx["query"].(map[string]any)
	if query["namespace_id"] != "ios" {
		t.Errorf("ctx.query = %#v", query)
	}
	creds, _ := ctx["credentials"].(map[string]any)
	if creds["scheme"] != "basic" || creds["username"] != "user" || creds["password"] != "pass" {
		t.Errorf("ctx.credentials = %#v", creds)
	}
	if _, ok := ctx["status_code"]; ok {
		t.Errorf("status_code is only for response_headers")
	}
}

func TestDecisionCache(t *testing.T) {
	e := newTestEngine(t, tokenScript)
	r := req(OpRead, "acme", "ios", "Authorization: Bearer rw")
	for range 5 {
		if d := decide(e, r); !d.Allowed {
			t.Fatalf("denied: %+v", d)
		}
	}
	if n := e.hookCalls(hookAuthenticate, resultOK); n != 1 {
		t.Fatalf("authenticate ran %d times for 5 identical requests, want 1", n)
	}
	if e.lookups("hit") != 4 || e.lookups("miss") != 1 {
		t.Fatalf("lookups hit=%d miss=%d", e.lookups("hit"), e.lookups("miss"))
	}
	// Another namespace, operation or credential is another key.
	decide(e, req(OpWrite, "acme", "ios", "Authorization: Bearer rw"))
	decide(e, req(OpRead, "acme", "android", "Authorization: Bearer rw"))
	decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer ro"))
	decide(e, req(OpRead, "other", "ios", "Authorization: Bearer rw"))
	if n := e.hookCalls(hookAuthenticate, resultOK); n != 5 {
		t.Fatalf("authenticate ran %d times, want 5", n)
	}
	// Other headers do not matter.
	decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer rw", "User-Agent: x"))
	if n := e.hookCalls(hookAuthenticate, resultOK); n != 5 {
		t.Fatalf("a different user agent missed the cache")
	}
}

func TestDecisionTTLs(t *testing.T) {
	e := newTestEngine(t, `
function authenticate(ctx)
  local c = ctx.credentials
  if c.token == "short" then return {principal = {id = "s"}, ttl_seconds = 0.05} end
  if c.token == "never" then return {principal = {id = "n"}, ttl_seconds = 0} end
  if c.token == "bad" then return {deny = {status = 401}} end
  return {principal = {id = "d"}}
end
function authorize(ctx, p) return {allow = true} end`, func(c *Config) { c.DenyTTL = 50 * time.Millisecond })

	calls := func() int { return e.hookCalls(hookAuthenticate, resultOK) }
	decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer never"))
	decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer never"))
	if calls() != 2 {
		t.Fatalf("ttl_seconds = 0 was cached (%d calls)", calls())
	}
	for _, tok := range []string{"short", "bad"} {
		before := calls()
		decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer "+tok))
		decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer "+tok))
		if calls() != before+1 {
			t.Fatalf("%s: not cached within its TTL", tok)
		}
		time.Sleep(60 * time.Millisecond) // past the 50 ms TTL: the expiry itself is under test
		decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer "+tok))
		if calls() != before+2 {
			t.Fatalf("%s: still cached after its TTL", tok)
		}
	}
	// The allow default (600 s) keeps it.
	before := calls()
	decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer default"))
	decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer default"))
	if calls() != before+1 {
		t.Fatal("default allow TTL did not cache")
	}
}

func TestCacheIsBounded(t *testing.T) {
	e := newTestEngine(t, `function authenticate(ctx) return {anonymous = true} end`,
		func(c *Config) { c.CacheMaxEntries = 32 })
	for i := range 500 {
		decide(e, req(OpRead, "acme", "ios", fmt.Sprintf("Authorization: Bearer t%d", i)))
	}
	if n := e.cache.len(); n > 32 {
		t.Fatalf("cache holds %d entries, limit 32", n)
	}
	if ev := e.cacheEvictionsCount(); ev < 500-32 {
		t.Fatalf("evictions = %d, want at least %d", ev, 500-32)
	}
}

func TestConcurrentMissesAreSingleFlighted(t *testing.T) {
	// The hook takes ~20 ms, so the 64 callers all arrive while the first one runs it.
	e := newTestEngine(t, `
function authenticate(ctx)
  local t = kura.now()
  while kura.now() - t < 0.02 do end
  return {principal = {id = "slow"}}
end`, func(c *Config) { c.HookTimeout = 2 * time.Second })
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			<-start
			if d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer same")); !d.Allowed {
				t.Errorf("denied: %+v", d)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := e.hookCalls(hookAuthenticate, resultOK); n != 1 {
		t.Fatalf("authenticate ran %d times for 64 concurrent identical misses, want 1", n)
	}
	if c := e.lookups("coalesced"); c == 0 {
		t.Fatalf("no lookup was coalesced (hit=%d)", e.lookups("hit"))
	}
}

func TestNotReusableResultsAreNotShared(t *testing.T) {
	e := newTestEngine(t, `
function authenticate(ctx)
  local t = kura.now()
  while kura.now() - t < 0.02 do end
  return {principal = {id = ctx.artifact_key}, ttl_seconds = 0}
end`, func(c *Config) { c.HookTimeout = 2 * time.Second })
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			r := req(OpRead, "acme", "ios", "Authorization: Bearer same")
			r.ArtifactKey = fmt.Sprintf("key-%d", i)
			if d := decide(e, r); d.Principal == nil || d.Principal.ID != r.ArtifactKey {
				t.Errorf("request for %s got principal %+v", r.ArtifactKey, d.Principal)
			}
		})
	}
	wg.Wait()
}

func TestHooksAreOptional(t *testing.T) {
	authzOnly := newTestEngine(t, `
function authorize(ctx, principal)
  return {allow = principal == nil and ctx.operation ~= "namespace.delete"}
end`)
	if d := decide(authzOnly, req(OpRead, "acme", "ios")); !d.Allowed || d.Principal != nil {
		t.Fatalf("anonymous read: %+v", d)
	}
	if d := decide(authzOnly, req(OpNamespaceDelete, "acme", "ios")); d.Allowed || d.Status != 403 {
		t.Fatalf("delete: %+v", d)
	}
	authnOnly := newTestEngine(t, `function authenticate(ctx) return {principal = {id = "x"}} end`)
	if d := decide(authnOnly, req(OpWrite, "acme", "ios")); !d.Allowed || d.Principal.ID != "x" {
		t.Fatalf("authenticate only: %+v", d)
	}
}

func TestLoadErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name, src, want string
	}{
		{"syntax error", "function authenticate(ctx)\n  return {allow = }\nend\n", "policy.lua:2:"},
		{"top-level runtime error", "local x = nil\nlocal y = x.field\nfunction authenticate(ctx) end\n", "policy.lua:2:"},
		{"no hooks", "function authenticat(ctx) end\n", "defines none of the hooks"},
		{"top-level infinite loop", "while true do end\n", "timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(Config{ScriptPath: writeScript(t, c.src), HookTimeout: time.Millisecond})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New: %v, want an error containing %q", err, c.want)
			}
		})
	}
	if _, err := New(Config{ScriptPath: "/nonexistent/policy.lua"}); err == nil || !strings.Contains(err.Error(), "/nonexistent/policy.lua") {
		t.Fatalf("missing script: %v", err)
	}
}

func TestInvalidResultsFailClosed(t *testing.T) {
	e := newTestEngine(t, `
function authenticate(ctx)
  local t = ctx.credentials and ctx.credentials.token
  if t == "nothing" then return nil end
  if t == "string" then return "yes" end
  if t == "two" then return {anonymous = true, principal = {id = "x"}} end
  if t == "noid" then return {principal = {kind = "x"}} end
  if t == "status" then return {deny = {status = 200}} end
  if t == "fn" then return {principal = {id = "x", attributes = {f = print}}} end
  if t == "raise" then error("boom") end
  return {anonymous = true}
end
function authorize(ctx, p)
  if ctx.namespace_id == "bad" then return {allow = "yes"} end
  return {allow = true}
end`)
	for _, tok := range []string{"nothing", "string", "two", "noid", "status", "fn", "raise"} {
		d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer "+tok))
		if d.Allowed || d.Status != 401 || d.Message != "Authentication failed" {
			t.Errorf("%s: %+v, want a fail-closed 401", tok, d)
		}
	}
	if n := e.hookCalls(hookAuthenticate, resultInvalid); n != 6 {
		t.Errorf("invalid results counted %d, want 6", n)
	}
	if n := e.hookCalls(hookAuthenticate, resultError); n != 1 {
		t.Errorf("errors counted %d, want 1", n)
	}
	if d := decide(e, req(OpRead, "acme", "bad")); d.Allowed || d.Status != 403 {
		t.Errorf("invalid authorize result: %+v, want a fail-closed 403", d)
	}
}

func TestFailOpen(t *testing.T) {
	e := newTestEngine(t, `
function authenticate(ctx) error("authn down") end
function authorize(ctx, principal)
  if principal ~= nil then error("unexpected principal") end
  if ctx.namespace_id == "down" then error("authz down") end
  return {allow = true}
end`, func(c *Config) { c.AuthenticateFailOpen, c.AuthorizeFailOpen = true, true })
	if d := decide(e, req(OpRead, "acme", "ios")); !d.Allowed || d.Principal != nil {
		t.Fatalf("failing authenticate with fail-open: %+v, want anonymous allow", d)
	}
	if d := decide(e, req(OpRead, "acme", "down")); !d.Allowed {
		t.Fatalf("failing authorize with fail-open: %+v, want allow", d)
	}
}

func TestSandbox(t *testing.T) {
	e := newTestEngine(t, `
function authenticate(ctx)
  local missing = {}
  for _, name in ipairs({"os", "io", "debug", "package", "require", "load", "loadstring",
                          "dofile", "loadfile", "collectgarbage", "module"}) do
    if _G[name] ~= nil then table.insert(missing, name) end
  end
  if string.dump ~= nil then table.insert(missing, "string.dump") end
  if #missing > 0 then return {deny = {status = 500, message = table.concat(missing, ",")}} end
  return {anonymous = true, ttl_seconds = 0}
end`)
	if d := decide(e, req(OpRead, "acme", "ios")); !d.Allowed {
		t.Fatalf("the sandbox exposes: %s", d.Message)
	}
}

func TestResponseHeaders(t *testing.T) {
	e := newTestEngine(t, `
function authenticate(ctx) return {principal = {id = "p1"}} end
function response_headers(ctx, principal)
  if ctx.namespace_id == "bad" then return {headers = {["bad header"] = "x"}} end
  if ctx.namespace_id == "raise" then error("nope") end
  return {
    headers = {["X-Principal"] = principal and principal.id or "none", ["x-status"] = ctx.status_code},
    sign = {header = "x-signature", signer = "license", payload = ctx.namespace_id .. ":" .. ctx.status_code},
  }
end`, func(c *Config) { c.Signers = map[string][]byte{"license": []byte("k3y")} })
	if !e.HasResponseHeaders() {
		t.Fatal("HasResponseHeaders = false")
	}
	r := req(OpRead, "acme", "ios")
	h := e.ResponseHeaders(context.Background(), r, decide(e, r), 200)
	want, _ := e.env.sign("license", "ios:200")
	if h["x-principal"] != "p1" || h["x-status"] != "200" || h["x-signature"] != want {
		t.Fatalf("headers = %#v (signature want %s)", h, want)
	}
	if h := e.ResponseHeaders(context.Background(), req(OpRead, "acme", "bad"), Decision{}, 403); h != nil {
		t.Fatalf("an invalid header name must fail open to no headers, got %#v", h)
	}
	closed := newTestEngine(t, `function response_headers(ctx, p) error("down") end`,
		func(c *Config) { c.ResponseHeadersFailClosed = true })
	if h := closed.ResponseHeaders(context.Background(), req(OpRead, "acme", "ios"), Decision{}, 200); h["x-kura-extension-error"] != "response_headers" {
		t.Fatalf("fail-closed response headers: %#v", h)
	}
	plain := newTestEngine(t, `function authenticate(ctx) return {anonymous = true} end`)
	if plain.HasResponseHeaders() || plain.ResponseHeaders(context.Background(), r, Decision{}, 200) != nil {
		t.Fatal("a script without response_headers must add nothing")
	}
}

// ctxKey is a context value standing in for the request id and span a node's log handler
// reads from the context of every record.
type ctxKey struct{}

// contextRecorder is a slog handler that records each message with the ctxKey value of the
// context it was logged with.
type contextRecorder struct {
	mu      *sync.Mutex
	records map[string]any // message → ctxKey value
}

func (h contextRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h contextRecorder) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records[r.Message] = ctx.Value(ctxKey{})
	return nil
}
func (h contextRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h contextRecorder) WithGroup(string) slog.Handler      { return h }

// TestLogsCarryTheRequestContext: kura.log, print and a hook failure are logged with the
// request's context, so the node's handler can add request_id, trace_id and span_id.
func TestLogsCarryTheRequestContext(t *testing.T) {
	rec := contextRecorder{mu: &sync.Mutex{}, records: map[string]any{}}
	e := newTestEngine(t, `
function authenticate(ctx)
  kura.log("info", "from kura.log")
  print("from print")
  return {principal = {id = "p"}}
end
function authorize(ctx, p) error("boom") end`, func(c *Config) { c.Logger = slog.New(rec) })
	ctx := context.WithValue(context.Background(), ctxKey{}, "request-1")
	if d := e.Decide(ctx, req(OpRead, "acme", "ios")); d.Allowed {
		t.Fatalf("failing authorize allowed: %+v", d)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, msg := range []string{"policy script: from kura.log", "policy script print", "policy hook failed"} {
		if v, ok := rec.records[msg]; !ok || v != "request-1" {
			t.Errorf("%q logged %v with context value %v, want request-1 (records %v)", msg, ok, v, rec.records)
		}
	}
}
