// Package local is the node's own disk store: it implements storage.Store and
// storage.Multipart on append-only segment files (storage/segment, the bytes) and Pebble
// (storage/meta, the single source of truth for what is stored). A write streams once into a
// segment record (CRC per 64 KiB block and SHA-256 computed on the way), is fsynced with group
// commit, and is acknowledged only after its manifest, segment-index entry and any replication
// entries (the OnCommit seam) are committed in one synced Pebble batch.
//
// Concurrency: no global lock surrounds I/O. Striped per-key mutexes cover only the final
// check-and-commit (the conflict rule, storage.Replaces), and striped per-namespace
// read/write locks order puts against namespace deletion. Eviction retires the oldest sealed
// segment once the disk budget is exceeded, moving recently read records forward and dropping
// the rest; a file is removed only after the synced batch that stops referencing it.
//
// Replication view (storage.Index): the anti-entropy bucket digests live in memory (32 KiB),
// built by one walk over the manifests at Open (in the background; BucketDigests waits for
// it) and then updated by XOR in the commit path, so reading them is a copy, never a scan.
// Eviction does not delete a dropped record's manifest: it keeps it as an evicted stub (key,
// size, content type, SHA-256, version; no location), which leaves the digests unchanged so
// anti-entropy does not pull the object back, while Stat, Open and FindMissing report it
// missing and any Put fills it. The cost is metadata that grows with everything ever evicted:
// one small manifest per evicted object (its encoded key, plus about 55 bytes and the content
// type; some 150 bytes for a typical CAS key before Pebble's compression, so 1.5 GB per ten
// million evicted objects) that stays until its namespace is cleaned. A corrupt record, by contrast, is deleted outright, so the digests
// stop counting it and anti-entropy restores it from a peer.
//
// Runtime budgets (SPEC §6). Every file the store opens — segment read and write handles,
// staging files, multipart parts, directory syncs — is checked out of one FD pool
// (storage/fdpool, KURA_FILE_DESCRIPTOR_POOL_SIZE); a checkout that waits longer than the
// acquire timeout fails with storage.ErrBusy (503 / RESOURCE_EXHAUSTED), never EMFILE. Segment
// read handles are cached (KURA_SEGMENT_HANDLE_CACHE_SIZE, in storage/segment). Manifests are
// cached in a byte-bounded LRU (KURA_MANIFEST_CACHE_MAX_BYTES) that Stat, Open, FindMissing and
// the first-writer-wins check consult before Pebble; every manifest change updates or drops its
// entry under the key's (or the namespace's) lock, and per-stripe generation counters stop a
// reader's racing Pebble read from re-admitting an old value, so the cache is never stale. The
// memory controller switches its admission off (SetCacheAdmission) and empties it and the idle
// handles (TrimCaches) under memory pressure.
//
// Full disk. Writes leave ReservedDiskBytes free on the data filesystem, because Pebble treats
// a failed WAL write as fatal: a write that would eat into the reserve first retires old
// segments (when that can make enough room) and otherwise fails with
// storage.ErrInsufficientStorage before any byte is written, while reads, deletions and
// eviction (which may use the reserve) go on; writes succeed again as soon as room exists.
package local
