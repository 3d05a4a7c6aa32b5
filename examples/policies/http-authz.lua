-- Ask an HTTP authorisation service, once per credential, namespace and operation (the answer
-- is cached for the ttl_seconds it returns).
--
--   KURA_EXTENSION_HTTP_CLIENT_AUTHZ_BASE_URL=https://authz.internal
--   KURA_EXTENSION_HOOK_TIMEOUT_MS=2000     (the call happens inside the hook)
--
-- Request:  POST {base}/v1/cache/authorize
--           {"token": "...", "tenant_id": "acme", "namespace_id": "ios",
--            "operation": "artifact.write", "producer": "nx"}
-- Answers:  200 {"allow": true, "principal": "ci-bot", "ttl_seconds": 60}
--           200 {"allow": false, "message": "read-only"}         → 403
--           401                                                  → 401 (unknown token)
--           anything else, or no answer in time                  → 503, retried after 3 s
--
-- The token is read from "Authorization: Bearer", Basic credentials' password or X-Api-Key.

local function token(ctx)
  local c = ctx.credentials
  if c == nil then return nil end
  if c.scheme == "bearer" or c.scheme == "api_key" then return c.token end
  if c.scheme == "basic" then return c.password end
  return nil
end

function authenticate(ctx)
  local t = token(ctx)
  if t == nil then
    return {deny = {status = 401, message = "Missing token: send Authorization: Bearer <token>"}}
  end
  return {principal = {id = "token:" .. kura.sha256_hex(t):sub(1, 12), kind = "token", attributes = {token = t}}}
end

function authorize(ctx, principal)
  local ok, r = pcall(kura.http_json, "authz", {
    method = "POST",
    path = "/v1/cache/authorize",
    body = {
      token = principal.attributes.token,
      tenant_id = ctx.tenant_id or ctx.server_tenant_id,
      namespace_id = ctx.namespace_id,
      operation = ctx.operation,
      producer = ctx.producer,
    },
  })
  if not ok then
    kura.log("warn", "http-authz: the authorisation service did not answer: " .. tostring(r))
    return {deny = {status = 503, message = "Authorisation service unavailable"}, ttl_seconds = 3}
  end
  if r.status == 401 then
    return {deny = {status = 401, message = "Unknown token"}}
  end
  if r.status ~= 200 or type(r.body) ~= "table" then
    return {deny = {status = 503, message = "Authorisation service unavailable"}, ttl_seconds = 3}
  end
  local ttl = r.body.ttl_seconds
  if r.body.allow == true then
    return {allow = true, ttl_seconds = ttl}
  end
  return {deny = {status = 403, message = r.body.message or "Forbidden"}, ttl_seconds = ttl}
end
