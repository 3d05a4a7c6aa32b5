package policy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	lua "github.com/Shopify/go-lua"
)

// go test -fuzz FuzzParseCredentials ./policy/
func FuzzParseCredentials(f *testing.F) {
	for _, s := range []string{"", "Bearer abc", "bearer  abc ", "Basic dXNlcjpwYXNz", "Basic dXNlcjpwYXNz=", "Basic !!", "Basic dXNlcg==",
		"Negotiate xyz", "Bearer", "Basic\tdXNlcjpwYXNz", "  "} {
		f.Add(s, "")
		f.Add("", s)
	}
	f.Fuzz(func(t *testing.T, authorization, apiKey string) {
		c := ParseCredentials(authorization, apiKey)
		switch c.Scheme {
		case "":
			if strings.TrimSpace(authorization) != "" || strings.TrimSpace(apiKey) != "" {
				t.Fatalf("a credential was dropped: %q %q", authorization, apiKey)
			}
		case SchemeBasic:
			if c.Error == "" {
				// What parsed must re-encode to the same credentials.
				again := ParseCredentials("Basic "+base64.StdEncoding.EncodeToString([]byte(c.Username+":"+c.Password)), "")
				if again.Username != c.Username || again.Password != c.Password {
					t.Fatalf("round trip: %+v vs %+v", c, again)
				}
			} else if c.Username != "" || c.Password != "" {
				t.Fatalf("a malformed basic credential kept parts: %+v", c)
			}
		case SchemeBearer:
			if c.Error == "" && (c.Token == "" || c.Token != strings.TrimSpace(c.Token)) {
				t.Fatalf("bearer token %q", c.Token)
			}
		}
	})
}

// go test -fuzz FuzzDecodeResult ./policy/ — JSON stands in for any plain Lua value: it is
// pushed into an interpreter, read back, and given to every result decoder.
func FuzzDecodeResult(f *testing.F) {
	for _, s := range []string{
		`{"principal":{"id":"a","kind":"k","attributes":{"x":[1,2,{"y":true}]}},"ttl_seconds":60}`,
		`{"anonymous":true}`, `{"deny":{"status":403,"message":"no"}}`, `{"deny":{"status":200}}`,
		`{"allow":true,"ttl_seconds":0}`, `{"allow":"yes"}`, `{"headers":{"X-A":"1","bad name":"x"}}`,
		`{"headers":{"x-b":2},"sign":{"header":"x-sig","signer":"s","payload":"p"}}`, `[1,2,3]`, `null`, `"str"`,
		`{"ttl_seconds":-1,"anonymous":true}`, `{"1":"a","2":"b"}`, `{"headers":{"content-length":"1"}}`,
	} {
		f.Add(s)
	}
	l := lua.NewState()
	f.Fuzz(func(t *testing.T, doc string) {
		var v any
		if json.Unmarshal([]byte(doc), &v) != nil {
			return
		}
		l.SetTop(0)
		pushGo(l, v)
		back, err := toGo(l, -1, &decodeBudget{})
		if err != nil {
			return // too large or too deep
		}
		if a, err := decodeAuthenticate(back); err == nil {
			// A valid result is a table; anonymous is the one outcome without a field of its own.
			_, anonymous := back.(map[string]any)["anonymous"]
			n := 0
			for _, set := range []bool{a.principal != nil, anonymous, a.deny != nil} {
				if set {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("authenticate result with %d outcomes: %+v", n, a)
			}
			if a.deny != nil && (a.deny.status < 400 || a.deny.status > 599) {
				t.Fatalf("deny status %d", a.deny.status)
			}
			if a.ttl != nil && (*a.ttl < 0 || *a.ttl > maxTTL) {
				t.Fatalf("ttl %v", *a.ttl)
			}
		}
		if z, err := decodeAuthorize(back); err == nil && z.deny != nil && (z.deny.status < 400 || z.deny.status > 599) {
			t.Fatalf("deny status %d", z.deny.status)
		}
		if h, err := decodeResponseHeaders(back); err == nil {
			for name, value := range h.headers {
				if _, err := checkHeader(name, value); err != nil || name != strings.ToLower(name) {
					t.Fatalf("accepted header %q: %q", name, value)
				}
			}
		}
	})
}

// go test -fuzz FuzzLuaResult ./policy/ — arbitrary Lua returned from a hook: the interpreter
// must answer with a value or an error, never take the process down.
func FuzzLuaResult(f *testing.F) {
	for _, s := range []string{
		`{principal = {id = "a"}}`, `{deny = {status = 401}}`, `nil`, `print`, `{[{}] = 1}`, `{[1.5] = 1}`,
		`(function() local t = {} t.t = t return t end)()`, `string.rep("x", 100)`, `0/0`, `{1, nil, 3}`,
	} {
		f.Add(s)
	}
	env := &hostEnv{logger: slog.New(slog.DiscardHandler), env: map[string]string{}}
	f.Fuzz(func(t *testing.T, expr string) {
		src := &script{name: "fuzz.lua", text: "function test()\nreturn " + expr + "\nend\n"}
		it, err := newInterp(src, env, 100*time.Millisecond, DefaultHookMemoryBytes)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		v, err := it.call(ctx, "test", func(*lua.State) int { return 0 })
		if err != nil {
			return
		}
		_, _ = decodeAuthenticate(v)
		_, _ = decodeAuthorize(v)
		_, _ = decodeResponseHeaders(v)
	})
}
