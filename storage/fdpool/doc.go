// Package fdpool is the application-managed budget of file descriptors
// (KURA_FILE_DESCRIPTOR_POOL_SIZE) that every file the store opens on the request path or in
// background work checks out of: segment read handles, the active segment's write handle,
// staging files, multipart part files and directory handles used for fsync. Pebble keeps its
// own budget (KURA_METADATA_STORE_MAX_OPEN_FILES) and stays outside.
//
// A checkout that cannot be served within the acquire timeout
// (KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS) fails with storage.ErrBusy, which the front ends
// answer with 503 / RESOURCE_EXHAUSTED: under descriptor pressure requests queue briefly and
// then shed load, rather than hitting EMFILE at random places (an EMFILE that happens anyway,
// from descriptors outside the pool, is reported as ErrBusy too). Holders of idle long-lived
// descriptors (the segment handle cache) register a reclaimer so that an idle cached handle
// never makes a request wait.
package fdpool
