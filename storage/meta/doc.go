// Package meta is Kura's metadata store and the only importer of Pebble: manifests, the
// segment index, tombstones, multipart state and the outbox, each value checksummed so damage
// reads as storage.ErrCorrupt. Its Batch is shared by several packages so that a write and its
// outbox entries commit together or not at all. Design notes: docs/metadata.md.
package meta
