package policy

import (
	"runtime"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// benchScript is a realistic policy: a JWT with a namespace claim and a read-only claim.
const benchScript = `
function authenticate(ctx)
  local c = ctx.credentials
  if c == nil or c.scheme ~= "bearer" then return {deny = {status = 401, message = "Missing token"}} end
  local ok, claims = pcall(kura.jwt_verify, "ci", c.token)
  if not ok then return {deny = {status = 401, message = "Invalid token"}} end
  return {principal = {id = claims.sub, kind = "ci", attributes = {namespaces = claims.namespaces, read_only = claims.read_only}}}
end

function authorize(ctx, p)
  for _, ns in ipairs(p.attributes.namespaces) do
    if ns == ctx.namespace_id then
      if ctx.operation == "artifact.write" and p.attributes.read_only then return {allow = false} end
      return {allow = true}
    end
  end
  return {deny = {status = 403, message = "namespace not granted"}}
end`

func benchEngine(b *testing.B, cached bool) (*testEngine, *Request) {
	e := newTestEngine(b, benchScript, func(c *Config) {
		c.JWTVerifiers = map[string]JWTVerifier{"ci": {Algorithms: []string{"HS256"}, Secret: []byte("bench-secret")}}
		c.HookTimeout = time.Second
		if !cached {
			c.AllowTTL, c.DenyTTL = 0, 0
		}
	})
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "pipeline-1", "namespaces": []string{"android", "ios"}, "read_only": false,
		"exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte("bench-secret"))
	if err != nil {
		b.Fatal(err)
	}
	r := req(OpWrite, "acme", "ios", "Authorization: Bearer "+token, "User-Agent: bazel/4.2.3", "Accept: */*")
	if d := decide(e, r); !d.Allowed {
		b.Fatalf("denied: %+v", d)
	}
	return e, r
}

// go test -run '^$' -bench . -benchmem ./policy/
func BenchmarkDecideCachedAllow(b *testing.B) {
	e, r := benchEngine(b, true)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if !decide(e, r).Allowed {
			b.Fatal("denied")
		}
	}
}

func BenchmarkDecideUncachedJWT(b *testing.B) {
	e, r := benchEngine(b, false)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if !decide(e, r).Allowed {
			b.Fatal("denied")
		}
	}
}

// benchParallel64 runs 64 concurrent callers (SetParallelism scales by GOMAXPROCS).
func benchParallel64(b *testing.B, cached bool) {
	e, r := benchEngine(b, cached)
	b.ReportAllocs()
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !decide(e, r).Allowed {
				b.Error("denied")
				return
			}
		}
	})
}

func BenchmarkDecideCached64Callers(b *testing.B)   { benchParallel64(b, true) }
func BenchmarkDecideUncached64Callers(b *testing.B) { benchParallel64(b, false) }

// BenchmarkHasResponseHeaders is what front ends pay on every response to learn whether to
// call response_headers.
func BenchmarkHasResponseHeaders(b *testing.B) {
	e, _ := benchEngine(b, true)
	b.ReportAllocs()
	for b.Loop() {
		if e.HasResponseHeaders() {
			b.Fatal("the bench script has no response_headers")
		}
	}
}
