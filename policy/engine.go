package policy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	lua "github.com/Shopify/go-lua"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
)

// Defaults of Config, with the reason for each.
const (
	// DefaultHookTimeout is KURA_EXTENSION_HOOK_TIMEOUT_MS' default: a policy sits on every
	// uncached request, and a script that needs longer is doing I/O it should cache.
	DefaultHookTimeout = 25 * time.Millisecond
	// DefaultCacheMaxEntries is KURA_EXTENSION_CACHE_MAX_ENTRIES' default: ~100 bytes an entry,
	// so about 10 MiB at most, for far more distinct credentials than a build fleet has.
	DefaultCacheMaxEntries = 100_000
	// DefaultHookMemoryBytes is KURA_EXTENSION_HOOK_MEMORY_BYTES' default: a policy decision
	// needs kilobytes; 32 MiB stops a runaway table long before it threatens a node's budget
	// while staying far above what other requests allocate during one 25 ms hook.
	DefaultHookMemoryBytes = 32 << 20
	// maxCallsPerInterpreter recycles an interpreter after this many calls, so a script that
	// accumulates state in globals cannot grow one without bound.
	maxCallsPerInterpreter = 10_000
	// minLoadTimeout bounds how long the script's top level may run when an interpreter is
	// created (it may read files or call kura.http_json).
	minLoadTimeout = time.Second
	// failureLogInterval rate-limits the WARN logged when a hook fails, so a broken script
	// does not write one line per request.
	failureLogInterval = 10 * time.Second
)

// DefaultPoolSize is the number of interpreters when Config.PoolSize is 0: four per CPU
// (hooks that wait on kura.http_json hold an interpreter without using a CPU), between 4
// and 64.
func DefaultPoolSize() int { return max(4, min(64, 4*runtime.GOMAXPROCS(0))) }

// Config configures an Engine. The zero value of every field is a safe default: failures
// fail closed, nothing is cached for longer than the defaults say.
type Config struct {
	// ScriptPath is the operator's Lua script (required).
	ScriptPath string
	// ServerTenantID is ctx.server_tenant_id (KURA_TENANT_ID).
	ServerTenantID string
	// HookTimeout bounds one hook call, waiting for an interpreter included
	// (0: DefaultHookTimeout).
	HookTimeout time.Duration
	// AllowTTL and DenyTTL are how long allow and deny decisions are cached unless the hook
	// says otherwise with ttl_seconds; 0 means not cached.
	AllowTTL, DenyTTL time.Duration
	// AuthenticateFailOpen treats a failing authenticate hook as anonymous instead of 401;
	// AuthorizeFailOpen allows instead of 403; ResponseHeadersFailClosed marks responses with
	// x-kura-extension-error instead of sending them without the hook's headers.
	AuthenticateFailOpen, AuthorizeFailOpen, ResponseHeadersFailClosed bool
	// CacheMaxEntries bounds the decision cache (0: DefaultCacheMaxEntries).
	CacheMaxEntries int
	// PoolSize is the number of interpreters (0: DefaultPoolSize()).
	PoolSize int
	// HookMemoryBytes is what one hook call may allocate before it is aborted
	// (0: DefaultHookMemoryBytes).
	HookMemoryBytes int64
	// Signers maps a signer id to its HMAC-SHA256 key (kura.sign_hmac_base64).
	Signers map[string][]byte
	// JWTVerifiers, HTTPClients and Files are the other host resources, by id.
	JWTVerifiers map[string]JWTVerifier
	HTTPClients  map[string]HTTPClient
	Files        map[string]string // id → path (kura.file)
	// Env is what kura.env sees: the environment the node was configured from.
	Env        map[string]string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Decision is the policy's answer for one request.
type Decision struct {
	Allowed bool
	// Status and Message describe a denial (401, 403, or what the script chose).
	Status  int
	Message string
	// Principal is who authenticate said the caller is; nil for an anonymous caller.
	Principal *Principal
}

func deny(status int, message string) Decision {
	return Decision{Status: status, Message: message}
}

// script is the operator's source, read once.
type script struct {
	name, text string
	hash       [sha256.Size]byte
}

// Engine runs the operator's policy hooks for every public request. It is safe for concurrent
// use. Close stops its background work (JWKS refreshes).
type Engine struct {
	cfg        Config
	script     *script
	env        *hostEnv
	pool       *pool
	cache      *decisionCache
	flight     singleflight.Group
	metrics    *metrics
	log        *slog.Logger
	failureLog map[string]*rate.Sometimes
	stop       context.CancelFunc

	// Which hooks the script defines, found once when New loads it.
	hasAuthenticate, hasAuthorize, hasResponseHeaders bool
}

// New reads and loads the script once (a script that does not load, or defines none of
// authenticate, authorize and response_headers, is an error carrying the Lua message and
// line) and prepares every host resource.
func New(cfg Config) (*Engine, error) {
	if cfg.ScriptPath == "" {
		return nil, errors.New("policy: no script path")
	}
	if cfg.HookTimeout <= 0 {
		cfg.HookTimeout = DefaultHookTimeout
	}
	if cfg.CacheMaxEntries <= 0 {
		cfg.CacheMaxEntries = DefaultCacheMaxEntries
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = DefaultPoolSize()
	}
	if cfg.HookMemoryBytes <= 0 {
		cfg.HookMemoryBytes = DefaultHookMemoryBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	text, err := os.ReadFile(cfg.ScriptPath)
	if err != nil {
		return nil, fmt.Errorf("read the policy script: %w", err)
	}
	src := &script{name: cfg.ScriptPath, text: string(text), hash: sha256.Sum256(text)}

	e := &Engine{cfg: cfg, script: src, log: cfg.Logger, failureLog: map[string]*rate.Sometimes{}}
	for _, h := range hookNames {
		e.failureLog[h] = &rate.Sometimes{Interval: failureLogInterval}
	}
	// The gauges read the cache and the pool only when scraped, after New returned.
	e.metrics, err = newMetrics(cfg.Registerer,
		func() float64 { return float64(e.cache.len()) },
		func() float64 { return float64(e.pool.busy()) },
		func() float64 { return float64(e.pool.idleCount()) })
	if err != nil {
		return nil, err
	}
	e.cache = newDecisionCache(cfg.CacheMaxEntries, e.metrics.cacheEvictions)
	e.pool = newPool(cfg.PoolSize, maxCallsPerInterpreter, e.newInterp, e.metrics)

	ctx, stop := context.WithCancel(context.Background())
	e.stop = stop
	if e.env, err = newHostEnv(ctx, cfg, e.metrics); err != nil {
		stop()
		return nil, err
	}
	first, err := e.newInterp()
	if err != nil {
		stop()
		return nil, err
	}
	e.hasAuthenticate = first.defines(hookAuthenticate)
	e.hasAuthorize = first.defines(hookAuthorize)
	e.hasResponseHeaders = first.defines(hookResponseHeaders)
	if !e.hasAuthenticate && !e.hasAuthorize && !e.hasResponseHeaders {
		stop()
		return nil, fmt.Errorf("policy script %s defines none of the hooks authenticate(ctx), authorize(ctx, principal), response_headers(ctx, principal)", cfg.ScriptPath)
	}
	e.pool.seed(first)
	return e, nil
}

func newHostEnv(ctx context.Context, cfg Config, m *metrics) (*hostEnv, error) {
	env := &hostEnv{
		signers:   map[string][]byte{},
		verifiers: map[string]*jwtVerifier{},
		clients:   map[string]*httpJSONClient{},
		files:     map[string]*watchedFile{},
		env:       cfg.Env,
		logger:    cfg.Logger.With("component", "policy"),
		metrics:   m,
	}
	for id, key := range cfg.Signers {
		env.signers[normalizeID(id)] = key
	}
	for id, vc := range cfg.JWTVerifiers {
		v, err := newJWTVerifier(ctx, normalizeID(id), vc, env.logger, m)
		if err != nil {
			return nil, err
		}
		env.verifiers[normalizeID(id)] = v
	}
	for id, hc := range cfg.HTTPClients {
		c, err := newHTTPJSONClient(normalizeID(id), hc, m)
		if err != nil {
			return nil, err
		}
		env.clients[normalizeID(id)] = c
	}
	for id, path := range cfg.Files {
		env.files[normalizeID(id)] = &watchedFile{path: path}
	}
	return env, nil
}

// newInterp loads the script into a fresh interpreter.
func (e *Engine) newInterp() (*interp, error) {
	it, err := newInterp(e.script, e.env, max(minLoadTimeout, 10*e.cfg.HookTimeout), uint64(e.cfg.HookMemoryBytes))
	if err != nil {
		// go-lua names the file by its base name only; the error names the whole path.
		return nil, fmt.Errorf("load the policy script %s: %w", e.cfg.ScriptPath, err)
	}
	e.metrics.interpCreated.Inc()
	return it, nil
}

// Close stops the engine's background work. Decide keeps working on cached keys but no JWKS
// refresh happens any more.
func (e *Engine) Close() error {
	e.stop()
	return nil
}

// Hooks lists the hooks the script defines.
func (e *Engine) Hooks() []string {
	var out []string
	if e.hasAuthenticate {
		out = append(out, hookAuthenticate)
	}
	if e.hasAuthorize {
		out = append(out, hookAuthorize)
	}
	if e.hasResponseHeaders {
		out = append(out, hookResponseHeaders)
	}
	return out
}

// PoolSize is the number of interpreters hooks run on.
func (e *Engine) PoolSize() int { return e.cfg.PoolSize }

// HasResponseHeaders reports whether the script defines response_headers, so front ends can
// skip the per-response call when it does not.
func (e *Engine) HasResponseHeaders() bool { return e.hasResponseHeaders }

// Decide runs authenticate and authorize for r, or answers from the decision cache. Concurrent
// misses for the same cache key run the hooks once.
func (e *Engine) Decide(ctx context.Context, r *Request) Decision {
	key := decisionKey(e.script.hash, r)
	if d, ok := e.cache.get(key, time.Now()); ok {
		e.metrics.cacheHit.Inc()
		return e.counted(r, d)
	}
	leader := false
	v, _, _ := e.flight.Do(string(key[:]), func() (any, error) {
		leader = true
		e.metrics.cacheMiss.Inc()
		// The leader's request may be cancelled; its result serves the followers too.
		d, ttl := e.evaluate(context.WithoutCancel(ctx), r)
		if ttl > 0 {
			e.cache.put(key, d, time.Now().Add(ttl))
		}
		return flightResult{d, ttl}, nil
	})
	res := v.(flightResult)
	if !leader {
		if res.ttl <= 0 {
			// Not reusable (the hook said ttl_seconds = 0): decide this request itself.
			e.metrics.cacheMiss.Inc()
			d, _ := e.evaluate(ctx, r)
			return e.counted(r, d)
		}
		e.metrics.cacheCoalesced.Inc()
	}
	return e.counted(r, res.decision)
}

type flightResult struct {
	decision Decision
	ttl      time.Duration
}

func (e *Engine) counted(r *Request, d Decision) Decision {
	e.metrics.decision(r.Operation, d.Allowed)
	return d
}

// evaluate runs the hooks and applies the failure semantics. It returns how long the
// decision may be cached: the shorter of the two hooks' TTLs.
func (e *Engine) evaluate(ctx context.Context, r *Request) (Decision, time.Duration) {
	creds := ParseCredentials(firstHeader(r.Headers, "authorization"), firstHeader(r.Headers, "x-api-key"))
	var principal *Principal
	authnTTL := e.cfg.AllowTTL
	if e.hasAuthenticate {
		var res authnResult
		err := e.run(ctx, hookAuthenticate, func(l *lua.State) int {
			e.pushContext(l, r, creds, 0)
			return 1
		}, func(v any) (err error) {
			res, err = decodeAuthenticate(v)
			return err
		})
		switch {
		case err != nil && !e.cfg.AuthenticateFailOpen:
			return deny(http.StatusUnauthorized, "Authentication failed"), e.cfg.DenyTTL
		case err != nil:
			authnTTL = e.cfg.DenyTTL // anonymous, briefly: the script may recover
		case res.deny != nil:
			return deny(res.deny.status, res.deny.message), ttlOr(res.ttl, e.cfg.DenyTTL)
		default:
			principal = res.principal
			authnTTL = ttlOr(res.ttl, e.cfg.AllowTTL)
		}
	}
	if !e.hasAuthorize {
		return Decision{Allowed: true, Principal: principal}, authnTTL
	}
	var res authzResult
	err := e.run(ctx, hookAuthorize, func(l *lua.State) int {
		e.pushContext(l, r, creds, 0)
		pushGo(l, principal.toLua())
		return 2
	}, func(v any) (err error) {
		res, err = decodeAuthorize(v)
		return err
	})
	switch {
	case err != nil && !e.cfg.AuthorizeFailOpen:
		return deny(http.StatusForbidden, "Forbidden"), e.cfg.DenyTTL
	case err != nil:
		return Decision{Allowed: true, Principal: principal}, min(authnTTL, e.cfg.DenyTTL)
	case res.deny != nil:
		return deny(res.deny.status, res.deny.message), ttlOr(res.ttl, e.cfg.DenyTTL)
	case !res.allow:
		return deny(http.StatusForbidden, "Forbidden"), ttlOr(res.ttl, e.cfg.DenyTTL)
	default:
		return Decision{Allowed: true, Principal: principal}, min(authnTTL, ttlOr(res.ttl, e.cfg.AllowTTL))
	}
}

func ttlOr(explicit *time.Duration, def time.Duration) time.Duration {
	if explicit != nil {
		return *explicit
	}
	return def
}

// ResponseHeaders runs response_headers for a request the policy decided on, with the status
// the response is about to carry, and returns the headers to add (lower-cased names). It
// returns nil when the script has no such hook.
func (e *Engine) ResponseHeaders(ctx context.Context, r *Request, d Decision, status int) map[string]string {
	if !e.hasResponseHeaders {
		return nil
	}
	creds := ParseCredentials(firstHeader(r.Headers, "authorization"), firstHeader(r.Headers, "x-api-key"))
	var res headersResult
	err := e.run(ctx, hookResponseHeaders, func(l *lua.State) int {
		e.pushContext(l, r, creds, status)
		pushGo(l, d.Principal.toLua())
		return 2
	}, func(v any) error {
		var err error
		if res, err = decodeResponseHeaders(v); err != nil {
			return err
		}
		if res.sign != nil {
			sig, err := e.env.sign(res.sign.signer, res.sign.payload)
			if err != nil {
				return fmt.Errorf("%w: sign: %v", errInvalidResult, err)
			}
			if res.headers == nil {
				res.headers = map[string]string{}
			}
			res.headers[res.sign.header] = sig
		}
		return nil
	})
	if err != nil {
		if e.cfg.ResponseHeadersFailClosed {
			return map[string]string{"x-kura-extension-error": hookResponseHeaders}
		}
		return nil
	}
	return res.headers
}

// run makes one hook call on a pooled interpreter within the hook timeout, decodes its result,
// and records the outcome. A failure is logged (rate-limited) and returned.
func (e *Engine) run(ctx context.Context, hook string, push func(*lua.State) int, decode func(any) error) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.HookTimeout)
	defer cancel()
	err := e.call(ctx, hook, push, decode)
	result := resultOK
	var abort *abortError
	var crash *crashError
	switch {
	case err == nil:
	case errors.As(err, &abort):
		result = abort.reason
	case errors.As(err, &crash):
		result = resultCrashed
	case errors.Is(err, errPoolBusy):
		result = resultBusy
	case errors.Is(err, errInvalidResult), errors.Is(err, errUnsupportedValue):
		result = resultInvalid
	default:
		result = resultError
	}
	e.metrics.observeHook(hook, result, time.Since(start))
	if err != nil {
		e.failureLog[hook].Do(func() {
			// Further failures within failureLogInterval are only counted, in
			// kura_extension_hook_calls_total.
			e.log.WarnContext(ctx, "policy hook failed", "hook", hook, "result", result, "err", err)
		})
	}
	return err
}

func (e *Engine) call(ctx context.Context, hook string, push func(*lua.State) int, decode func(any) error) error {
	it, err := e.pool.get(ctx)
	if err != nil {
		return err
	}
	v, err := it.call(ctx, hook, push)
	e.pool.put(it)
	if err != nil {
		return err
	}
	return decode(v)
}

// pushContext pushes the ctx table of docs/contract.md §8.
func (e *Engine) pushContext(l *lua.State, r *Request, creds Credentials, status int) {
	l.CreateTable(0, 20)
	setString := func(name, v string) {
		if v != "" {
			l.PushString(v)
			l.SetField(-2, name)
		}
	}
	setString("transport", r.Transport)
	setString("route", r.Route)
	setString("method", r.Method)
	setString("operation", r.Operation)
	setString("server_tenant_id", e.cfg.ServerTenantID)
	setString("tenant_id", r.TenantID)
	setString("namespace_id", r.NamespaceID)
	setString("producer", r.Producer)
	setString("client", r.Producer) // the original's name for the producer
	setString("artifact_class", r.ArtifactClass)
	setString("artifact_key", r.ArtifactKey)
	setString("artifact_hash", r.ArtifactHash)
	if status > 0 {
		l.PushInteger(status)
		l.SetField(-2, "status_code")
	}

	l.NewTable()
	if r.Headers != nil {
		r.Headers.Each(func(name string, values []string) {
			l.PushString(strings.Join(values, ", "))
			l.SetField(-2, name)
		})
	}
	l.SetField(-2, "headers")

	l.NewTable()
	for k, v := range r.Query {
		if len(v) > 0 {
			l.PushString(v[0])
			l.SetField(-2, k)
		}
	}
	l.SetField(-2, "query")

	if creds.Scheme != "" {
		l.NewTable()
		for _, f := range [...]struct{ name, v string }{
			{"scheme", creds.Scheme}, {"token", creds.Token}, {"username", creds.Username},
			{"password", creds.Password}, {"error", creds.Error},
		} {
			if f.v != "" {
				l.PushString(f.v)
				l.SetField(-2, f.name)
			}
		}
		l.SetField(-2, "credentials")
	}
}
