// Package peer is the internal gRPC plane between Kura nodes: a Server that applies
// replication pushes and namespace tombstones to the local store and serves fetches, range
// digests and listings from it, and a pooled Client that the outbox, anti-entropy and
// read-through call. It is served on KURA_INTERNAL_PORT only, with mutual TLS when the three
// KURA_INTERNAL_TLS_* files are configured (LoadTLS).
//
// With a gossip key (KURA_GOSSIP_KEY) every call also carries a credential, an HMAC of its
// method and a timestamp under a key derived from the gossip key, and the server refuses
// calls without a valid one (auth.go), with mTLS on or off. It keeps out whoever can merely
// reach the port; it does not hide or protect bodies from someone on the path, which is what
// mTLS is for.
//
// Bodies stream in both directions in chunks of at most MaxChunkBytes and are verified
// against the origin's size and SHA-256 before anything is committed (push) or handed out as
// complete (fetch). Storage errors become gRPC codes in one place (errors.go), carrying a
// reason so the client maps them back to the exact storage sentinel.
package peer
