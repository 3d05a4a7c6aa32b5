// Package local is the node's own disk store: it implements storage.Store and
// storage.Multipart on append-only segment files (storage/segment, the bytes) and Pebble
// (storage/meta, the single source of truth for what is stored). A write streams once into a
// segment record (CRC per 64 KiB block and SHA-256 computed on the way), is fsynced with group
// commit, and is acknowledged only after its manifest, segment-index entry and any replication
// entries (the OnCommit seam) are committed in one synced Pebble batch.
//
// Concurrency: no global lock surrounds I/O. Striped per-key mutexes cover only the final
// check-and-commit (first writer wins, last writer wins by Version), and striped per-namespace
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
package local
