-- An open cache on a trusted network, except that only an operator may wipe a namespace
-- (DELETE /api/cache/clean). Reads and writes need no credential.
--
--   KURA_POLICY_OPERATOR_TOKEN=<token>    (or its digest: sha256:<hex>)
--
-- The operator sends "Authorization: Bearer <token>" or "X-Api-Key: <token>".

local function operator_digest()
  local configured = kura.env("KURA_POLICY_OPERATOR_TOKEN")
  if configured == nil or configured == "" then return nil end
  local digest = configured:match("^sha256:(%x+)$")
  if digest then return digest:lower() end
  return kura.sha256_hex(configured)
end

function authenticate(ctx)
  local c = ctx.credentials
  local want = operator_digest()
  -- Compared by SHA-256, so the comparison does not depend on how much of a guess is right.
  if c and (c.scheme == "bearer" or c.scheme == "api_key") and want and kura.sha256_hex(c.token) == want then
    return {principal = {id = "operator", kind = "operator"}}
  end
  return {anonymous = true}
end

function authorize(ctx, principal)
  if ctx.operation ~= "namespace.delete" then
    return {allow = true}
  end
  if principal == nil then
    return {deny = {status = 401, message = "Cleaning a namespace needs the operator token"}}
  end
  return {allow = true}
end
