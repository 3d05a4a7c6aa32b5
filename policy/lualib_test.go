package policy

import (
	"context"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	lua "github.com/Shopify/go-lua"
)

// evalLua runs body as the body of a function in a sandboxed interpreter and returns what it
// returns (as toGo decodes it).
func evalLua(t *testing.T, env *hostEnv, body string) (any, error) {
	t.Helper()
	if env == nil {
		env = &hostEnv{logger: slog.New(slog.DiscardHandler), env: map[string]string{}}
	}
	src := &script{name: "test.lua", text: "function test()\n" + body + "\nend\n"}
	it, err := newInterp(src, env, time.Second, DefaultHookMemoryBytes)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return it.call(ctx, "test", func(*lua.State) int { return 0 })
}

func TestStringLibrary(t *testing.T) {
	cases := []struct {
		name, body string
		want       any
	}{
		{"find plain by default without specials", `return {string.find("a.b.c", "b")}`, []any{3.0, 3.0}},
		{"find pattern", `return {string.find("Bearer abc", "^Bearer%s+")}`, []any{1.0, 7.0}},
		{"find with captures", `return {string.find("key=value", "(%w+)=(%w+)")}`, []any{1.0, 9.0, "key", "value"}},
		{"find plain flag", `return {string.find("a.b", ".", 1, true)}`, []any{2.0, 2.0}},
		{"find init", `return {string.find("abcabc", "b", 3)}`, []any{5.0, 5.0}},
		{"find negative init", `return {string.find("abcabc", "a", -3)}`, []any{4.0, 4.0}},
		{"find miss", `return string.find("abc", "z") == nil`, true},
		{"match whole", `return string.match("Bearer tok.en", "^Bearer%s+(.+)$")`, "tok.en"},
		{"match no capture", `return string.match("v1.2.3", "%d+%.%d+")`, "1.2"},
		{"match position capture", `return {string.match("hello", "()ll()")}`, []any{3.0, 5.0}},
		{"match miss", `return string.match("abc", "%d") == nil`, true},
		{"method syntax", `local s = "ns:ios" return s:match("^ns:(%a+)$")`, "ios"},
		{"gmatch", `local out = {} for k, v in string.gmatch("a=1, b=2", "(%w+)=(%w+)") do out[#out+1] = k .. v end return out`, []any{"a1", "b2"}},
		{"gmatch lines", `local n = 0 for line in ("x\ny\nz"):gmatch("[^\n]+") do n = n + 1 end return n`, 3.0},
		{"gsub string", `return {string.gsub("Bearer abc", "^Bearer%s+", "")}`, []any{"abc", 1.0}},
		{"gsub captures", `return (string.gsub("hello world", "(%w+)", "<%1>"))`, "<hello> <world>"},
		{"gsub %0 and %%", `return (string.gsub("ab", "%w", "%0%%"))`, "a%b%"},
		{"gsub limit", `return {string.gsub("aaa", "a", "b", 2)}`, []any{"bba", 2.0}},
		{"gsub table", `return (string.gsub("$x and $y", "%$(%w+)", {x = "1"}))`, "1 and $y"},
		{"gsub function", `return (string.gsub("abc", "%w", function(c) return c:upper() end))`, "ABC"},
		{"gsub function false keeps", `return (string.gsub("abc", "%w", function(c) if c == "b" then return false end return "-" end))`, "-b-"},
		{"rep", `return string.rep("ab", 3, ",")`, "ab,ab,ab"},
		{"rep zero", `return string.rep("ab", 0)`, ""},
		{"lower upper sub len", `return string.lower("AB") .. string.upper("cd") .. string.sub("hello", 2, 3) .. #"xyz"`, "abCDel3"},
		{"format", `return string.format("%s-%d", "a", 7)`, "a-7"},
		{"pcall catches errors", `local ok, err = pcall(error, "boom") return {ok, err}`, []any{false, "boom"}},
		{"pcall returns results", `return {pcall(function(a, b) return a + b, "x" end, 1, 2)}`, []any{true, 3.0, "x"}},
		{"xpcall calls the handler", `return {xpcall(function() error("seven", 0) end, function(e) return e .. "!" end)}`, []any{false, "seven!"}},
		{"xpcall passes arguments", `return {xpcall(function(a) return a * 10 end, print, 4)}`, []any{true, 40.0}},
		{"nested xpcall", `local function inner() return xpcall(function() error("in") end, function(e) return "handled " .. e end) end
		  local ok, a, b = pcall(inner) return {ok, a, b}`, []any{true, false, "handled test.lua:2: in"}},
		{"table library", `local t = {3, 1, 2} table.sort(t) table.insert(t, 4) return table.concat(t, ",")`, "1,2,3,4"},
		{"math", `return math.floor(3.7) + math.max(1, 5)`, 8.0},
		{"bit32", `return bit32.band(6, 3)`, 2.0},
		{"kura.sha256_hex", `return kura.sha256_hex("abc")`, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"kura.json", `local v = kura.json_decode('{"a":[1,2],"b":{"c":true}}') return kura.json_encode({a = v.a[2], c = v.b.c})`, `{"a":2,"c":true}`},
		{"kura.now", `return kura.now() > 1.7e9`, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := evalLua(t, nil, c.body)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %#v, want %#v", got, c.want)
			}
		})
	}
}

func TestStringLibraryErrors(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"malformed pattern", `return string.match("x", "[a")`, "malformed pattern"},
		{"rep too long", `return string.rep("x", 1e9)`, "string.rep"},
		{"gsub result too long", `local s = string.rep("x", 90000) return string.gsub(s, "x", string.rep("y", 50))`, "string.gsub: result longer"},
		{"gsub bad replacement", `return string.gsub("x", "x", "%2")`, "invalid capture index"},
		{"json decode", `return kura.json_decode("{")`, "kura.json_decode"},
		{"unknown signer", `return kura.sign_hmac_base64("nope", "x")`, "unknown signer"},
		{"unknown verifier", `return kura.jwt_verify("nope", "x")`, "unknown verifier"},
		{"unknown client", `return kura.http_json("nope", {path = "/"})`, "unknown HTTP client"},
		{"unknown file", `return kura.file("nope")`, "unknown file"},
		{"function result", `return print`, "unsupported Lua value"},
		{"bad log level", `kura.log("loud", "x")`, "kura.log"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := evalLua(t, nil, c.body)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}
