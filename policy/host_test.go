package policy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// hostEnvFor builds the host resources of cfg the way New does.
func hostEnvFor(t *testing.T, cfg Config) *hostEnv {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 }, func() float64 { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	env, err := newHostEnv(ctx, cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func hs256(t *testing.T, secret string, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSignHMACBase64(t *testing.T) {
	env := hostEnvFor(t, Config{Signers: map[string][]byte{"License": []byte("raw key")}})
	got, err := evalLua(t, env, `return kura.sign_hmac_base64("license", "payload")`)
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte("raw key"))
	mac.Write([]byte("payload"))
	if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); got != want {
		t.Fatalf("got %v, want %s", got, want)
	}
}

func TestJWTVerifyHMAC(t *testing.T) {
	env := hostEnvFor(t, Config{JWTVerifiers: map[string]JWTVerifier{"ci": {
		Algorithms: []string{"HS256"}, Secret: []byte("s3cret"), Issuer: "https://issuer", Audiences: []string{"kura", "other"},
	}}})
	now := time.Now()
	valid := jwt.MapClaims{"iss": "https://issuer", "aud": "kura", "exp": now.Add(time.Hour).Unix(), "namespaces": []string{"ios"}, "sub": "ci-1"}
	with := func(k string, v any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for kk, vv := range valid {
			c[kk] = vv
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	verify := func(token string) (any, error) {
		return evalLua(t, env, fmt.Sprintf(`local c = kura.jwt_verify("CI", %q) return {c.sub, c.namespaces[1]}`, token))
	}
	if got, err := verify(hs256(t, "s3cret", valid)); err != nil || fmt.Sprint(got) != "[ci-1 ios]" {
		t.Fatalf("valid token: %v %v", got, err)
	}
	// Within the 30 s leeway.
	if _, err := verify(hs256(t, "s3cret", with("exp", now.Add(-10*time.Second).Unix()))); err != nil {
		t.Fatalf("expired 10 s ago (inside the leeway): %v", err)
	}
	refused := map[string]string{
		"forged":   hs256(t, "wrong", valid),
		"expired":  hs256(t, "s3cret", with("exp", now.Add(-time.Minute).Unix())),
		"no exp":   hs256(t, "s3cret", with("exp", nil)),
		"not yet":  hs256(t, "s3cret", with("nbf", now.Add(time.Minute).Unix())),
		"issuer":   hs256(t, "s3cret", with("iss", "https://evil")),
		"audience": hs256(t, "s3cret", with("aud", "someone-else")),
		"garbage":  "not.a.jwt",
		"alg none": unsignedToken(t, valid),
		"HS512 for HS256": func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, valid).SignedString([]byte("s3cret"))
			return s
		}(),
	}
	for name, tok := range refused {
		if _, err := verify(tok); err == nil || !strings.Contains(err.Error(), "kura.jwt_verify(CI)") {
			t.Errorf("%s: err = %v, want a jwt_verify error", name, err)
		}
	}
}

func unsignedToken(t *testing.T, claims jwt.MapClaims) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwksServer serves a JWKS document that the test can change.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []map[string]string
	fetches int
}

func newJWKSServer(t *testing.T) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.fetches++
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": s.keys})
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(keys ...map[string]string) {
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(kid string, k *rsa.PublicKey) map[string]string {
	return map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(t *testing.T, kid string, k *ecdsa.PublicKey) map[string]string {
	raw, err := k.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
		"x": b64(raw[1:33]), "y": b64(raw[33:])}
}

func signed(t *testing.T, m jwt.SigningMethod, kid string, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWTVerifyJWKS(t *testing.T) {
	rsaOld, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaNew, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := newJWKSServer(t)
	srv.set(rsaJWK("old", &rsaOld.PublicKey), ecJWK(t, "ec", &ecKey.PublicKey))
	env := hostEnvFor(t, Config{JWTVerifiers: map[string]JWTVerifier{"oidc": {
		Algorithms: []string{"RS256", "ES256"}, JWKSURL: srv.URL, JWKSRefresh: 100 * time.Millisecond, Audiences: []string{"kura"},
	}}})
	claims := func() jwt.MapClaims {
		return jwt.MapClaims{"aud": "kura", "exp": time.Now().Add(time.Hour).Unix(), "sub": "pipeline"}
	}
	verify := func(token string) error {
		_, err := evalLua(t, env, fmt.Sprintf(`return kura.jwt_verify("oidc", %q).sub`, token))
		return err
	}
	if err := verify(signed(t, jwt.SigningMethodRS256, "old", rsaOld, claims())); err != nil {
		t.Fatalf("RS256 with a served key: %v", err)
	}
	if err := verify(signed(t, jwt.SigningMethodES256, "ec", ecKey, claims())); err != nil {
		t.Fatalf("ES256 with a served key: %v", err)
	}
	if err := verify(signed(t, jwt.SigningMethodRS256, "old", rsaNew, claims())); err == nil {
		t.Fatal("a token signed by another key under a served kid was accepted")
	}
	// Rotation: the old key leaves the set, the new one joins. Tokens of the new key verify
	// (an unknown kid triggers a fetch), and the old key's stop once the cache refreshes.
	srv.set(rsaJWK("new", &rsaNew.PublicKey))
	deadline := time.Now().Add(10 * time.Second)
	for verify(signed(t, jwt.SigningMethodRS256, "old", rsaOld, claims())) == nil {
		if time.Now().After(deadline) {
			t.Fatal("a key rotated out of the JWKS still verifies after 10 s")
		}
		time.Sleep(20 * time.Millisecond) // waiting for the 100 ms background refresh
	}
	if err := verify(signed(t, jwt.SigningMethodRS256, "new", rsaNew, claims())); err != nil {
		t.Fatalf("the rotated-in key: %v", err)
	}
	// HS256 tokens are never accepted by a public-key verifier (the classic alg confusion).
	hmacWithPublicKey := hs256(t, string(rsaNew.N.Bytes()), claims())
	if err := verify(hmacWithPublicKey); err == nil {
		t.Fatal("an HS256 token was accepted by an RS256 verifier")
	}
}

func TestJWTVerifierConfigErrors(t *testing.T) {
	m, _ := newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 }, func() float64 { return 0 })
	for name, cfg := range map[string]JWTVerifier{
		"no algorithm":         {Secret: []byte("x")},
		"unknown algorithm":    {Algorithms: []string{"PS999"}, Secret: []byte("x")},
		"hmac without secret":  {Algorithms: []string{"HS256"}},
		"rsa without jwks url": {Algorithms: []string{"RS256"}},
		"mixed":                {Algorithms: []string{"HS256", "RS256"}, Secret: []byte("x"), JWKSURL: "http://127.0.0.1:1"},
	} {
		if _, err := newJWTVerifier(context.Background(), "X", cfg, slog.New(slog.DiscardHandler), m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHTTPJSON(t *testing.T) {
	var mu sync.Mutex
	var seen *http.Request
	var seenBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen, seenBody = r.Clone(context.Background()), string(b)
		mu.Unlock()
		switch strings.TrimPrefix(r.URL.Path, "/authz") {
		case "/check":
			w.Header().Set("X-Reply", "yes")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"allow":true,"principal":{"id":"svc"}}`))
		case "/text":
			_, _ = w.Write([]byte("plain words"))
		case "/big":
			_, _ = w.Write([]byte(strings.Repeat("x", maxHTTPJSONResponseBytes+10)))
		case "/redirect":
			http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusFound)
		case "/slow":
			time.Sleep(300 * time.Millisecond)
		}
	}))
	defer srv.Close()
	env := hostEnvFor(t, Config{HTTPClients: map[string]HTTPClient{"authz": {
		BaseURL: srv.URL + "/authz", ConnectTimeout: time.Second, RequestTimeout: 100 * time.Millisecond,
	}}})
	got, err := evalLua(t, env, `
local r = kura.http_json("authz", {method = "POST", path = "/check", headers = {["X-Token"] = "t1"},
                                   query = {ns = "ios"}, body = {token = "t1", n = 2}})
return {r.status, r.body.allow, r.body.principal.id, r.headers["x-reply"]}`)
	if err != nil || fmt.Sprint(got) != "[200 true svc yes]" {
		t.Fatalf("POST: %v %v", got, err)
	}
	mu.Lock()
	if seen.Method != "POST" || seen.URL.Query().Get("ns") != "ios" || seen.Header.Get("X-Token") != "t1" ||
		seen.Header.Get("Content-Type") != "application/json" || seenBody != `{"n":2,"token":"t1"}` {
		t.Errorf("the service saw %s %s %v body %s", seen.Method, seen.URL, seen.Header, seenBody)
	}
	mu.Unlock()
	if got, err := evalLua(t, env, `local r = kura.http_json("authz", {path = "/text"}) return {r.body == nil, r.text, r.status}`); err != nil || fmt.Sprint(got) != "[true plain words 200]" {
		t.Errorf("non-JSON body: %v %v", got, err)
	}
	for name, body := range map[string]string{
		"oversized body": `return kura.http_json("authz", {path = "/big"})`,
		"timeout":        `return kura.http_json("authz", {path = "/slow"})`,
		"query in path":  `return kura.http_json("authz", {path = "/check?x=1"})`,
		"absolute path":  `return kura.http_json("authz", {path = "//evil.example/x"})`,
		"dot segments":   `return kura.http_json("authz", {path = "/../admin"})`,
	} {
		if _, err := evalLua(t, env, body); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	redirect, err := evalLua(t, env, `return kura.http_json("authz", {path = "/redirect"}).status`)
	if err != nil || redirect != 302.0 {
		t.Errorf("a redirect must be returned, not followed: %v %v", redirect, err)
	}
}

func TestEnvAndFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.txt")
	if err := os.WriteFile(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := hostEnvFor(t, Config{Env: map[string]string{"TEAM": "mobile"}, Files: map[string]string{"tokens": path}})
	got, err := evalLua(t, env, `return {kura.env("TEAM"), kura.env("MISSING") == nil, kura.file("TOKENS")}`)
	if err != nil || fmt.Sprint(got) != "[mobile true one]" {
		t.Fatalf("got %v %v", got, err)
	}
	// A rewritten file is picked up after the recheck interval.
	if err := os.WriteFile(path, []byte("two two"), 0o600); err != nil {
		t.Fatal(err)
	}
	env.files["TOKENS"].mu.Lock()
	env.files["TOKENS"].checked = time.Now().Add(-fileRecheck)
	env.files["TOKENS"].mu.Unlock()
	if got, _ := evalLua(t, env, `return kura.file("tokens")`); got != "two two" {
		t.Fatalf("after the rewrite: %v", got)
	}
}
