package storagetest

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// The Memory fake's storage.Index. Digests use the same definition as the disk store
// (meta.ObjectDigest), so a fake and a disk store holding the same objects agree; the work
// per call is a scan of every object, which is fine for a fake.

// BucketDigests implements storage.Index.
func (m *Memory) BucketDigests(_ context.Context, bits uint32) ([]byte, uint64, error) {
	if bits > storage.DigestBucketBits {
		return nil, 0, fmt.Errorf("bucket digests: %w: %d bucket bits requested, at most %d are supported",
			storage.ErrInvalidKey, bits, storage.DigestBucketBits)
	}
	var t meta.DigestTable
	m.mu.Lock()
	for _, obj := range m.objects {
		t.AddObject(obj.info)
	}
	m.mu.Unlock()
	out, err := t.Digests(bits)
	if err != nil {
		return nil, 0, fmt.Errorf("bucket digests: %w", err)
	}
	return out, uint64(t.Objects()), nil
}

// ListObjects implements storage.Index. The page token is the encoded key of the next page's
// first object.
func (m *Memory) ListObjects(_ context.Context, bits uint32, buckets []uint32, after []byte, limit int) ([]storage.ObjectSummary, []byte, error) {
	if bits > storage.DigestBucketBits {
		return nil, nil, fmt.Errorf("list objects: %w: %d bucket bits requested, at most %d are supported",
			storage.ErrInvalidKey, bits, storage.DigestBucketBits)
	}
	var want map[uint32]bool
	if len(buckets) > 0 {
		want = map[uint32]bool{}
		for _, b := range buckets {
			if uint64(b) >= 1<<bits {
				return nil, nil, fmt.Errorf("list objects: %w: bucket %d does not exist with %d bucket bits", storage.ErrInvalidKey, b, bits)
			}
			want[b] = true
		}
	}
	if after != nil {
		if _, err := meta.DecodeManifestKey(after); err != nil {
			return nil, nil, fmt.Errorf("list objects: %w: malformed page token", storage.ErrInvalidKey)
		}
	}
	if limit <= 0 {
		limit = 1000
	}
	type entry struct {
		ek  []byte
		obj memObject
	}
	m.mu.Lock()
	all := make([]entry, 0, len(m.objects))
	for k, obj := range m.objects {
		if ek := meta.ManifestKey(k); after == nil || bytes.Compare(ek, after) >= 0 {
			all = append(all, entry{ek: ek, obj: obj})
		}
	}
	m.mu.Unlock()
	slices.SortFunc(all, func(a, b entry) int { return bytes.Compare(a.ek, b.ek) })
	var out []storage.ObjectSummary
	for _, e := range all {
		if want != nil && !want[meta.DigestBucket(e.ek, bits)] {
			continue
		}
		if len(out) == limit {
			return out, e.ek, nil
		}
		out = append(out, storage.ObjectSummary{Info: e.obj.info, Evicted: e.obj.evicted})
	}
	return out, nil, nil
}

// Tombstones implements storage.Index.
func (m *Memory) Tombstones(context.Context) ([]storage.Tombstone, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]storage.Tombstone, 0, len(m.tombstones))
	for ns, v := range m.tombstones {
		out = append(out, storage.Tombstone{Tenant: ns[0], Namespace: ns[1], Version: v})
	}
	slices.SortFunc(out, func(a, b storage.Tombstone) int {
		return cmp.Or(strings.Compare(a.Tenant, b.Tenant), strings.Compare(a.Namespace, b.Namespace))
	})
	return out, nil
}

// ApplyStub implements storage.Index.
func (m *Memory) ApplyStub(_ context.Context, info storage.Info) error {
	if err := info.Key.Validate(); err != nil {
		return fmt.Errorf("apply stub: %w", err)
	}
	if info.Size < 0 || info.Version == 0 {
		return fmt.Errorf("apply stub of %s: %w: a stub needs a size >= 0 and the origin's version", info.Key, storage.ErrInvalidKey)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if tomb, ok := m.tombstones[[2]string{info.Key.Tenant, info.Key.Namespace}]; ok && info.Version <= tomb {
		return nil
	}
	if cur, ok := m.objects[info.Key]; ok && !storage.Replaces(info.Key.Kind, storage.Copy{Version: info.Version, SHA256: info.SHA256, Evicted: true},
		storage.Copy{Version: cur.info.Version, SHA256: cur.info.SHA256, Evicted: cur.evicted}) {
		return nil
	}
	m.clock.Observe(info.Version)
	m.objects[info.Key] = memObject{info: info, evicted: true}
	return nil
}

// Evict turns a stored object into an evicted stub, as the disk store's eviction does, so
// tests of read-through and anti-entropy can create stubs. It reports whether key was stored.
func (m *Memory) Evict(key storage.Key) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	obj, ok := m.objects[key]
	if !ok || obj.evicted {
		return false
	}
	m.objects[key] = memObject{info: obj.info, evicted: true}
	return true
}
