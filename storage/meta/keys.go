package meta

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/kuracache/kura/storage"
)

// One-byte prefixes partition the key space. They are part of the on-disk format: never
// renumber them.
const (
	prefixManifest  byte = 'm' // 'm' tenant 0 namespace 0 kind 0 name → Manifest
	prefixSegIndex  byte = 'g' // 'g' segment(8B BE) manifest-key → empty
	prefixTombstone byte = 't' // 't' tenant 0 namespace → Version
	prefixUpload    byte = 'u' // 'u' upload-id → Upload
	prefixOutbox    byte = 'o' // 'o' peer 0 seq(8B BE) → opaque value
	prefixLastUse   byte = 'a' // 'a' manifest-key → last use (Unix ms), for retention by age
)

// ManifestKey encodes key as its Pebble key. Identifiers never contain NUL (Key.Validate), so
// NUL separators make the encoding unambiguous and keep every tenant/namespace contiguous in
// key order. The encoding is stable: storage/local also uses it as the segment record name.
func ManifestKey(k storage.Key) []byte {
	return AppendManifestKey(make([]byte, 0, 4+len(k.Tenant)+len(k.Namespace)+len(k.Kind)+len(k.Name)), k)
}

// AppendManifestKey appends ManifestKey(k) to b: a lookup can encode into a reused buffer.
func AppendManifestKey(b []byte, k storage.Key) []byte {
	b = append(b, prefixManifest)
	b = append(b, k.Tenant...)
	b = append(b, 0)
	b = append(b, k.Namespace...)
	b = append(b, 0)
	b = append(b, k.Kind...)
	b = append(b, 0)
	b = append(b, k.Name...)
	return b
}

// DecodeManifestKey is the inverse of ManifestKey; the result is validated.
func DecodeManifestKey(b []byte) (storage.Key, error) {
	if len(b) == 0 || b[0] != prefixManifest {
		return storage.Key{}, fmt.Errorf("decode manifest key %q: %w: wrong prefix", b, storage.ErrCorrupt)
	}
	parts := bytes.SplitN(b[1:], []byte{0}, 4)
	if len(parts) != 4 {
		return storage.Key{}, fmt.Errorf("decode manifest key %q: %w: %d fields", b, storage.ErrCorrupt, len(parts))
	}
	k := storage.Key{Tenant: string(parts[0]), Namespace: string(parts[1]), Kind: storage.Kind(parts[2]), Name: string(parts[3])}
	if err := k.Validate(); err != nil {
		return storage.Key{}, fmt.Errorf("decode manifest key %q: %w: %v", b, storage.ErrCorrupt, err)
	}
	return k, nil
}

// namespacePrefix is the common prefix of every manifest of tenant/namespace (all kinds).
func namespacePrefix(tenant, namespace string) []byte {
	b := make([]byte, 0, 3+len(tenant)+len(namespace))
	b = append(b, prefixManifest)
	b = append(b, tenant...)
	b = append(b, 0)
	b = append(b, namespace...)
	b = append(b, 0)
	return b
}

// prefixEnd returns the smallest key greater than every key that starts with p (nil when p
// is all 0xff, which never happens for our prefixes).
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func segIndexPrefix(seg uint64) []byte {
	b := make([]byte, 9, 9+64)
	b[0] = prefixSegIndex
	binary.BigEndian.PutUint64(b[1:], seg)
	return b
}

func segIndexKey(seg uint64, manifestKey []byte) []byte {
	return append(segIndexPrefix(seg), manifestKey...)
}

func tombstoneKey(tenant, namespace string) []byte {
	b := make([]byte, 0, 2+len(tenant)+len(namespace))
	b = append(b, prefixTombstone)
	b = append(b, tenant...)
	b = append(b, 0)
	b = append(b, namespace...)
	return b
}

func uploadKey(id string) []byte {
	return append([]byte{prefixUpload}, id...)
}

func outboxPrefix(peer string) []byte {
	b := make([]byte, 0, 2+len(peer)+8)
	b = append(b, prefixOutbox)
	b = append(b, peer...)
	return append(b, 0)
}

func outboxKey(peer string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(outboxPrefix(peer), seq)
}

// validatePeer keeps peer names usable as a key component.
func validatePeer(peer string) error {
	if peer == "" || bytes.IndexByte([]byte(peer), 0) >= 0 || len(peer) > storage.MaxIdentifierBytes {
		return fmt.Errorf("outbox peer %q: must be 1..%d bytes without NUL", peer, storage.MaxIdentifierBytes)
	}
	return nil
}

// validateUploadID keeps upload ids usable as a key component (they are also directory names
// in storage/local, which additionally requires a UUID).
func validateUploadID(id string) error {
	if id == "" || len(id) > 64 || bytes.IndexByte([]byte(id), 0) >= 0 {
		return fmt.Errorf("%w: upload id %q", storage.ErrUploadNotFound, id)
	}
	return nil
}
