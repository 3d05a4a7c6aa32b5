// Package peer is the internal gRPC plane between nodes (KURA_INTERNAL_PORT): a Server that
// applies pushes and tombstones and serves fetches, digests and listings from the local store,
// and the pooled Client the outbox, anti-entropy and read-through call, guarded by mTLS and a
// gossip-key credential. Design notes: docs/cluster.md.
package peer
