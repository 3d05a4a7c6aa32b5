// Package meta is Kura's metadata store and the only package that imports Pebble. It keeps
// everything that says what a node holds — object manifests (with keyvalue bodies inline), the
// per-segment record index used by eviction, namespace tombstones, multipart upload state and
// the replication outbox — under one-byte key prefixes, each value framed with a format-version
// byte and a CRC-32C so a damaged value is reported as storage.ErrCorrupt instead of decoded.
//
// It also defines the anti-entropy digest of an object (DigestBucket, EntryHash, DigestTable),
// because the digest is computed over the encoded key this package owns, and offers
// ManifestIterator, a point-in-time walk used to build those digests and to page listings.
//
// Writes go through Batch, which wraps pebble.Batch so several packages (storage/local, the
// outbox) contribute entries to the same synced commit: an acknowledged write and its outbox
// entries become durable together or not at all.
package meta
