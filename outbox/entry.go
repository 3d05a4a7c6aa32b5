package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
)

// Op says what an entry delivers.
type Op uint8

// The operations an entry can carry. The values are part of the on-disk format.
const (
	// OpObject pushes the current local state of Entry.Key.
	OpObject Op = 1
	// OpTombstone pushes the namespace tombstone Entry.Tombstone.
	OpTombstone Op = 2
)

func (op Op) String() string {
	switch op {
	case OpObject:
		return "object"
	case OpTombstone:
		return "tombstone"
	}
	return "unknown"
}

// Entry is one queued delivery. It names the change, never its bytes: an object's body is read
// from the local store when the entry is dispatched.
type Entry struct {
	Op Op
	// Key is the object to push (OpObject).
	Key storage.Key
	// Tombstone is the namespace deletion to push (OpTombstone).
	Tombstone storage.Tombstone
	// Version is the object's version (OpObject). For OpTombstone it equals Tombstone.Version;
	// Enqueue fills whichever of the two is zero.
	Version storage.Version
	// EnqueuedAt is when the write committed (millisecond precision once stored); it feeds the
	// oldest-entry-age gauge. Enqueue sets it when zero.
	EnqueuedAt time.Time
	// Trace is the span context of the write's commit, when it was traced: the push continues
	// that trace, so a client's write and its apply on every peer are one trace. Only the
	// trace id, span id and sampled flag are kept (the trace state is dropped).
	Trace trace.SpanContext
}

// The first byte of every encoded entry names its format. A reader that meets another value
// refuses the entry rather than guess.
const (
	// entryFormatV1: no trace context. Written for every untraced write, so with tracing
	// off the encoding is the one every earlier version wrote and reads.
	entryFormatV1 byte = 1
	// entryFormatV2: V1 followed, before the checksum, by the commit's trace context
	// (16-byte trace id, 8-byte span id, 1 byte of trace flags).
	entryFormatV2 byte = 2
)

// traceContextBytes is the size of the trace context of a V2 entry.
const traceContextBytes = 16 + 8 + 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBadEntry wraps every decoding failure of an entry.
var ErrBadEntry = errors.New("bad outbox entry")

// validate checks an entry before it is queued or after it is decoded.
func (e Entry) validate() error {
	switch e.Op {
	case OpObject:
		if err := e.Key.Validate(); err != nil {
			return fmt.Errorf("object entry: %w", err)
		}
	case OpTombstone:
		if err := storage.ValidateIdentifier("tenant_id", e.Tombstone.Tenant); err != nil {
			return fmt.Errorf("tombstone entry: %w", err)
		}
		if err := storage.ValidateIdentifier("namespace_id", e.Tombstone.Namespace); err != nil {
			return fmt.Errorf("tombstone entry: %w", err)
		}
		if e.Version != e.Tombstone.Version {
			return fmt.Errorf("tombstone entry: version %v differs from the tombstone's %v", e.Version, e.Tombstone.Version)
		}
	default:
		return fmt.Errorf("unknown entry op %d", e.Op)
	}
	return nil
}

// AppendEntry appends the compact encoding of e to dst: a format byte, the op, the version,
// the enqueue time in Unix milliseconds, the identifiers (length-prefixed), the trace context
// when e has one, and a CRC-32C of everything before it: about 30 bytes plus the identifiers
// (99 bytes for a CAS key named by a 64-character hex digest, 124 with a trace context).
func AppendEntry(dst []byte, e Entry) ([]byte, error) {
	if err := e.validate(); err != nil {
		return dst, fmt.Errorf("encode outbox entry: %w", err)
	}
	start := len(dst)
	format := entryFormatV1
	if e.Trace.IsValid() {
		format = entryFormatV2
	}
	dst = append(dst, format, byte(e.Op))
	dst = binary.AppendUvarint(dst, uint64(e.Version))
	dst = binary.AppendVarint(dst, e.EnqueuedAt.UnixMilli())
	switch e.Op {
	case OpObject:
		dst = appendString(dst, e.Key.Tenant)
		dst = appendString(dst, e.Key.Namespace)
		dst = appendString(dst, string(e.Key.Kind))
		dst = appendString(dst, e.Key.Name)
	case OpTombstone:
		dst = appendString(dst, e.Tombstone.Tenant)
		dst = appendString(dst, e.Tombstone.Namespace)
	}
	if format == entryFormatV2 {
		tid, sid := e.Trace.TraceID(), e.Trace.SpanID()
		dst = append(dst, tid[:]...)
		dst = append(dst, sid[:]...)
		dst = append(dst, byte(e.Trace.TraceFlags()))
	}
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeEntry is the inverse of AppendEntry. Any damage (checksum, unknown format or op,
// truncation, trailing bytes, invalid identifiers) is an error wrapping ErrBadEntry.
func DecodeEntry(b []byte) (Entry, error) {
	if len(b) < 2+1+1+4 {
		return Entry{}, fmt.Errorf("%w: %d bytes is too short", ErrBadEntry, len(b))
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return Entry{}, fmt.Errorf("%w: checksum mismatch", ErrBadEntry)
	}
	format := body[0]
	if format != entryFormatV1 && format != entryFormatV2 {
		return Entry{}, fmt.Errorf("%w: unknown format %d", ErrBadEntry, format)
	}
	d := entryDecoder{b: body[2:]}
	e := Entry{Op: Op(body[1])}
	e.Version = storage.Version(d.uvarint())
	ms := d.varint()
	switch e.Op {
	case OpObject:
		e.Key.Tenant = d.string()
		e.Key.Namespace = d.string()
		e.Key.Kind = storage.Kind(d.string())
		e.Key.Name = d.string()
	case OpTombstone:
		e.Tombstone.Tenant = d.string()
		e.Tombstone.Namespace = d.string()
		e.Tombstone.Version = e.Version
	default:
		return Entry{}, fmt.Errorf("%w: unknown op %d", ErrBadEntry, body[1])
	}
	if format == entryFormatV2 {
		e.Trace = d.traceContext()
	}
	if d.err != nil {
		return Entry{}, fmt.Errorf("%w: %v", ErrBadEntry, d.err)
	}
	if len(d.b) != 0 {
		return Entry{}, fmt.Errorf("%w: %d trailing bytes", ErrBadEntry, len(d.b))
	}
	if err := e.validate(); err != nil {
		return Entry{}, fmt.Errorf("%w: %v", ErrBadEntry, err)
	}
	e.EnqueuedAt = time.UnixMilli(ms)
	return e, nil
}

// entryDecoder reads fields; the first failure sticks so the caller checks once.
type entryDecoder struct {
	b   []byte
	err error
}

func (d *entryDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("truncated or overlong varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *entryDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errors.New("truncated or overlong varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// traceContext reads the trace context of a V2 entry; an invalid one (zero ids) is damage.
func (d *entryDecoder) traceContext() trace.SpanContext {
	if d.err != nil {
		return trace.SpanContext{}
	}
	if len(d.b) < traceContextBytes {
		d.err = fmt.Errorf("trace context truncated to %d bytes", len(d.b))
		return trace.SpanContext{}
	}
	var cfg trace.SpanContextConfig
	copy(cfg.TraceID[:], d.b[:16])
	copy(cfg.SpanID[:], d.b[16:24])
	cfg.TraceFlags = trace.TraceFlags(d.b[24])
	cfg.Remote = true
	d.b = d.b[traceContextBytes:]
	sc := trace.NewSpanContext(cfg)
	if !sc.IsValid() {
		d.err = errors.New("invalid trace context")
	}
	return sc
}

// string reads a length-prefixed identifier; the length is checked against the identifier
// limit before anything is sliced, so a damaged length cannot make the decoder allocate.
func (d *entryDecoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > storage.MaxIdentifierBytes || n > uint64(len(d.b)) {
		d.err = fmt.Errorf("identifier length %d exceeds the %d bytes left (limit %d)", n, len(d.b), storage.MaxIdentifierBytes)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
