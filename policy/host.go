package policy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	lua "github.com/Shopify/go-lua"
)

// hostEnv holds what the kura.* host functions use, shared by every interpreter of an engine.
// Everything in it is safe for concurrent use.
type hostEnv struct {
	signers   map[string][]byte // normalized id → HMAC key
	verifiers map[string]*jwtVerifier
	clients   map[string]*httpJSONClient
	files     map[string]*watchedFile
	env       map[string]string
	logger    *slog.Logger
	metrics   *metrics
}

// normalizeID is how scripts name resources: case-insensitively, like the variables'
// <ID> part (config.ResourceID).
func normalizeID(id string) string { return strings.ToUpper(strings.TrimSpace(id)) }

// installHost creates the kura table. Every function raises a Lua error on misuse (unknown
// resource, wrong argument), which a script may catch with pcall.
func (it *interp) installHost() {
	l := it.l
	l.NewTable()
	lua.SetFunctions(l, []lua.RegistryFunction{
		{Name: "sign_hmac_base64", Function: it.signHMACBase64},
		{Name: "jwt_verify", Function: it.jwtVerify},
		{Name: "http_json", Function: it.httpJSON},
		{Name: "env", Function: it.envLookup},
		{Name: "file", Function: it.fileContents},
		{Name: "json_decode", Function: jsonDecode},
		{Name: "json_encode", Function: jsonEncode},
		{Name: "sha256_hex", Function: sha256Hex},
		{Name: "now", Function: now},
		{Name: "log", Function: it.log},
	}, 0)
	l.SetGlobal("kura")
}

// kura.sign_hmac_base64(signer, payload) → base64 of HMAC-SHA256(payload) under the signer's key.
func (it *interp) signHMACBase64(l *lua.State) int {
	id, payload := lua.CheckString(l, 1), lua.CheckString(l, 2)
	sig, err := it.env.sign(id, payload)
	if err != nil {
		errorf(l, "kura.sign_hmac_base64: %v", err)
	}
	l.PushString(sig)
	return 1
}

func (e *hostEnv) sign(id, payload string) (string, error) {
	key, ok := e.signers[normalizeID(id)]
	if !ok {
		return "", fmt.Errorf("unknown signer %q (set KURA_EXTENSION_SIGNER_%s_SECRET)", id, normalizeID(id))
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(payload))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil)), nil
}

// kura.jwt_verify(verifier, token) → the claims table; raises when the token is not valid.
func (it *interp) jwtVerify(l *lua.State) int {
	id, token := lua.CheckString(l, 1), lua.CheckString(l, 2)
	v, ok := it.env.verifiers[normalizeID(id)]
	if !ok {
		errorf(l, "kura.jwt_verify: unknown verifier %q (set KURA_EXTENSION_JWT_VERIFIER_%s_*)", id, normalizeID(id))
	}
	var claims map[string]any
	err := it.hostCall(func(ctx context.Context) error {
		var err error
		claims, err = v.verify(ctx, token)
		return err
	})
	if err != nil {
		errorf(l, "kura.jwt_verify(%s): %v", id, err)
	}
	pushGo(l, claims)
	return 1
}

// kura.http_json(client, {method, path, headers, query, body}) → {status, headers, body, text}.
func (it *interp) httpJSON(l *lua.State) int {
	id := lua.CheckString(l, 1)
	lua.CheckType(l, 2, lua.TypeTable)
	c, ok := it.env.clients[normalizeID(id)]
	if !ok {
		errorf(l, "kura.http_json: unknown HTTP client %q (set KURA_EXTENSION_HTTP_CLIENT_%s_BASE_URL)", id, normalizeID(id))
	}
	raw, err := toGo(l, 2, &decodeBudget{})
	if err != nil {
		errorf(l, "kura.http_json: request: %v", err)
	}
	req, err := parseHTTPJSONRequest(raw)
	if err != nil {
		errorf(l, "kura.http_json: %v", err)
	}
	var resp map[string]any
	err = it.hostCall(func(ctx context.Context) error {
		var err error
		resp, err = c.do(ctx, req)
		return err
	})
	if err != nil {
		errorf(l, "kura.http_json(%s): %v", id, err)
	}
	pushGo(l, resp)
	return 1
}

// kura.env(name) → the variable's value when the node started, or nil.
func (it *interp) envLookup(l *lua.State) int {
	if v, ok := it.env.env[lua.CheckString(l, 1)]; ok {
		l.PushString(v)
	} else {
		l.PushNil()
	}
	return 1
}

// kura.file(id) → the contents of KURA_EXTENSION_FILE_<ID>_PATH, re-read when it changes.
func (it *interp) fileContents(l *lua.State) int {
	id := lua.CheckString(l, 1)
	f, ok := it.env.files[normalizeID(id)]
	if !ok {
		errorf(l, "kura.file: unknown file %q (set KURA_EXTENSION_FILE_%s_PATH)", id, normalizeID(id))
	}
	text, err := f.contents()
	if err != nil {
		errorf(l, "kura.file(%s): %v", id, err)
	}
	l.PushString(text)
	return 1
}

// kura.log(level, message): one line in the node's log, from the script.
func (it *interp) log(l *lua.State) int {
	level, msg := strings.ToLower(lua.CheckString(l, 1)), lua.CheckString(l, 2)
	if len(msg) > 4096 {
		msg = msg[:4096] + "…"
	}
	var lv slog.Level
	switch level {
	case "debug":
		lv = slog.LevelDebug
	case "info":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		errorf(l, "kura.log: level must be debug, info, warn or error, not %q", level)
	}
	// The call's context carries the request's, so the node's log handler adds its request
	// and trace ids.
	it.env.logger.Log(it.ctx, lv, "policy script: "+msg, "hook", it.hook)
	return 0
}

// kura.json_decode(text) → the value; raises on invalid JSON.
func jsonDecode(l *lua.State) int {
	text := lua.CheckString(l, 1)
	var v any
	if err := json.Unmarshal([]byte(text), &v); err != nil {
		errorf(l, "kura.json_decode: %v", err)
	}
	pushGo(l, v)
	return 1
}

// kura.json_encode(value) → JSON text.
func jsonEncode(l *lua.State) int {
	lua.CheckAny(l, 1)
	v, err := toGo(l, 1, &decodeBudget{})
	if err != nil {
		errorf(l, "kura.json_encode: %v", err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		errorf(l, "kura.json_encode: %v", err)
	}
	l.PushString(string(b))
	return 1
}

// kura.sha256_hex(text) → lower-case hex SHA-256, so token files can hold digests rather than
// the tokens themselves.
func sha256Hex(l *lua.State) int {
	sum := sha256.Sum256([]byte(lua.CheckString(l, 1)))
	l.PushString(hex.EncodeToString(sum[:]))
	return 1
}

// kura.now() → seconds since the Unix epoch, with a fractional part (os.time is not opened).
func now(l *lua.State) int {
	l.PushNumber(float64(time.Now().UnixNano()) / 1e9)
	return 1
}

// Bounds of kura.file.
const (
	maxFileBytes = 4 << 20
	// fileRecheck is how often a file's size and modification time are looked at again: a
	// rotated token file is picked up within seconds without a stat per request.
	fileRecheck = 5 * time.Second
)

// watchedFile is a file a script reads with kura.file, cached and re-read when it changes.
type watchedFile struct {
	path string

	mu      sync.Mutex
	checked time.Time
	modTime time.Time
	size    int64
	text    string
	err     error
}

func (f *watchedFile) contents() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.checked.IsZero() && time.Since(f.checked) < fileRecheck {
		return f.text, f.err
	}
	f.checked = time.Now()
	st, err := os.Stat(f.path)
	if err != nil {
		f.err = fmt.Errorf("stat %s: %w", f.path, err)
		return "", f.err
	}
	if f.err == nil && f.text != "" && st.ModTime().Equal(f.modTime) && st.Size() == f.size {
		return f.text, nil
	}
	if st.Size() > maxFileBytes {
		f.err = fmt.Errorf("%s is %d bytes; at most %d are read", f.path, st.Size(), maxFileBytes)
		return "", f.err
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		f.err = fmt.Errorf("read %s: %w", f.path, err)
		return "", f.err
	}
	f.text, f.err, f.modTime, f.size = string(b), nil, st.ModTime(), st.Size()
	return f.text, nil
}
