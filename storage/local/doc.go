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
package local
