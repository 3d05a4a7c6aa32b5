package meta

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/kuracache/kura/storage"
)

// Batch collects writes that commit atomically. Several packages add entries to the same
// Batch (storage/local the manifest, the replication outbox its queue entries), so an
// acknowledged write and everything it implies become durable together. A Batch is not safe
// for concurrent use; Close it after Commit or when abandoning it.
type Batch struct {
	db *DB
	b  *pebble.Batch
	// tombs are the tombstones the batch records, published to the DB's mirror on commit.
	tombs []storage.Tombstone
}

// NewBatch starts an empty batch.
func (db *DB) NewBatch() *Batch {
	return &Batch{db: db, b: db.pdb.NewBatch()}
}

// Commit applies the batch durably: it returns after the WAL is synced. Pebble groups
// concurrent synced commits into one WAL sync, so callers commit concurrently.
func (b *Batch) Commit() error {
	return b.commit(pebble.Sync)
}

// CommitNoSync applies the batch without waiting for the WAL sync. It becomes durable with the
// next synced commit (the WAL is ordered), which is what eviction relies on: many unsynced
// manifest changes, then one synced commit before a segment file is removed.
func (b *Batch) CommitNoSync() error {
	return b.commit(pebble.NoSync)
}

func (b *Batch) commit(opts *pebble.WriteOptions) error {
	err := b.b.Commit(opts)
	if len(b.tombs) > 0 {
		b.db.tombstones.committed(b.tombs, err)
	}
	if err != nil {
		return fmt.Errorf("commit metadata batch: %w", err)
	}
	return nil
}

// Close releases the batch. Safe after Commit.
func (b *Batch) Close() {
	_ = b.b.Close()
}

// Empty reports whether nothing was added.
func (b *Batch) Empty() bool { return b.b.Empty() }

// Count is the number of operations added.
func (b *Batch) Count() uint32 { return b.b.Count() }

// PutManifest records m for k. A segment-backed manifest also gets its segment-index entry,
// and when prev (the manifest being replaced, if any) lived in another segment its index
// entry is removed, so eviction's view of each segment stays exact for live records. An
// evicted stub has no index entry.
func (b *Batch) PutManifest(k storage.Key, m Manifest, prev *Manifest) error {
	mk := ManifestKey(k)
	v, err := EncodeManifest(m)
	if err != nil {
		return fmt.Errorf("put manifest of %s: %w", k, err)
	}
	if err := b.b.Set(mk, v, nil); err != nil {
		return fmt.Errorf("put manifest of %s: %w", k, err)
	}
	if prev != nil && prev.InSegment() && (!m.InSegment() || prev.Location.Segment != m.Location.Segment) {
		if err := b.b.Delete(segIndexKey(prev.Location.Segment, mk), nil); err != nil {
			return fmt.Errorf("put manifest of %s: %w", k, err)
		}
	}
	if m.InSegment() {
		if err := b.b.Set(segIndexKey(m.Location.Segment, mk), nil, nil); err != nil {
			return fmt.Errorf("put manifest of %s: %w", k, err)
		}
	}
	return nil
}

// DeleteManifest removes k's manifest, and prev's segment-index entry when prev is given.
func (b *Batch) DeleteManifest(k storage.Key, prev *Manifest) error {
	mk := ManifestKey(k)
	if err := b.b.Delete(mk, nil); err != nil {
		return fmt.Errorf("delete manifest of %s: %w", k, err)
	}
	if prev != nil && prev.InSegment() {
		if err := b.b.Delete(segIndexKey(prev.Location.Segment, mk), nil); err != nil {
			return fmt.Errorf("delete manifest of %s: %w", k, err)
		}
	}
	return nil
}

// DropSegmentIndex removes every index entry of segment seg (used once it is retired).
func (b *Batch) DropSegmentIndex(seg uint64) error {
	p := segIndexPrefix(seg)
	if err := b.b.DeleteRange(p, prefixEnd(p), nil); err != nil {
		return fmt.Errorf("drop index of segment %d: %w", seg, err)
	}
	return nil
}

// DeleteNamespace records a tombstone for tenant/namespace at the larger of version and any
// existing tombstone, and deletes every manifest of that namespace (all kinds) whose version
// is not newer than the tombstone. Deletions are range deletions over runs of keys, so the
// batch stays small however many objects the namespace holds; the scan reads only the
// namespace's own keys. The caller must keep writers of this namespace out until Commit.
// It returns the effective tombstone version.
func (b *Batch) DeleteNamespace(ctx context.Context, tenant, namespace string, version storage.Version) (storage.Version, error) {
	return b.DeleteNamespaceFunc(ctx, tenant, namespace, version, nil)
}

// DeleteNamespaceFunc is DeleteNamespace that also reports every manifest the batch deletes
// (stubs included) to deleted, so the caller can update what it derives from them (the
// anti-entropy digests) from the same scan. err is set, wrapping storage.ErrCorrupt, for an
// entry that could not be decoded (it is deleted too); k and m are then unreliable.
// deleted runs during the scan, before Commit.
func (b *Batch) DeleteNamespaceFunc(ctx context.Context, tenant, namespace string, version storage.Version,
	deleted func(k storage.Key, m Manifest, err error)) (storage.Version, error) {
	if err := storage.ValidateIdentifier("tenant_id", tenant); err != nil {
		return 0, err
	}
	if err := storage.ValidateIdentifier("namespace_id", namespace); err != nil {
		return 0, err
	}
	old, ok, err := b.db.GetTombstone(tenant, namespace)
	if err != nil && !errors.Is(err, storage.ErrCorrupt) {
		return 0, err
	}
	if ok && old > version {
		version = old
	}
	prefix := namespacePrefix(tenant, namespace)
	end := prefixEnd(prefix)
	runStart := prefix
	var keep [][]byte
	_, err = b.db.scan(ctx, prefix, end, 0, func(k, v []byte) error {
		m, err := decodeManifest(v, false)
		if err == nil && m.Version > version {
			keep = append(keep, bytes.Clone(k))
			return nil
		}
		if deleted != nil {
			var key storage.Key
			if err == nil {
				key, err = DecodeManifestKey(k)
			}
			m.Body = nil // aliases the iterator; nobody needs it
			deleted(key, m, err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delete namespace %s/%s: scan: %w", tenant, namespace, err)
	}
	for _, k := range keep {
		if bytes.Compare(runStart, k) < 0 {
			if err := b.b.DeleteRange(runStart, k, nil); err != nil {
				return 0, fmt.Errorf("delete namespace %s/%s: %w", tenant, namespace, err)
			}
		}
		runStart = after(k)
	}
	if err := b.b.DeleteRange(runStart, end, nil); err != nil {
		return 0, fmt.Errorf("delete namespace %s/%s: %w", tenant, namespace, err)
	}
	if err := b.b.Set(tombstoneKey(tenant, namespace), encodeVersion(version), nil); err != nil {
		return 0, fmt.Errorf("delete namespace %s/%s: %w", tenant, namespace, err)
	}
	b.tombs = append(b.tombs, storage.Tombstone{Tenant: tenant, Namespace: namespace, Version: version})
	return version, nil
}

// PutUpload records (or replaces) a multipart upload's state.
func (b *Batch) PutUpload(id string, u Upload) error {
	if err := validateUploadID(id); err != nil {
		return err
	}
	v, err := EncodeUpload(u)
	if err != nil {
		return fmt.Errorf("put upload %s: %w", id, err)
	}
	if err := b.b.Set(uploadKey(id), v, nil); err != nil {
		return fmt.Errorf("put upload %s: %w", id, err)
	}
	return nil
}

// DeleteUpload forgets a multipart upload.
func (b *Batch) DeleteUpload(id string) error {
	if err := validateUploadID(id); err != nil {
		return err
	}
	if err := b.b.Delete(uploadKey(id), nil); err != nil {
		return fmt.Errorf("delete upload %s: %w", id, err)
	}
	return nil
}

// PutOutbox queues value for peer under sequence number seq.
func (b *Batch) PutOutbox(peer string, seq uint64, value []byte) error {
	if err := validatePeer(peer); err != nil {
		return err
	}
	if err := b.b.Set(outboxKey(peer, seq), encodeOutbox(value), nil); err != nil {
		return fmt.Errorf("put outbox entry %s/%d: %w", peer, seq, err)
	}
	return nil
}

// DeleteOutbox removes one queued entry.
func (b *Batch) DeleteOutbox(peer string, seq uint64) error {
	if err := validatePeer(peer); err != nil {
		return err
	}
	if err := b.b.Delete(outboxKey(peer, seq), nil); err != nil {
		return fmt.Errorf("delete outbox entry %s/%d: %w", peer, seq, err)
	}
	return nil
}

// DeleteOutboxThrough removes every entry of peer with a sequence number <= seq in one range
// deletion (acknowledging a delivered prefix of the queue).
func (b *Batch) DeleteOutboxThrough(peer string, seq uint64) error {
	if err := validatePeer(peer); err != nil {
		return err
	}
	end := prefixEnd(outboxPrefix(peer))
	if seq != ^uint64(0) {
		end = outboxKey(peer, seq+1)
	}
	if err := b.b.DeleteRange(outboxPrefix(peer), end, nil); err != nil {
		return fmt.Errorf("delete outbox entries of %s through %d: %w", peer, seq, err)
	}
	return nil
}

// DeleteOutboxPeer removes peer's whole queue (a member that left for good).
func (b *Batch) DeleteOutboxPeer(peer string) error {
	return b.DeleteOutboxThrough(peer, ^uint64(0))
}
