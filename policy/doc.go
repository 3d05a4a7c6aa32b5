// Package policy runs the operator's Lua script (Shopify/go-lua, imported nowhere else) as
// the access policy of every public request: authenticate(ctx), authorize(ctx, principal)
// and response_headers(ctx, principal), with the decision cache, the interpreter pool, the
// time and memory limits and the kura.* host functions (HMAC, JWT and JWKS, HTTP call-outs)
// kept in Go. Front ends build a Request, call Engine.Decide, and answer a denial in their
// own protocol's terms. The design notes are in docs/policy.md.
package policy
