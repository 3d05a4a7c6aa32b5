package config

import (
	"encoding/base64"
	"errors"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kuracache/kura/policy"
)

// ExtensionConfig configures the Lua policy hooks (docs/contract.md §8). The resource maps are keyed by
// ResourceID (upper-cased id), collected from every KURA_EXTENSION_<FAMILY>_<ID>_<FIELD>
// variable in the environment.
type ExtensionConfig struct {
	Enabled                 bool
	ScriptPath              string
	HookTimeout             time.Duration // KURA_EXTENSION_HOOK_TIMEOUT_MS, 25ms
	AuthCacheAllowTTL       time.Duration // 600s; 0 = allow decisions are not cached
	AuthCacheDenyTTL        time.Duration // 3s; 0 = deny decisions are not cached
	FailClosedAuthenticate  bool          // true: a failing authenticate hook answers 401
	FailClosedAuthorize     bool          // true: a failing authorize hook answers 403
	FailOpenResponseHeaders bool          // true: a failing response_headers hook adds nothing
	CacheMaxEntries         int           // KURA_EXTENSION_CACHE_MAX_ENTRIES, 100000
	PoolSize                int           // KURA_EXTENSION_POOL_SIZE; 0 = derived from the CPU count
	HookMemoryBytes         int64         // KURA_EXTENSION_HOOK_MEMORY_BYTES, 32 MiB
	Signers                 map[string]Signer
	JWTVerifiers            map[string]JWTVerifier
	HTTPClients             map[string]HTTPClient
	Files                   map[string]string // id → path, for kura.file
	// Env is the whole environment Load was given (not only KURA_*), for kura.env. It may hold
	// secrets, so LogAttrs never shows it.
	Env map[string]string
}

// Signer backs kura.sign_hmac_base64.
type Signer struct {
	Algorithm string // "hmac-sha256", the only one supported
	Secret    []byte // decoded from the base64 variable: raw key bytes
}

// JWTVerifier backs kura.jwt_verify: an HMAC secret (HS*) or a JWKS URL (RS*, ES*). Its
// fields are policy.JWTVerifier's, in order, so the composition root converts one into the
// other (and the compiler says so when they drift).
type JWTVerifier struct {
	Algorithms  []string      // e.g. ["HS256"] or ["RS256", "ES256"]
	Secret      []byte        // the variable's bytes as written (not base64), as the original does
	JWKSURL     string        // the public keys of RS*/ES* tokens
	JWKSRefresh time.Duration // how often the JWKS is fetched again, 5 min
	Issuer      string        // empty = iss not checked
	Audiences   []string      // empty = aud not checked
}

// HTTPClient backs kura.http_json; policy.HTTPClient's fields, as for JWTVerifier.
type HTTPClient struct {
	BaseURL        string // absolute http(s) URL without trailing slash
	ConnectTimeout time.Duration
	RequestTimeout time.Duration
}

// Defaults of the HTTP client family (the original's values: a policy call sits on the
// request path, so it must give up quickly).
const (
	DefaultHTTPClientConnectTimeout = 500 * time.Millisecond
	DefaultHTTPClientRequestTimeout = 1500 * time.Millisecond
)

func (p *parser) extension() ExtensionConfig {
	e := ExtensionConfig{
		ScriptPath: p.str(EnvExtensionScriptPath, ""),
	}
	enabled, set := p.boolean(EnvExtensionEnabled, false)
	// Setting only the script path enables the hooks, as in the original.
	e.Enabled = enabled || (!set && e.ScriptPath != "")
	e.HookTimeout = p.duration(EnvExtensionHookTimeoutMS, policy.DefaultHookTimeout, time.Millisecond, 1)
	e.AuthCacheAllowTTL = p.duration(EnvExtensionAllowTTLSeconds, 600*time.Second, time.Second, 0)
	e.AuthCacheDenyTTL = p.duration(EnvExtensionDenyTTLSeconds, 3*time.Second, time.Second, 0)
	e.FailClosedAuthenticate, _ = p.boolean(EnvExtensionFailClosedAuthn, true)
	e.FailClosedAuthorize, _ = p.boolean(EnvExtensionFailClosedAuthz, true)
	e.FailOpenResponseHeaders, _ = p.boolean(EnvExtensionFailOpenRespHeader, true)
	e.CacheMaxEntries = p.count(EnvExtensionCacheMaxEntries, policy.DefaultCacheMaxEntries, 1)
	e.PoolSize = p.count(EnvExtensionPoolSize, 0, 1)
	e.HookMemoryBytes = p.size(EnvExtensionHookMemoryBytes, policy.DefaultHookMemoryBytes, 1<<20)

	if e.Enabled {
		switch {
		case e.ScriptPath == "":
			p.problem(EnvExtensionScriptPath, "required when %s is true", EnvExtensionEnabled)
		default:
			if err := checkReadableFile(e.ScriptPath); err != nil {
				p.problem(EnvExtensionScriptPath, "cannot read the script: %v", err)
			}
		}
	}

	e.Signers = p.signers()
	e.JWTVerifiers = p.jwtVerifiers()
	e.HTTPClients = p.httpClients()
	e.Files = p.files()
	e.Env = maps.Clone(p.env)
	return e
}

// family collects id → field → variable name for one prefix, in sorted id order so
// problems come out deterministically.
func (p *parser) family(prefix string) (ids []string, vars map[string]map[string]string) {
	vars = make(map[string]map[string]string)
	for name := range p.env {
		id, field, ok := splitFamily(prefix, name)
		if !ok {
			continue
		}
		if _, ok := p.get(name); !ok {
			continue
		}
		if vars[id] == nil {
			vars[id] = make(map[string]string)
			ids = append(ids, id)
		}
		vars[id][field] = name
	}
	sort.Strings(ids)
	return ids, vars
}

func (p *parser) signers() map[string]Signer {
	ids, vars := p.family(EnvSignerPrefix)
	out := make(map[string]Signer, len(ids))
	for _, id := range ids {
		f := vars[id]
		s := Signer{Algorithm: "hmac-sha256"}
		ok := true
		if name, set := f["ALGORITHM"]; set {
			v, _ := p.get(name)
			switch strings.ToLower(v) {
			case "hmac-sha256", "hmac_sha256", "hmacsha256":
			default:
				p.problem(name, "unsupported signer algorithm %q (only hmac-sha256)", v)
				ok = false
			}
		}
		if name, set := f["SECRET"]; set {
			v, _ := p.get(name)
			// A set variable is non-empty, so valid base64 never decodes to an empty key.
			key, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				p.problem(name, "is not base64 of the raw key bytes: %v", err)
				ok = false
			}
			s.Secret = key
		} else {
			p.problem(EnvSignerPrefix+id+"_SECRET", "required because %s is set", someName(f))
			ok = false
		}
		if ok {
			out[id] = s
		}
	}
	return out
}

// JWT algorithms kura.jwt_verify accepts: HMAC ones need a secret, public-key ones a JWKS.
var (
	hmacAlgorithms      = []string{"HS256", "HS384", "HS512"}
	publicKeyAlgorithms = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
)

func (p *parser) jwtVerifiers() map[string]JWTVerifier {
	ids, vars := p.family(EnvJWTVerifierPrefix)
	out := make(map[string]JWTVerifier, len(ids))
	for _, id := range ids {
		f := vars[id]
		before := len(p.problems)
		j := JWTVerifier{JWKSRefresh: policy.DefaultJWKSRefresh}
		if name, set := f["SECRET"]; set {
			v, _ := p.get(name)
			j.Secret = []byte(v)
		}
		if name, set := f["JWKS_URL"]; set {
			v, _ := p.get(name)
			u, err := httpURL(v)
			if err != nil {
				p.problem(name, "%v", err)
			}
			j.JWKSURL = u
		}
		if name, set := f["JWKS_REFRESH_SECONDS"]; set {
			j.JWKSRefresh = p.duration(name, policy.DefaultJWKSRefresh, time.Second, 1)
		}
		algName := EnvJWTVerifierPrefix + id + "_ALGORITHM"
		if name, set := f["ALGORITHM"]; set {
			algName = name
			v, _ := p.get(name)
			for a := range strings.SplitSeq(v, ",") {
				if a = strings.ToUpper(strings.TrimSpace(a)); a != "" {
					j.Algorithms = append(j.Algorithms, a)
				}
			}
		} else if _, jwks := f["JWKS_URL"]; jwks {
			j.Algorithms = []string{"RS256", "ES256"}
		} else {
			j.Algorithms = []string{"HS256"}
		}
		p.checkJWTAlgorithms(id, algName, f, j)
		if name, set := f["ISSUER"]; set {
			j.Issuer, _ = p.get(name)
		}
		if name, set := f["AUDIENCES"]; set {
			v, _ := p.get(name)
			for a := range strings.SplitSeq(v, ",") {
				if a = strings.TrimSpace(a); a != "" {
					j.Audiences = append(j.Audiences, a)
				}
			}
		}
		if len(p.problems) == before {
			out[id] = j
		}
	}
	return out
}

// checkJWTAlgorithms reports a verifier whose algorithms are unknown, mixed, or lack the key
// material they need.
func (p *parser) checkJWTAlgorithms(id, algName string, f map[string]string, j JWTVerifier) {
	var hmac, public int
	for _, a := range j.Algorithms {
		switch {
		case slices.Contains(hmacAlgorithms, a):
			hmac++
		case slices.Contains(publicKeyAlgorithms, a):
			public++
		default:
			p.problem(algName, "unsupported JWT algorithm %q (%s, or %s with a JWKS URL)", a,
				strings.Join(hmacAlgorithms, ", "), strings.Join(publicKeyAlgorithms, ", "))
			return
		}
	}
	switch {
	case len(j.Algorithms) == 0:
		p.problem(algName, "names no algorithm")
	case hmac > 0 && public > 0:
		p.problem(algName, "mixes HMAC and public-key algorithms; use two verifiers")
	case hmac > 0 && len(j.Secret) == 0:
		p.problem(EnvJWTVerifierPrefix+id+"_SECRET", "required for %s because %s is set", strings.Join(j.Algorithms, ","), someName(f))
	case hmac > 0 && j.JWKSURL != "":
		p.problem(EnvJWTVerifierPrefix+id+"_JWKS_URL", "only applies to RS*/ES* algorithms, not %s", strings.Join(j.Algorithms, ","))
	case public > 0 && f["JWKS_URL"] == "":
		p.problem(EnvJWTVerifierPrefix+id+"_JWKS_URL", "required for %s because %s is set", strings.Join(j.Algorithms, ","), someName(f))
	case public > 0 && len(j.Secret) > 0:
		p.problem(EnvJWTVerifierPrefix+id+"_SECRET", "only applies to HS* algorithms, not %s", strings.Join(j.Algorithms, ","))
	}
}

func (p *parser) files() map[string]string {
	ids, vars := p.family(EnvFilePrefix)
	out := make(map[string]string, len(ids))
	for _, id := range ids {
		name := vars[id]["PATH"]
		path, _ := p.get(name)
		if err := checkReadableFile(path); err != nil {
			p.problem(name, "cannot read the file: %v", err)
			continue
		}
		out[id] = path
	}
	return out
}

func (p *parser) httpClients() map[string]HTTPClient {
	ids, vars := p.family(EnvHTTPClientPrefix)
	out := make(map[string]HTTPClient, len(ids))
	for _, id := range ids {
		f := vars[id]
		before := len(p.problems)
		c := HTTPClient{ConnectTimeout: DefaultHTTPClientConnectTimeout, RequestTimeout: DefaultHTTPClientRequestTimeout}
		if name, set := f["BASE_URL"]; set {
			v, _ := p.get(name)
			u, err := httpURL(v)
			if err != nil {
				p.problem(name, "%v", err)
			}
			c.BaseURL = u
		} else {
			p.problem(EnvHTTPClientPrefix+id+"_BASE_URL", "required because %s is set", someName(f))
		}
		if name, set := f["CONNECT_TIMEOUT_MS"]; set {
			c.ConnectTimeout = p.duration(name, c.ConnectTimeout, time.Millisecond, 1)
		}
		if name, set := f["REQUEST_TIMEOUT_MS"]; set {
			c.RequestTimeout = p.duration(name, c.RequestTimeout, time.Millisecond, 1)
		}
		if len(p.problems) == before {
			out[id] = c
		}
	}
	return out
}

// someName returns one variable of a resource, for "required because X is set" messages.
func someName(fields map[string]string) string {
	names := make([]string, 0, len(fields))
	for _, n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	return names[0]
}

var errNotRegular = errors.New("not a regular file")

// checkReadableFile proves path is a regular file this process can open for reading.
func checkReadableFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err // *PathError already says "open <path>: <reason>"
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return &os.PathError{Op: "open", Path: path, Err: errNotRegular}
	}
	return nil
}
