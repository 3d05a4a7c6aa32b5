package storage

import (
	"context"
	"encoding/hex"
	"io"
	"time"
)

// Info describes a stored object.
type Info struct {
	Key         Key
	Size        int64
	ContentType string
	// SHA256 is the digest of the stored body, computed while it streamed in.
	SHA256 [32]byte
	// Version orders writes (last-writer-wins, tombstones). It is also the creation time.
	Version Version
	// Attributes are the client's metadata stored with the body (see Attributes).
	Attributes Attributes
}

// ETag is the strong HTTP entity tag of the body.
func (i Info) ETag() string { return `"` + hex.EncodeToString(i.SHA256[:]) + `"` }

// CreatedAt is the wall time of the write that produced the object.
func (i Info) CreatedAt() time.Time { return i.Version.Time() }

// UnknownSize marks a body whose length is not known in advance (chunked uploads).
const UnknownSize = -1

// PutOptions qualify one write.
type PutOptions struct {
	// ContentType is stored and served back with the body.
	ContentType string
	// Attributes are stored and served back with the body. Replication passes the origin's.
	Attributes Attributes
	// Size is the body length when the client declared it, or UnknownSize. A body that ends
	// early or runs past a declared Size fails with ErrDigestMismatch and nothing is stored.
	Size int64
	// Limit is the most body bytes accepted; 0 means no limit. A longer body fails with
	// ErrTooLarge after at most Limit+1 bytes were read, and nothing is stored.
	Limit int64
	// ExpectedSHA256, when set, must equal the body's SHA-256, else ErrDigestMismatch.
	ExpectedSHA256 *[32]byte
	// Version to record. Zero means "now" on the store's clock (a client's write here);
	// replication passes the origin's version so every node orders the write the same way
	// (storage.Replaces), and only such a write can replace a stored immutable body.
	Version Version
}

// PutResult reports what a write did.
type PutResult struct {
	Info Info
	// Created is false when the write changed nothing: an immutable kind whose key already
	// existed (a local write, or a replicated copy that does not replace it by Replaces), or
	// a versioned write older than the stored state. It is true when the write stored a new
	// object, filled a stub or replaced the stored body.
	Created bool
}

// Reader streams one object's body. Read verifies checksums as it goes and returns an error
// wrapping ErrCorrupt before handing out any byte of a block that fails verification. The
// caller must Close it.
type Reader interface {
	io.ReadCloser
	// Info describes the whole object (not just the requested range).
	Info() Info
}

// Store keeps objects. Implementations are safe for concurrent use. An acknowledged Put (one
// that returned a nil error) is durable: it survives a crash of the process or the machine.
type Store interface {
	// Stat returns the object's Info, or an error wrapping ErrNotFound.
	Stat(ctx context.Context, key Key) (Info, error)
	// Open returns a Reader over length bytes starting at offset (length < 0: to the end).
	// An offset beyond the size is ErrInvalidKey-free: it yields an empty reader at the end.
	// Missing objects give an error wrapping ErrNotFound.
	Open(ctx context.Context, key Key, offset, length int64) (Reader, error)
	// Put stores body under key. Whether it replaces what is stored is decided by Replaces:
	// for immutable kinds a local write (Version zero) never overwrites an existing key and
	// its body is not read (Created=false), while a replicated write that is the cluster's
	// first writer replaces it. The body is hashed while it streams in and limits
	// are enforced while streaming; on any error nothing is stored and staged bytes are removed.
	Put(ctx context.Context, key Key, body io.Reader, opts PutOptions) (PutResult, error)
	// FindMissing returns the subset of keys that are not stored, in the order given.
	FindMissing(ctx context.Context, keys []Key) ([]Key, error)
	// DeleteNamespace removes every object of every kind under tenant/namespace and records a
	// tombstone at version (zero: now) so that older writes arriving later are ignored.
	DeleteNamespace(ctx context.Context, tenant, namespace string, version Version) error
}

// ChunkReader is a body that already holds its bytes in memory, in pieces (the data of a
// gRPC stream's messages, still in the buffers gRPC received them into). A store that gets
// one as a Put body takes its chunks and writes them where they go instead of copying them
// through a buffer of its own; it still enforces every limit while streaming and never
// writes a byte past them.
type ChunkReader interface {
	io.Reader
	// NextChunk returns the next piece of the body, which stays valid until the next call of
	// NextChunk or Read, or io.EOF at the end. A piece may be empty.
	NextChunk() ([]byte, error)
}

// Multipart assembles an object from separately uploaded parts (the module cache protocol).
// Parts are staged on disk; state survives restarts; abandoned uploads expire.
type Multipart interface {
	// StartUpload begins an upload that will be stored under key and returns its id.
	StartUpload(ctx context.Context, key Key, contentType string) (uploadID string, err error)
	// UploadKey returns the key an upload will be stored under, so a front end can authorize
	// a part or a completion against the real tenant, namespace and name before reading its
	// body. An unknown, expired or completed upload gives an error wrapping ErrUploadNotFound.
	UploadKey(ctx context.Context, uploadID string) (Key, error)
	// PutPart stores (or replaces) one part. Errors: ErrUploadNotFound, ErrInvalidPart,
	// ErrTooLarge (the part exceeds the per-part limit), ErrUploadTooLarge (the running total
	// exceeds the upload limit).
	PutPart(ctx context.Context, uploadID string, partNumber int, body io.Reader) error
	// CompleteUpload concatenates exactly the listed parts, which must equal the uploaded part
	// numbers in ascending order (else ErrPartsMismatch), stores the result atomically and
	// forgets the upload.
	CompleteUpload(ctx context.Context, uploadID string, parts []int) (PutResult, error)
}

// Multipart limits from the module cache protocol.
const (
	MaxPartBytes   = 10 << 20 // one part
	MaxUploadBytes = 2 << 30  // all parts of one upload
	MaxPartNumber  = 10000
	// UploadExpiry is how long an upload may stay incomplete before the janitor removes it.
	UploadExpiry = 24 * time.Hour
)

// PutItem is one write of a PutBatch: a body already in memory.
type PutItem struct {
	Key  Key
	Body []byte
	Opts PutOptions
}

// PutItemResult is the outcome of one PutItem, as Put would have reported it.
type PutItemResult struct {
	PutResult
	Err error
}

// Refresher is a Store that can be told which objects a client was just told exist
// (FindMissingBlobs' present digests, a cache hit's outputs), so that eviction and retention
// treat them as just read: a build that downloads them minutes later finds them. Refresh is
// best-effort (it never fails) and cheap enough for the FindMissing path; keys that are not
// stored are ignored. Decorators forward it to the store they wrap.
type Refresher interface {
	Refresh(keys []Key)
}

// ExpiryReporter is a Store that removes objects by age (retention) and can say which of
// some keys it removed that way. Replication asks it before fetching a peer's copy of a
// locally missing key, so an expired object is not brought back.
type ExpiryReporter interface {
	// Expired returns, for each key, whether this node expired it (in order). Without
	// retention configured it answers all false without looking anything up.
	Expired(keys []Key) []bool
}

// BatchPutter is a Store that commits many small writes as one: one append and one sync of
// the bodies, one synced metadata commit. Each item still succeeds or fails on its own (an
// invalid item fails alone, the others are stored), and each acknowledged item is as durable
// as an acknowledged Put. The result has one entry per item, in order.
type BatchPutter interface {
	PutBatch(ctx context.Context, items []PutItem) []PutItemResult
}
