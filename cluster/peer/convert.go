package peer

import (
	"errors"
	"fmt"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

// MaxContentTypeBytes bounds a replicated content type: it is stored and served back, and a
// header must stay small next to a chunk. The public API stores at most 255 bytes.
const MaxContentTypeBytes = 1024

// errBadHeader marks a malformed object header (a peer bug, never a client mistake).
var errBadHeader = errors.New("malformed object header")

func keyToProto(k storage.Key) *peerpb.ObjectKey {
	return &peerpb.ObjectKey{Tenant: k.Tenant, Namespace: k.Namespace, Kind: string(k.Kind), Name: k.Name}
}

func keyFromProto(k *peerpb.ObjectKey) (storage.Key, error) {
	if k == nil {
		return storage.Key{}, fmt.Errorf("%w: no key", storage.ErrInvalidKey)
	}
	key := storage.Key{Tenant: k.GetTenant(), Namespace: k.GetNamespace(), Kind: storage.Kind(k.GetKind()), Name: k.GetName()}
	if err := key.Validate(); err != nil {
		return storage.Key{}, err
	}
	return key, nil
}

func infoToHeader(info storage.Info, evicted bool) *peerpb.ObjectHeader {
	sum := info.SHA256
	return &peerpb.ObjectHeader{
		Key:         keyToProto(info.Key),
		Size:        info.Size,
		ContentType: info.ContentType,
		Sha256:      sum[:],
		Version:     uint64(info.Version),
		Evicted:     evicted,
		Attributes:  info.Attributes.Encoded(),
	}
}

// headerToInfo validates a header from the wire. Key problems wrap ErrInvalidKey; the rest
// wrap errBadHeader.
func headerToInfo(h *peerpb.ObjectHeader) (storage.Info, error) {
	if h == nil {
		return storage.Info{}, fmt.Errorf("%w: missing", errBadHeader)
	}
	key, err := keyFromProto(h.GetKey())
	if err != nil {
		return storage.Info{}, err
	}
	info := storage.Info{Key: key, Size: h.GetSize(), ContentType: h.GetContentType(), Version: storage.Version(h.GetVersion())}
	switch {
	case len(h.GetSha256()) != len(info.SHA256):
		return storage.Info{}, fmt.Errorf("%w: %s: sha256 has %d bytes, want %d", errBadHeader, key, len(h.GetSha256()), len(info.SHA256))
	case info.Size < 0:
		return storage.Info{}, fmt.Errorf("%w: %s: negative size %d", errBadHeader, key, info.Size)
	case len(info.ContentType) > MaxContentTypeBytes:
		return storage.Info{}, fmt.Errorf("%w: %s: content type longer than %d bytes", errBadHeader, key, MaxContentTypeBytes)
	case info.Version == 0:
		// Zero would mean "now" to the receiving store and reorder the write.
		return storage.Info{}, fmt.Errorf("%w: %s: version is zero", errBadHeader, key)
	}
	attrs, err := storage.ParseAttributes(h.GetAttributes())
	if err != nil {
		return storage.Info{}, fmt.Errorf("%w: %s: %v", errBadHeader, key, err)
	}
	info.Attributes = attrs
	copy(info.SHA256[:], h.GetSha256())
	return info, nil
}

func tombstoneToProto(t storage.Tombstone) *peerpb.Tombstone {
	return &peerpb.Tombstone{Tenant: t.Tenant, Namespace: t.Namespace, Version: uint64(t.Version)}
}

func tombstoneFromProto(t *peerpb.Tombstone) (storage.Tombstone, error) {
	ts := storage.Tombstone{Tenant: t.GetTenant(), Namespace: t.GetNamespace(), Version: storage.Version(t.GetVersion())}
	if err := storage.ValidateIdentifier("tenant_id", ts.Tenant); err != nil {
		return storage.Tombstone{}, err
	}
	if err := storage.ValidateIdentifier("namespace_id", ts.Namespace); err != nil {
		return storage.Tombstone{}, err
	}
	if ts.Version == 0 {
		// Zero would mean "now" to the receiving store: a clean replayed late would delete
		// writes made after it.
		return storage.Tombstone{}, fmt.Errorf("%w: tombstone %s/%s has version zero", errBadHeader, ts.Tenant, ts.Namespace)
	}
	return ts, nil
}
