package policy

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
)

// Principal is who the authenticate hook says the caller is. Attributes is whatever plain data
// the script attached (tables become maps and lists).
type Principal struct {
	ID         string
	Kind       string
	Attributes any
}

// toLua is the table authorize and response_headers receive as their principal argument.
func (p *Principal) toLua() any {
	if p == nil {
		return nil
	}
	m := map[string]any{"id": p.ID, "kind": p.Kind}
	if p.Attributes != nil {
		m["attributes"] = p.Attributes
	}
	return m
}

// denial is a deny={status,message} result.
type denial struct {
	status  int
	message string
}

// authnResult is a decoded authenticate result: a principal, a deny, or neither (the script
// returned anonymous = true).
type authnResult struct {
	principal *Principal
	deny      *denial
	ttl       *time.Duration // nil: the engine's default for the outcome
}

// authzResult is a decoded authorize result: allow=true|false or deny.
type authzResult struct {
	allow bool
	deny  *denial
	ttl   *time.Duration
}

// signInstruction asks the engine to sign payload with a configured signer and put the
// base64 result in header.
type signInstruction struct {
	header, signer, payload string
}

// headersResult is a decoded response_headers result.
type headersResult struct {
	headers map[string]string
	sign    *signInstruction
}

// Limits of what response_headers may add.
const (
	maxResponseHeaders     = 64
	maxResponseHeaderBytes = 16 << 10
	// maxTTL caps ttl_seconds: a decision cached for longer than a day outlives any token
	// rotation an operator would plan for.
	maxTTL = 24 * time.Hour
)

var errInvalidResult = errors.New("invalid hook result")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errInvalidResult, fmt.Sprintf(format, args...))
}

// decodeAuthenticate validates an authenticate result. defaultDeny is the status of a deny
// without one (401).
func decodeAuthenticate(v any) (authnResult, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return authnResult{}, invalid("authenticate must return a table with principal, anonymous or deny, got %s", describe(v))
	}
	var r authnResult
	ttl, err := decodeTTL(m)
	if err != nil {
		return r, err
	}
	r.ttl = ttl
	set := 0
	if p, ok := m["principal"]; ok {
		set++
		if r.principal, err = decodePrincipal(p); err != nil {
			return r, err
		}
	}
	if a, ok := m["anonymous"]; ok {
		set++
		if a != true {
			return r, invalid("anonymous must be true, got %s", describe(a))
		}
	}
	if d, ok := m["deny"]; ok {
		set++
		if r.deny, err = decodeDenial(d, http.StatusUnauthorized); err != nil {
			return r, err
		}
	}
	if set != 1 {
		return r, invalid("authenticate must return exactly one of principal, anonymous or deny (got %d)", set)
	}
	return r, nil
}

// decodeAuthorize validates an authorize result.
func decodeAuthorize(v any) (authzResult, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return authzResult{}, invalid("authorize must return a table with allow or deny, got %s", describe(v))
	}
	var r authzResult
	ttl, err := decodeTTL(m)
	if err != nil {
		return r, err
	}
	r.ttl = ttl
	a, hasAllow := m["allow"]
	d, hasDeny := m["deny"]
	switch {
	case hasAllow && hasDeny:
		return r, invalid("authorize must return allow or deny, not both")
	case hasAllow:
		b, ok := a.(bool)
		if !ok {
			return r, invalid("allow must be true or false, got %s", describe(a))
		}
		r.allow = b
	case hasDeny:
		if r.deny, err = decodeDenial(d, http.StatusForbidden); err != nil {
			return r, err
		}
	default:
		return r, invalid("authorize must return allow or deny")
	}
	return r, nil
}

// decodeResponseHeaders validates a response_headers result. A nil result means no headers.
func decodeResponseHeaders(v any) (headersResult, error) {
	var r headersResult
	if v == nil {
		return r, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return r, invalid("response_headers must return a table, got %s", describe(v))
	}
	total := 0
	if h, ok := m["headers"]; ok && h != nil {
		hm, ok := h.(map[string]any)
		if !ok {
			return r, invalid("headers must be a table of name = value, got %s", describe(h))
		}
		if len(hm) > maxResponseHeaders {
			return r, invalid("at most %d headers, got %d", maxResponseHeaders, len(hm))
		}
		r.headers = make(map[string]string, len(hm))
		for name, raw := range hm {
			value, err := headerValue(raw)
			if err != nil {
				return r, invalid("header %q: %v", name, err)
			}
			lower, err := checkHeader(name, value)
			if err != nil {
				return r, err
			}
			if total += len(lower) + len(value); total > maxResponseHeaderBytes {
				return r, invalid("headers add up to more than %d bytes", maxResponseHeaderBytes)
			}
			r.headers[lower] = value
		}
	}
	if s, ok := m["sign"]; ok && s != nil {
		sm, ok := s.(map[string]any)
		if !ok {
			return r, invalid("sign must be a table {header, signer, payload}, got %s", describe(s))
		}
		var si signInstruction
		for _, f := range []struct {
			name string
			dst  *string
		}{{"header", &si.header}, {"signer", &si.signer}, {"payload", &si.payload}} {
			str, ok := sm[f.name].(string)
			if !ok {
				return r, invalid("sign.%s must be a string, got %s", f.name, describe(sm[f.name]))
			}
			*f.dst = str
		}
		lower, err := checkHeader(si.header, "")
		if err != nil {
			return r, err
		}
		si.header = lower
		r.sign = &si
	}
	return r, nil
}

func decodePrincipal(v any) (*Principal, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, invalid("principal must be a table {id, kind, attributes}, got %s", describe(v))
	}
	id, ok := m["id"].(string)
	if !ok || id == "" {
		return nil, invalid("principal.id must be a non-empty string, got %s", describe(m["id"]))
	}
	p := &Principal{ID: id, Attributes: m["attributes"]}
	if k, ok := m["kind"]; ok && k != nil {
		if p.Kind, ok = k.(string); !ok {
			return nil, invalid("principal.kind must be a string, got %s", describe(k))
		}
	}
	return p, nil
}

func decodeDenial(v any, defaultStatus int) (*denial, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, invalid("deny must be a table {status, message}, got %s", describe(v))
	}
	d := &denial{status: defaultStatus}
	if s, ok := m["status"]; ok && s != nil {
		n, ok := s.(float64)
		if !ok || n != math.Trunc(n) || n < 400 || n > 599 {
			return nil, invalid("deny.status must be a whole number from 400 to 599, got %s", describe(s))
		}
		d.status = int(n)
	}
	if msg, ok := m["message"]; ok && msg != nil {
		if d.message, ok = msg.(string); !ok {
			return nil, invalid("deny.message must be a string, got %s", describe(msg))
		}
	}
	if d.message == "" {
		d.message = http.StatusText(d.status)
	}
	if len(d.message) > 1024 {
		d.message = d.message[:1024]
	}
	return d, nil
}

func decodeTTL(m map[string]any) (*time.Duration, error) {
	v, ok := m["ttl_seconds"]
	if !ok || v == nil {
		return nil, nil
	}
	n, ok := v.(float64)
	if !ok || n < 0 || math.IsNaN(n) {
		return nil, invalid("ttl_seconds must be a number of seconds >= 0, got %s", describe(v))
	}
	d := maxTTL
	if n < maxTTL.Seconds() {
		d = time.Duration(n * float64(time.Second))
	}
	return &d, nil
}

func headerValue(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return fmt.Sprintf("%d", int64(x)), nil
		}
		return fmt.Sprint(x), nil
	case bool:
		return fmt.Sprint(x), nil
	default:
		return "", fmt.Errorf("value must be a string or number, got %s", describe(v))
	}
}

// reservedHeaders frame the HTTP or gRPC message; a policy that set them would corrupt the
// response rather than annotate it.
var reservedHeaders = map[string]bool{
	"content-length": true, "transfer-encoding": true, "connection": true, "keep-alive": true,
	"upgrade": true, "trailer": true, "te": true, "content-type": true, "content-encoding": true,
	"x-request-id": true,
}

// checkHeader validates a header name (token characters) and value (no control characters
// but tab) and returns the lower-cased name.
func checkHeader(name, value string) (string, error) {
	if name == "" {
		return "", invalid("a header name is empty")
	}
	for i := 0; i < len(name); i++ {
		if !isTokenChar(name[i]) {
			return "", invalid("header name %q has a character that is not allowed", name)
		}
	}
	lower := strings.ToLower(name)
	if reservedHeaders[lower] || strings.HasPrefix(lower, "grpc-") {
		return "", invalid("header %q is reserved", name)
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return "", invalid("header %q has a control character in its value", name)
		}
	}
	return lower, nil
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// describe names a decoded value's type for error messages without echoing its content,
// which may be a secret.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nil"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("%T", v)
	}
}
