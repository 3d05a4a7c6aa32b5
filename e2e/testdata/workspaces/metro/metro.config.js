// Metro configuration for the Kura e2e test: the only cache store is Kura's Metro endpoint,
// so a second build can only be fast if Kura served every transform result.
const fs = require('fs');
const path = require('path');
const {HttpStore} = require('metro-cache');

const endpoint = process.env.KURA_METRO_ENDPOINT;
const nodeModules = fs.realpathSync(path.join(__dirname, 'node_modules'));
if (!endpoint) {
  throw new Error('KURA_METRO_ENDPOINT must be set');
}

module.exports = {
  projectRoot: path.join(__dirname, 'app'),
  // node_modules is a symlink to the shared client install (e2e/clients/node). Metro only
  // transforms files inside watchFolders and does not look through that symlink by itself,
  // so both the folder and the resolver path point at its real location.
  watchFolders: [nodeModules],
  resolver: {nodeModulesPaths: [nodeModules]},
  cacheStores: [
    new HttpStore({
      endpoint,
      headers: {Authorization: 'Bearer e2e-token'},
      timeout: 10000,
    }),
  ],
  resetCache: false,
};
