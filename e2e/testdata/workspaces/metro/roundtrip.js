// Drives metro-cache's HttpStore and HttpGetStore against Kura and prints one JSON document
// with what came back, for the Go test to check.
const crypto = require('crypto');
const {HttpStore, HttpGetStore} = require('metro-cache');

const endpoint = process.env.KURA_METRO_ENDPOINT;
const keyFor = (s) => crypto.createHash('sha1').update(s).digest();
const store = (params) =>
  new HttpStore({endpoint, params, headers: {Authorization: 'Bearer e2e-token'}, timeout: 10000});

async function main() {
  const run = process.env.KURA_METRO_RUN_ID || String(Date.now());
  const bufKey = keyFor('buffer-' + run);
  const jsonKey = keyFor('json-' + run);
  const nsKey = keyFor('namespaced-' + run);
  const raw = Buffer.from([0, 1, 2, 3, 250, 255, 0x1f, 0x8b]);
  const doc = {code: 'module.exports = 42;', map: [1, 2, 3], nested: {ok: true}};

  const s = store(undefined);
  const out = {};
  out.missBefore = await s.get(bufKey);
  await s.set(bufKey, raw);
  await s.set(jsonKey, doc);
  const gotBuf = await s.get(bufKey);
  out.bufferIsBuffer = Buffer.isBuffer(gotBuf);
  out.bufferHex = gotBuf == null ? null : gotBuf.toString('hex');
  out.json = await s.get(jsonKey);

  const getOnly = new HttpGetStore({endpoint, timeout: 10000});
  const viaGetStore = await getOnly.get(bufKey);
  out.getStoreHex = viaGetStore == null ? null : viaGetStore.toString('hex');
  out.getStoreMiss = await getOnly.get(keyFor('never-written-' + run));

  const acme = store({tenant_id: 'acme', namespace_id: 'app1'});
  await acme.set(nsKey, {ns: 'acme/app1'});
  out.namespaced = await acme.get(nsKey);
  out.otherNamespace = await store({tenant_id: 'acme', namespace_id: 'app2'}).get(nsKey);
  out.defaultNamespace = await s.get(nsKey);

  out.keys = {buffer: bufKey.toString('hex'), json: jsonKey.toString('hex'), namespaced: nsKey.toString('hex')};
  out.expectedBufferHex = raw.toString('hex');
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
