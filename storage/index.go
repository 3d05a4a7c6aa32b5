package storage

import "context"

// Tombstone records that every object of a namespace older than Version was deleted.
type Tombstone struct {
	Tenant    string
	Namespace string
	Version   Version
}

// ObjectSummary is one object as anti-entropy and bootstrap compare it.
type ObjectSummary struct {
	Info Info
	// Evicted marks an object this node knew and dropped to stay within its disk budget: its
	// metadata stub is kept (and counted in digests) so anti-entropy does not pull it back,
	// while reads treat it as missing (and may read it through from a peer).
	Evicted bool
}

// DigestBucketBits is the number of leading bits of SHA-256(encoded key) that choose an
// object's anti-entropy bucket: 2^10 = 1024 buckets of 32-byte digests, 32 KiB per exchange.
const DigestBucketBits = 10

// Index is the replication view of a store: the summaries that anti-entropy compares
// between nodes and pages through, and the namespace tombstones. Implementations are safe
// for concurrent use.
type Index interface {
	// BucketDigests returns 2^bits digests of 32 bytes, concatenated in bucket order, and the
	// number of objects summarised. A bucket's digest is the XOR of one hash per object
	// (stubs included): SHA-256(encoded key | body SHA-256), plus the version for
	// last-writer-wins kinds, so two nodes holding the same objects have equal digests.
	// Only bits == DigestBucketBits is required to be supported.
	BucketDigests(ctx context.Context, bits uint32) (digests []byte, objects uint64, err error)
	// ListObjects pages through the objects of the given buckets (all when empty) in key
	// order, starting after the opaque token after (nil: from the start). It returns at most
	// limit summaries and the token for the next page (nil when done). A page may be shorter
	// than limit to bound the work of one call.
	ListObjects(ctx context.Context, bits uint32, buckets []uint32, after []byte, limit int) ([]ObjectSummary, []byte, error)
	// Tombstones returns every namespace tombstone.
	Tombstones(ctx context.Context) ([]Tombstone, error)
	// ApplyStub records a peer's evicted object as an evicted stub here, unless the copy
	// this node holds prevails by Replaces (an immutable object always does) or the
	// namespace's tombstone is not older.
	ApplyStub(ctx context.Context, info Info) error
}
