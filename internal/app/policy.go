package app

import (
	"fmt"
	"strings"

	"github.com/kuracache/kura/policy"
)

// buildPolicy loads the operator's Lua script (KURA_EXTENSION_*): it runs before every public
// request from now on. A script that does not load stops startup with the Lua message.
func (a *App) buildPolicy() (*policy.Engine, error) {
	ec := a.cfg.Extension
	pc := policy.Config{
		ScriptPath:                ec.ScriptPath,
		ServerTenantID:            a.cfg.TenantID,
		HookTimeout:               ec.HookTimeout,
		AllowTTL:                  ec.AuthCacheAllowTTL,
		DenyTTL:                   ec.AuthCacheDenyTTL,
		AuthenticateFailOpen:      !ec.FailClosedAuthenticate,
		AuthorizeFailOpen:         !ec.FailClosedAuthorize,
		ResponseHeadersFailClosed: !ec.FailOpenResponseHeaders,
		CacheMaxEntries:           ec.CacheMaxEntries,
		PoolSize:                  ec.PoolSize,
		HookMemoryBytes:           ec.HookMemoryBytes,
		Signers:                   map[string][]byte{},
		JWTVerifiers:              map[string]policy.JWTVerifier{},
		HTTPClients:               map[string]policy.HTTPClient{},
		Files:                     ec.Files,
		Env:                       ec.Env,
		Logger:                    a.logger,
		Registerer:                a.registry,
	}
	for id, s := range ec.Signers {
		pc.Signers[id] = s.Secret
	}
	for id, j := range ec.JWTVerifiers {
		pc.JWTVerifiers[id] = policy.JWTVerifier(j)
	}
	for id, h := range ec.HTTPClients {
		pc.HTTPClients[id] = policy.HTTPClient(h)
	}
	e, err := policy.New(pc)
	if err != nil {
		return nil, fmt.Errorf("the policy script (KURA_EXTENSION_SCRIPT_PATH): %w", err)
	}
	return e, nil
}

// logPolicy says once at startup whether requests run through the policy script.
func (a *App) logPolicy() {
	if a.policy == nil {
		a.logger.Warn("access control off: any client that reaches this node can read, write and clean every namespace",
			"how_to_enable", "KURA_EXTENSION_SCRIPT_PATH=<policy.lua> (see examples/policies/)")
		return
	}
	a.logger.Info("access control on: every public request runs the policy script",
		"script", a.cfg.Extension.ScriptPath, "hooks", strings.Join(a.policy.Hooks(), ","),
		"hook_timeout", a.cfg.Extension.HookTimeout, "pool_size", a.policy.PoolSize())
}
