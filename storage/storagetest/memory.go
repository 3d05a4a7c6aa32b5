package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/google/uuid"

	"github.com/kuracache/kura/storage"
)

// Memory is an in-memory Store and Multipart with the same observable semantics as the disk
// store, for unit tests of front ends. It is safe for concurrent use. It is never used as
// evidence that a feature works end to end.
type Memory struct {
	mu         sync.Mutex
	clock      *storage.Clock
	objects    map[storage.Key]memObject
	tombstones map[[2]string]storage.Version
	uploads    map[string]*memUpload
}

type memObject struct {
	info storage.Info
	body []byte
	// evicted marks a stub: invisible to reads, counted by the Index.
	evicted bool
}

type memUpload struct {
	key         storage.Key
	contentType string
	parts       map[int][]byte
}

var (
	_ storage.Store     = (*Memory)(nil)
	_ storage.Multipart = (*Memory)(nil)
	_ storage.Index     = (*Memory)(nil)
)

// NewMemory returns an empty store.
func NewMemory() *Memory {
	return &Memory{
		clock:      storage.NewClock(nil),
		objects:    map[storage.Key]memObject{},
		tombstones: map[[2]string]storage.Version{},
		uploads:    map[string]*memUpload{},
	}
}

// Stat implements storage.Store.
func (m *Memory) Stat(_ context.Context, key storage.Key) (storage.Info, error) {
	if err := key.Validate(); err != nil {
		return storage.Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	obj, ok := m.objects[key]
	if !ok || obj.evicted {
		return storage.Info{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotFound)
	}
	return obj.info, nil
}

// Open implements storage.Store.
func (m *Memory) Open(_ context.Context, key storage.Key, offset, length int64) (storage.Reader, error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	obj, ok := m.objects[key]
	m.mu.Unlock()
	if !ok || obj.evicted {
		return nil, fmt.Errorf("open %s: %w", key, storage.ErrNotFound)
	}
	body := obj.body
	if offset < 0 {
		offset = 0
	}
	if offset > int64(len(body)) {
		offset = int64(len(body))
	}
	body = body[offset:]
	if length >= 0 && length < int64(len(body)) {
		body = body[:length]
	}
	return &memReader{Reader: bytes.NewReader(body), info: obj.info}, nil
}

type memReader struct {
	*bytes.Reader
	info storage.Info
}

func (r *memReader) Close() error       { return nil }
func (r *memReader) Info() storage.Info { return r.info }

// Put implements storage.Store.
func (m *Memory) Put(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	if err := key.Validate(); err != nil {
		return storage.PutResult{}, err
	}
	if !key.Kind.LastWriterWins() {
		if info, err := m.Stat(ctx, key); err == nil {
			cur := storage.Copy{Version: info.Version, SHA256: info.SHA256}
			switch {
			case opts.Version == 0:
				return storage.PutResult{Info: info}, nil
			case opts.ExpectedSHA256 != nil && !storage.Replaces(key.Kind, storage.Copy{Version: opts.Version, SHA256: *opts.ExpectedSHA256}, cur):
				return storage.PutResult{Info: info}, nil
			case !storage.MayReplace(key.Kind, opts.Version, cur):
				return storage.PutResult{Info: info}, nil
			}
		}
	}
	data, err := readBody(body, opts)
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, err)
	}
	sum := sha256.Sum256(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	existing, exists := m.objects[key]
	version := opts.Version
	if version == 0 {
		if exists {
			m.clock.Observe(existing.info.Version)
		}
		version = m.clock.Now()
		if exists && existing.evicted && !key.Kind.LastWriterWins() && existing.info.SHA256 == sum {
			version = existing.info.Version // the evicted body itself comes back
		}
	} else {
		m.clock.Observe(version)
	}
	if tomb, ok := m.tombstones[[2]string{key.Tenant, key.Namespace}]; ok && version <= tomb {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", key, storage.ErrStale)
	}
	if exists && !storage.Replaces(key.Kind, storage.Copy{Version: version, SHA256: sum},
		storage.Copy{Version: existing.info.Version, SHA256: existing.info.SHA256, Evicted: existing.evicted}) {
		return storage.PutResult{Info: existing.info}, nil
	}
	info := storage.Info{Key: key, Size: int64(len(data)), ContentType: opts.ContentType, SHA256: sha256.Sum256(data), Version: version,
		Attributes: opts.Attributes}
	m.objects[key] = memObject{info: info, body: data}
	return storage.PutResult{Info: info, Created: true}, nil
}

// readBody applies PutOptions' size, limit and digest checks to a whole body.
func readBody(body io.Reader, opts storage.PutOptions) ([]byte, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = 1 << 62
	}
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if int64(len(data)) > limit {
		return nil, storage.ErrTooLarge
	}
	if opts.Size >= 0 && int64(len(data)) != opts.Size {
		return nil, fmt.Errorf("%w: body has %d bytes, declared %d", storage.ErrDigestMismatch, len(data), opts.Size)
	}
	if opts.ExpectedSHA256 != nil && sha256.Sum256(data) != *opts.ExpectedSHA256 {
		return nil, fmt.Errorf("%w: SHA-256 differs", storage.ErrDigestMismatch)
	}
	return data, nil
}

// FindMissing implements storage.Store.
func (m *Memory) FindMissing(_ context.Context, keys []storage.Key) ([]storage.Key, error) {
	for _, k := range keys {
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("find missing: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var missing []storage.Key
	for _, k := range keys {
		if obj, ok := m.objects[k]; !ok || obj.evicted {
			missing = append(missing, k)
		}
	}
	return missing, nil
}

// DeleteNamespace implements storage.Store.
func (m *Memory) DeleteNamespace(_ context.Context, tenant, namespace string, version storage.Version) error {
	if err := storage.ValidateIdentifier("tenant_id", tenant); err != nil {
		return err
	}
	if err := storage.ValidateIdentifier("namespace_id", namespace); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if version == 0 {
		version = m.clock.Now()
	} else {
		m.clock.Observe(version)
	}
	ns := [2]string{tenant, namespace}
	if version > m.tombstones[ns] {
		m.tombstones[ns] = version
	}
	for k, obj := range m.objects {
		if k.Tenant == tenant && k.Namespace == namespace && obj.info.Version <= version {
			delete(m.objects, k)
		}
	}
	return nil
}

// StartUpload implements storage.Multipart.
func (m *Memory) StartUpload(_ context.Context, key storage.Key, contentType string) (string, error) {
	if err := key.Validate(); err != nil {
		return "", err
	}
	id := uuid.NewString()
	m.mu.Lock()
	m.uploads[id] = &memUpload{key: key, contentType: contentType, parts: map[int][]byte{}}
	m.mu.Unlock()
	return id, nil
}

// UploadKey implements storage.Multipart.
func (m *Memory) UploadKey(_ context.Context, uploadID string) (storage.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	up, ok := m.uploads[uploadID]
	if !ok {
		return storage.Key{}, fmt.Errorf("upload %q: %w", uploadID, storage.ErrUploadNotFound)
	}
	return up.key, nil
}

// PutPart implements storage.Multipart.
func (m *Memory) PutPart(_ context.Context, uploadID string, partNumber int, body io.Reader) error {
	if partNumber < 1 || partNumber > storage.MaxPartNumber {
		return storage.ErrInvalidPart
	}
	m.mu.Lock()
	_, ok := m.uploads[uploadID]
	m.mu.Unlock()
	if !ok {
		return storage.ErrUploadNotFound
	}
	data, err := readBody(body, storage.PutOptions{Size: storage.UnknownSize, Limit: storage.MaxPartBytes})
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	up, ok := m.uploads[uploadID]
	if !ok {
		return storage.ErrUploadNotFound
	}
	total := int64(len(data))
	for n, p := range up.parts {
		if n != partNumber {
			total += int64(len(p))
		}
	}
	if total > storage.MaxUploadBytes {
		return storage.ErrUploadTooLarge
	}
	up.parts[partNumber] = data
	return nil
}

// CompleteUpload implements storage.Multipart.
func (m *Memory) CompleteUpload(ctx context.Context, uploadID string, parts []int) (storage.PutResult, error) {
	m.mu.Lock()
	up, ok := m.uploads[uploadID]
	if !ok {
		m.mu.Unlock()
		return storage.PutResult{}, storage.ErrUploadNotFound
	}
	uploaded := make([]int, 0, len(up.parts))
	for n := range up.parts {
		uploaded = append(uploaded, n)
	}
	sort.Ints(uploaded)
	if len(uploaded) != len(parts) {
		m.mu.Unlock()
		return storage.PutResult{}, storage.ErrPartsMismatch
	}
	var buf bytes.Buffer
	for i, n := range parts {
		if uploaded[i] != n {
			m.mu.Unlock()
			return storage.PutResult{}, storage.ErrPartsMismatch
		}
		buf.Write(up.parts[n])
	}
	delete(m.uploads, uploadID)
	m.mu.Unlock()
	return m.Put(ctx, up.key, &buf, storage.PutOptions{ContentType: up.contentType, Size: int64(buf.Len())})
}
