package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// Transports of a request (ctx.transport).
const (
	TransportHTTP = "http"
	TransportGRPC = "grpc"
)

// Operations (ctx.operation, docs/contract.md §8).
const (
	OpRead            = "artifact.read"
	OpWrite           = "artifact.write"
	OpInspect         = "artifact.inspect" // HEAD, FindMissingBlobs, GetCapabilities
	OpNamespaceDelete = "namespace.delete"
	OpRequest         = "request" // anything else a client may call (gRPC reflection, say)
)

// Request is what the front end knows about one request when it asks the policy. The engine
// reads it and never modifies it; Headers and Query are shared with the handler.
type Request struct {
	Transport string // TransportHTTP or TransportGRPC
	// Route is the route pattern ("/api/cache/cas/{id}") or the full gRPC method name.
	Route  string
	Method string // HTTP method ("POST" for gRPC)
	// Operation is one of the Op constants.
	Operation   string
	TenantID    string
	NamespaceID string
	// Producer is the client protocol: xcode, gradle, nx, metro, bazel, module, keyvalue, …
	Producer string
	// ArtifactClass is "blob", "action_cache" or "keyvalue" ("" when none applies).
	ArtifactClass string
	ArtifactKey   string // the object's name in its namespace, when there is one
	ArtifactHash  string // the content hash the client names, when there is one
	Headers       Headers
	Query         url.Values // nil for gRPC
}

// Headers gives the policy a read-only view of request headers (HTTP) or metadata (gRPC) by
// lower-cased name, without copying them on the cached path.
type Headers interface {
	// Values returns the values of the header with the given lower-cased name.
	Values(name string) []string
	// Each calls fn once per header, with its lower-cased name and values.
	Each(fn func(name string, values []string))
}

// HTTPHeaders adapts an http.Header (canonical keys) to Headers.
type HTTPHeaders http.Header

// Values implements Headers.
func (h HTTPHeaders) Values(name string) []string {
	if canonical, ok := canonicalCredentialHeaders[name]; ok {
		return http.Header(h)[canonical] // no allocation on the cached path
	}
	return http.Header(h)[textproto.CanonicalMIMEHeaderKey(name)]
}

// Each implements Headers.
func (h HTTPHeaders) Each(fn func(string, []string)) {
	for k, v := range h {
		fn(strings.ToLower(k), v)
	}
}

// credentialHeaders are the headers whose values identify the caller. Decisions are cached
// under a fingerprint of exactly these (plus the request's target), so two requests that
// differ only in other headers share a decision, and a secret never becomes a map key.
var credentialHeaders = [...]string{"authorization", "proxy-authorization", "cookie", "x-api-key"}

var canonicalCredentialHeaders = map[string]string{
	"authorization": "Authorization", "proxy-authorization": "Proxy-Authorization",
	"cookie": "Cookie", "x-api-key": "X-Api-Key",
}

// cacheKey is the decision cache key: a SHA-256 over the script, the credentials and the
// request's target. It holds no secret in the clear.
type cacheKey [sha256.Size]byte

// decisionKey fingerprints what a cached decision may be reused for: the same script, the
// same credential headers, the same transport, producer, tenant, namespace and operation.
// Every field is length-prefixed, so no two different requests share an input.
func decisionKey(scriptHash [sha256.Size]byte, r *Request) cacheKey {
	var stack [512]byte // typical requests fit, so the cached path does not allocate
	buf := append(stack[:0], scriptHash[:]...)
	field := func(s string) {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(s)))
		buf = append(buf, s...)
	}
	field(r.Transport)
	field(r.Producer)
	field(r.TenantID)
	field(r.NamespaceID)
	field(r.Operation)
	for _, name := range credentialHeaders {
		var vals []string
		if r.Headers != nil {
			vals = r.Headers.Values(name)
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(vals)))
		for _, v := range vals {
			field(v)
		}
	}
	return sha256.Sum256(buf)
}

// firstHeader returns the first value of a lower-cased header, or "".
func firstHeader(h Headers, name string) string {
	if h == nil {
		return ""
	}
	if v := h.Values(name); len(v) > 0 {
		return v[0]
	}
	return ""
}
