-- Static tokens: each token may read, write, or (operator) also clean some namespaces.
--
-- Where the tokens come from: the file KURA_EXTENSION_FILE_TOKENS_PATH (re-read within 5 s of a
-- change, so a mounted Kubernetes Secret rotates without a restart) or, when that is not set,
-- the variable KURA_POLICY_TOKENS (lines separated by newlines or ";").
--
-- One token per line:    <token> <namespaces> <access>
--   <token>       the token itself, or sha256:<hex SHA-256 of it> so the file holds no secret
--                 (printf %s "$TOKEN" | sha256sum)
--   <namespaces>  comma-separated namespaces: "ios" (of KURA_TENANT_ID), "acme/ios" (tenant
--                 acme), "acme/*", "*/ios" or "*"
--   <access>      read | write | operator   (write includes read; operator includes write and
--                 DELETE /api/cache/clean)
-- Lines starting with # are comments.
--
-- The token is read from "Authorization: Bearer <token>" (Nx, Bazel's --remote_header, curl),
-- from "Authorization: Basic" with the token as the password (Gradle's credentials {}), or from
-- "X-Api-Key: <token>".

local ACCESS = {read = 1, write = 2, operator = 3}

-- The parsed list, kept per interpreter and parsed again only when the text changes.
local parsed_text, parsed_tokens = nil, nil

local function token_text()
  local ok, text = pcall(kura.file, "tokens")
  if ok then return text end
  return kura.env("KURA_POLICY_TOKENS") or ""
end

local function parse(text)
  local tokens = {}
  for line in string.gmatch(text, "[^\n;]+") do
    line = line:match("^%s*(.-)%s*$")
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local secret, namespaces, access = line:match("^(%S+)%s+(%S+)%s+(%S+)$")
      if secret == nil or ACCESS[access] == nil then
        kura.log("warn", "static-tokens: ignoring a malformed line (want: <token> <namespaces> read|write|operator)")
      else
        local digest = secret:match("^sha256:(%x+)$")
        if digest == nil then digest = kura.sha256_hex(secret) end
        local list = {}
        for ns in namespaces:gmatch("[^,]+") do table.insert(list, ns) end
        tokens[digest:lower()] = {namespaces = list, access = access}
      end
    end
  end
  return tokens
end

local function tokens()
  local text = token_text()
  if text ~= parsed_text then
    parsed_tokens, parsed_text = parse(text), text
  end
  return parsed_tokens
end

local function presented_token(ctx)
  local c = ctx.credentials
  if c == nil then return nil end
  if c.scheme == "bearer" or c.scheme == "api_key" then return c.token end
  if c.scheme == "basic" then return c.password end
  return nil
end

function authenticate(ctx)
  local token = presented_token(ctx)
  if token == nil or token == "" then
    return {deny = {status = 401, message = "Missing token: send Authorization: Bearer <token>"}}
  end
  -- Tokens are compared by their SHA-256, never as plain strings.
  local entry = tokens()[kura.sha256_hex(token)]
  if entry == nil then
    return {deny = {status = 401, message = "Unknown token"}}
  end
  return {principal = {id = "token:" .. kura.sha256_hex(token):sub(1, 12), kind = "static-token", attributes = entry}}
end

local function grants(entry, ctx)
  local tenant = ctx.tenant_id or ctx.server_tenant_id
  for _, ns in ipairs(entry.namespaces) do
    local t, n = ns:match("^([^/]+)/(.+)$")
    if t == nil then t, n = ctx.server_tenant_id, ns end
    if ns == "*" or ((t == "*" or t == tenant) and (n == "*" or n == ctx.namespace_id)) then
      return true
    end
  end
  return false
end

function authorize(ctx, principal)
  local entry = principal.attributes
  if ctx.operation == "request" then return {allow = true} end -- gRPC reflection and the like
  if not grants(entry, ctx) then
    return {deny = {status = 403, message = "This token has no access to namespace " .. tostring(ctx.namespace_id)}}
  end
  local need = ACCESS.read
  if ctx.operation == "artifact.write" then need = ACCESS.write end
  if ctx.operation == "namespace.delete" then need = ACCESS.operator end
  if ACCESS[entry.access] < need then
    if need == ACCESS.operator then
      return {deny = {status = 403, message = "Only an operator token may clean a namespace"}}
    end
    return {deny = {status = 403, message = "This token is read-only"}}
  end
  return {allow = true}
end
