// Package local is the node's own disk store (storage.Store, storage.Multipart): bodies in
// append-only segment files, what is stored in Pebble as the single source of truth, so that a
// write is acknowledged only once its bytes, its metadata and its replication entries are
// durable together, and a crash can never leave the index and the files disagreeing. Its
// CommitObserver (the outbox) and Corrupted (anti-entropy) are the replication seams.
// Design notes: docs/storage-local.md.
package local
