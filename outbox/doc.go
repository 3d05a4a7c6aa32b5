// Package outbox is the durable per-peer replication queue and its dispatcher. As the disk
// store's CommitObserver it adds each local write's entries to the write's own synced batch, so
// an acknowledged write is never lost to replication, and one worker per peer pushes them, so
// a slow or absent peer delays nobody else. Design notes: docs/replication.md.
package outbox
