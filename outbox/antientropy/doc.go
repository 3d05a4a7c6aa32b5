// Package antientropy makes a node converge with its peers whatever replication pushes were
// lost: a periodic sweep compares range digests with each live peer and pulls what is missing
// or newer (tombstones first), a new node bootstraps through the same machinery, corrupt local
// records are re-fetched from a peer, and NewReadThrough serves local misses from peers. The
// read-through also answers FindMissing with what peers hold (one batched FindObjects per
// peer within DefaultFindTimeout; what a peer holds is pulled in the background). Every
// read-through fetch and background pull has one owner, the ReadThrough, whose Close cancels
// them and waits for them.
//
// It declares what it needs: Source and PeerSource (satisfied by the internal-plane client,
// cluster/peer), Local (the raw disk store, storage.Store plus storage.Index) and Peers (the
// live members).
// Read-through coalesces concurrent misses of one key with its own small flight group rather
// than x/sync/singleflight: singleflight.Do ties the shared fetch to the first caller's
// context, so one impatient client would fail every waiter, while here the fetch runs until the
// last waiter leaves.
package antientropy
