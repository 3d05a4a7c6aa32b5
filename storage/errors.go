package storage

import "errors"

// Sentinel errors. Implementations wrap them with what was being done; callers test with
// errors.Is. Each protocol maps them to its status codes in one place (httpapi, reapi).
var (
	// ErrNotFound: no such object (or it was corrupt and has been dropped). HTTP 404, gRPC NOT_FOUND.
	ErrNotFound = errors.New("not found")
	// ErrInvalidKey: an identifier failed validation. HTTP 400, gRPC INVALID_ARGUMENT.
	ErrInvalidKey = errors.New("invalid key")
	// ErrTooLarge: the body exceeded the limit given in PutOptions. HTTP 413.
	ErrTooLarge = errors.New("body exceeds the size limit")
	// ErrDigestMismatch: the body's SHA-256 or size differs from what the client declared.
	// HTTP 400, gRPC INVALID_ARGUMENT. Nothing was stored.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrInsufficientStorage: the disk or the disk budget is full and eviction could not make
	// room. HTTP 507, gRPC RESOURCE_EXHAUSTED. Reads keep working.
	ErrInsufficientStorage = errors.New("insufficient storage")
	// ErrUnavailable: the store cannot serve right now (I/O failure, shutting down). HTTP 503,
	// gRPC UNAVAILABLE.
	ErrUnavailable = errors.New("store unavailable")
	// ErrBusy: a bounded resource (the file-descriptor pool) stayed exhausted for longer than
	// its acquire timeout, or the process ran out of descriptors. Transient: the same request
	// may succeed a moment later. HTTP 503 with a JSON message, gRPC RESOURCE_EXHAUSTED.
	// Nothing was stored.
	ErrBusy = errors.New("resource pool exhausted")
	// ErrCorrupt: a stored record failed its checksum. Returned by Reader.Read before any byte
	// of the bad block is handed out; the record is dropped so later reads see ErrNotFound.
	ErrCorrupt = errors.New("stored record is corrupt")
	// ErrStale: a replicated or versioned write is older than what is stored or than the
	// namespace's tombstone, so it was ignored. Not an error for clients.
	ErrStale = errors.New("write is older than the stored state")
	// ErrUploadNotFound: the multipart upload id is unknown, completed or expired. HTTP 404.
	ErrUploadNotFound = errors.New("upload not found")
	// ErrInvalidPart: a multipart part number is out of range. HTTP 400.
	ErrInvalidPart = errors.New("invalid part number")
	// ErrUploadTooLarge: a multipart upload's parts add up to more than its total limit. HTTP 422.
	ErrUploadTooLarge = errors.New("upload exceeds the total size limit")
	// ErrPartsMismatch: the completion list differs from the uploaded part numbers. HTTP 400.
	ErrPartsMismatch = errors.New("parts mismatch or missing parts")
)

// ErrExpired: the object was removed by this node's retention rule (its last use was older
// than its namespace's maximum age). Every error wrapping it also wraps ErrNotFound, so
// clients see a plain miss; replication (read-through in particular) tests it to leave the
// object gone instead of fetching a peer's copy.
var ErrExpired error = expiredError{}

type expiredError struct{}

func (expiredError) Error() string { return "expired by the retention rule" }

// Is makes errors.Is(ErrExpired, ErrNotFound) hold.
func (expiredError) Is(target error) bool { return target == ErrNotFound }
