-- JWTs that carry the namespaces they may use: issued by your own service (HS256 with a
-- shared secret) or by a CI system's OIDC issuer (RS256/ES256, keys from its JWKS URL), so no
-- static secret has to live in CI.
--
-- Verifier "ci":
--   KURA_EXTENSION_JWT_VERIFIER_CI_SECRET=<secret>                       (HS256), or
--   KURA_EXTENSION_JWT_VERIFIER_CI_JWKS_URL=https://issuer/.well-known/jwks (RS256, ES256)
--   KURA_EXTENSION_JWT_VERIFIER_CI_ISSUER=…, KURA_EXTENSION_JWT_VERIFIER_CI_AUDIENCES=kura (optional, checked)
-- Claims (names overridable for OIDC tokens you do not mint yourself):
--   namespaces  list (or comma-separated string) of "ios", "acme/ios", "acme/*" or "*"
--               (KURA_POLICY_JWT_NAMESPACES_CLAIM)
--   read_only   true: reads only (KURA_POLICY_JWT_READ_ONLY_CLAIM)
--   operator    true: may also DELETE /api/cache/clean (KURA_POLICY_JWT_OPERATOR_CLAIM)
-- exp is required; decisions are never cached past it.
--
-- The token is read from "Authorization: Bearer <jwt>", or from Basic credentials' password
-- (Gradle).

local function claim_name(var, default)
  return kura.env(var) or default
end

local function bearer(ctx)
  local c = ctx.credentials
  if c == nil then return nil end
  if c.scheme == "bearer" or c.scheme == "api_key" then return c.token end
  if c.scheme == "basic" then return c.password end
  return nil
end

local function as_list(v)
  if type(v) == "table" then return v end
  local out = {}
  if type(v) == "string" then
    for item in v:gmatch("[^,%s]+") do table.insert(out, item) end
  end
  return out
end

function authenticate(ctx)
  local token = bearer(ctx)
  if token == nil then
    return {deny = {status = 401, message = "Missing token: send Authorization: Bearer <jwt>"}}
  end
  local ok, claims = pcall(kura.jwt_verify, "ci", token)
  if not ok then
    -- The reason (expired, bad signature, wrong audience) goes to the log, not to the client.
    kura.log("debug", "jwt-namespaces: token refused: " .. tostring(claims))
    return {deny = {status = 401, message = "Invalid or expired token"}}
  end
  local ttl = 600
  if type(claims.exp) == "number" then ttl = math.max(0, math.min(ttl, claims.exp - kura.now())) end
  return {
    principal = {
      id = tostring(claims.sub or "jwt"),
      kind = "jwt",
      attributes = {
        namespaces = as_list(claims[claim_name("KURA_POLICY_JWT_NAMESPACES_CLAIM", "namespaces")]),
        read_only = claims[claim_name("KURA_POLICY_JWT_READ_ONLY_CLAIM", "read_only")] == true,
        operator = claims[claim_name("KURA_POLICY_JWT_OPERATOR_CLAIM", "operator")] == true,
        tenant = claims.tenant,
      },
    },
    ttl_seconds = ttl,
  }
end

local function grants(p, ctx)
  local tenant = ctx.tenant_id or ctx.server_tenant_id
  if p.tenant ~= nil and p.tenant ~= tenant then return false end
  for _, ns in ipairs(p.namespaces) do
    local t, n = ns:match("^([^/]+)/(.+)$")
    if t == nil then t, n = p.tenant or ctx.server_tenant_id, ns end
    if ns == "*" or ((t == "*" or t == tenant) and (n == "*" or n == ctx.namespace_id)) then
      return true
    end
  end
  return false
end

function authorize(ctx, principal)
  local p = principal.attributes
  if ctx.operation == "request" then return {allow = true} end
  if not grants(p, ctx) then
    return {deny = {status = 403, message = "Token not valid for namespace " .. tostring(ctx.namespace_id)}}
  end
  if ctx.operation == "namespace.delete" and not p.operator then
    return {deny = {status = 403, message = "Only an operator token may clean a namespace"}}
  end
  if ctx.operation == "artifact.write" and p.read_only then
    return {deny = {status = 403, message = "This token is read-only"}}
  end
  return {allow = true}
end
