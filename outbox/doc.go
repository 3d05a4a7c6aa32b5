// Package outbox is the durable per-peer replication queue and its dispatcher. The Outbox is
// the disk store's commit observer (storage/local.CommitObserver, given to local.Open once):
// every local write adds one entry per live peer to the same synced Pebble batch as its
// metadata (OnCommit → Enqueue), so an acknowledged write is never lost to replication;
// one worker per peer then pages through that peer's queue, pushes the current local state of
// each entry over the internal plane and deletes what was delivered.
//
// Entries name what changed, not the bytes: the body is read from the local store at dispatch
// time, so a backlog costs a few dozen bytes per entry and a superseded or deleted object is
// skipped instead of pushed. Peers never share a goroutine, a backoff or a page, so a peer that
// is down or slow delays nobody else, and a peer absent for longer than DropAfter loses its
// queue (anti-entropy repairs what it missed). A traced write's entry also keeps the commit's
// trace context (25 bytes, entry format 2; untraced entries keep format 1), so its push,
// made later by a worker, is a span of the client's trace (tracing.go).
//
// Sequence numbers are handed out when an entry joins a batch, but batches commit in any
// order, so a worker can see seq 7 before seq 6 exists. It records such gaps as holes and
// probes them with one seek each until they appear; a hole still empty after a minute belongs
// to a batch that was abandoned and stops counting in the depth. Delivered entries are removed
// with point deletions (a hole may sit below them); a range deletion over the resolved prefix
// is added only every 65536 numbers, because range deletions that share a start key overlap
// and Pebble fragments overlapping ranges quadratically. See worker.go.
package outbox
