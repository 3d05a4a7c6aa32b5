package httpapi

import (
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/kuracache/kura/storage"
)

// surface identifies a protocol family for storage, metrics and policy.
type surface struct {
	kind   storage.Kind
	client string // nx, metro, gradle, xcode, bazel, module, keyvalue, turborepo
	class  string // blob or action_cache
}

const (
	classBlob        = "blob"
	classActionCache = "action_cache"
)

var (
	sfXcode    = surface{storage.KindXcode, "xcode", classBlob}
	sfKeyValue = surface{storage.KindKeyValue, "keyvalue", classActionCache}
	sfGradle   = surface{storage.KindGradle, "gradle", classBlob}
	sfModule   = surface{storage.KindModule, "module", classBlob}
	sfNx       = surface{storage.KindNx, "nx", classBlob}
	sfMetro    = surface{storage.KindMetro, "metro", classBlob}
	sfBazelCAS = surface{storage.KindCAS, "bazel", classBlob}
	sfBazelAC  = surface{storage.KindAC, "bazel", classActionCache}
	sfTurbo    = surface{storage.KindTurbo, "turborepo", classBlob}
)

// target is one request's object: its surface and full storage key.
type target struct {
	surface
	key storage.Key
}

func (sf surface) at(tenant, namespace, name string) target {
	return target{surface: sf, key: storage.Key{Tenant: tenant, Namespace: namespace, Kind: sf.kind, Name: name}}
}

// Fixed namespaces of protocols that carry none (docs/contract.md §2).
const (
	nxNamespace     = "nx"
	metroNamespace  = "metro"
	bazelNamespace  = "default"
	defaultCategory = "builds"
	paramTenant     = "tenant_id"
	paramNamespace  = "namespace_id"
	aliasTenant     = "account_handle"
	aliasNamespace  = "project_handle"
	paramHash       = "hash"
	paramName       = "name"
	paramCategory   = "cache_category"
	paramUploadID   = "upload_id"
	paramPartNumber = "part_number"
)

// legacyAliases maps a parameter to the name the original Tuist clients used for it.
var legacyAliases = map[string]string{paramTenant: aliasTenant, paramNamespace: aliasNamespace}

// parseQuery decodes the query string strictly: a malformed escape is a 400 instead of a
// silently dropped parameter that would surface as a confusing "Missing …".
func parseQuery(raw string) (url.Values, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, badRequest("Invalid query string: " + err.Error())
	}
	return q, nil
}

// queryValue returns the first non-empty value of name, falling back to its legacy alias.
func queryValue(q url.Values, name string) string {
	if v := q.Get(name); v != "" {
		return v
	}
	if alias, ok := legacyAliases[name]; ok {
		return q.Get(alias)
	}
	return ""
}

// requiredIdent returns the query parameter name (or its alias), validated as an identifier.
func requiredIdent(q url.Values, name string) (string, error) {
	v := queryValue(q, name)
	if v == "" {
		return "", badRequest("Missing " + name)
	}
	if err := checkIdent(name, v); err != nil {
		return "", err
	}
	return v, nil
}

// optionalIdent returns the parameter or def when absent, validated as an identifier.
func optionalIdent(q url.Values, name, def string) (string, error) {
	v := queryValue(q, name)
	if v == "" {
		return def, nil
	}
	if err := checkIdent(name, v); err != nil {
		return "", err
	}
	return v, nil
}

// tenantNamespace reads the required tenant_id and namespace_id (or their aliases).
func tenantNamespace(q url.Values) (tenant, namespace string, err error) {
	if tenant, err = requiredIdent(q, paramTenant); err != nil {
		return "", "", err
	}
	if namespace, err = requiredIdent(q, paramNamespace); err != nil {
		return "", "", err
	}
	return tenant, namespace, nil
}

// checkIdent applies the rules every identifier shares (docs/contract.md §2): non-empty, at most 1024
// bytes, valid UTF-8, no NUL.
func checkIdent(field, v string) error {
	if err := storage.ValidateIdentifier(field, v); err != nil {
		return badRequest(sentinelDetail(err, storage.ErrInvalidKey, "Invalid "+field))
	}
	return nil
}

// pathParam returns the decoded path parameter, validated as an identifier. Echo routes on
// URL.RawPath when it is set (the path holds escapes whose decoding would change its
// structure, like %2F) and then hands out still-escaped segments; otherwise it routes on the
// already decoded URL.Path, which must not be decoded twice.
func pathParam(c echo.Context, name string) (string, error) {
	v := c.Param(name)
	if c.Request().URL.RawPath != "" {
		var err error
		if v, err = url.PathUnescape(v); err != nil {
			return "", badRequest("Invalid " + name + ": malformed escape")
		}
	}
	if v == "" {
		return "", badRequest("Missing " + name)
	}
	if err := checkIdent(name, v); err != nil {
		return "", err
	}
	return v, nil
}

// Per-protocol key shapes (CLIENTS.md §8).

// isDecimal: Nx hashes are decimal u64 strings.
func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isHex accepts hex digits of either case (Metro renders keys with Buffer.toString('hex'),
// which is lowercase, but nothing is gained by refusing uppercase).
func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// isSHA256Hex: Bazel digests are exactly 64 lowercase hex digits, the spelling REAPI uses, so
// HTTP and gRPC name the same blob the same way.
func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// moduleKey builds the module cache object name. The category and hash may not contain '/'
// so that two different (category, hash, name) triples can never produce the same name.
func moduleKey(q url.Values) (tenant, namespace, name string, err error) {
	if tenant, namespace, err = tenantNamespace(q); err != nil {
		return "", "", "", err
	}
	hash, err := requiredIdent(q, paramHash)
	if err != nil {
		return "", "", "", err
	}
	objName, err := requiredIdent(q, paramName)
	if err != nil {
		return "", "", "", err
	}
	category, err := optionalIdent(q, paramCategory, defaultCategory)
	if err != nil {
		return "", "", "", err
	}
	if strings.Contains(hash, "/") {
		return "", "", "", badRequest("Invalid hash: must not contain '/'")
	}
	if strings.Contains(category, "/") {
		return "", "", "", badRequest("Invalid cache_category: must not contain '/'")
	}
	name = category + "/" + hash + "/" + objName
	if err := checkIdent("key", name); err != nil {
		return "", "", "", err
	}
	return tenant, namespace, name, nil
}

// queryScoped resolves the common addressing: the object name in path parameter keyParam,
// tenant_id and namespace_id (or their aliases) in the query.
func queryScoped(c echo.Context, sf surface, keyParam string) (target, url.Values, error) {
	q, err := parseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return target{}, nil, err
	}
	tenant, namespace, err := tenantNamespace(q)
	if err != nil {
		return target{}, nil, err
	}
	name, err := pathParam(c, keyParam)
	if err != nil {
		return target{}, nil, err
	}
	return sf.at(tenant, namespace, name), q, nil
}

// pathScope reads the tenant and namespace path parameters of the path-scoped surfaces (the
// ones whose URL a client keeps as a prefix: Gradle, Nx, plain objects).
func pathScope(c echo.Context) (tenant, namespace string, err error) {
	if tenant, err = pathParam(c, paramTenant); err != nil {
		return "", "", err
	}
	if namespace, err = pathParam(c, paramNamespace); err != nil {
		return "", "", err
	}
	return tenant, namespace, nil
}
