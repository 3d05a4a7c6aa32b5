-- Sign every response, so a client (or a proxy in front of Kura) can check that an answer
-- came from this cache: x-kura-signature = base64(HMAC-SHA256(key, "<status> <tenant>/<namespace> <key>")).
--
--   KURA_EXTENSION_SIGNER_RESPONSES_SECRET=<base64 of the raw key>   (head -c 32 /dev/urandom | base64)
--
-- Combine it with one of the other examples by copying its authenticate and authorize hooks
-- into this file; on its own it lets every request through.

function authorize(ctx, principal)
  return {allow = true}
end

function response_headers(ctx, principal)
  local target = (ctx.tenant_id or ctx.server_tenant_id) .. "/" .. (ctx.namespace_id or "") .. " " .. (ctx.artifact_key or "")
  return {
    headers = {["x-kura-signed-payload"] = ctx.status_code .. " " .. target},
    sign = {header = "x-kura-signature", signer = "responses", payload = ctx.status_code .. " " .. target},
  }
end
