package meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"

	"github.com/kuracache/kura/storage"
)

// formatV1 is the first byte of every value this package writes. A reader that meets an
// unknown version reports corruption instead of guessing.
const formatV1 byte = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Location says where a record's bytes live in the segment files (see storage/segment).
type Location struct {
	Segment    uint64
	Offset     int64
	BodySize   int64
	RecordSize int64
}

// Manifest is everything known about one stored object. Exactly one of Location and Body
// holds the bytes: Inline bodies (keyvalue documents) live in Pebble itself. An Evicted
// manifest is a stub: the body was dropped to stay within the disk budget and neither
// Location nor Body is set, but the identity (size, digest, version) is kept so the object
// still counts in anti-entropy digests and is not pulled back from peers. An Expired stub is
// an evicted one that the retention rule removed (its last use was older than the
// namespace's maximum age): replication never fills it again, only a client's write does.
type Manifest struct {
	Inline      bool
	Evicted     bool
	Expired     bool     // only with Evicted
	Location    Location // when neither Inline nor Evicted
	Body        []byte   // when Inline
	Size        int64
	ContentType string
	SHA256      [32]byte
	Version     storage.Version
	// Attributes are the client's metadata of the write (storage.Attributes). Stubs keep
	// them: they are part of what the object is, and a stub read through again must still
	// answer them.
	Attributes storage.Attributes
}

// Info turns the manifest into the storage.Info of key.
func (m Manifest) Info(key storage.Key) storage.Info {
	return storage.Info{Key: key, Size: m.Size, ContentType: m.ContentType, SHA256: m.SHA256, Version: m.Version, Attributes: m.Attributes}
}

// Stub returns the evicted stub of m: the same identity without any bytes.
func (m Manifest) Stub() Manifest {
	return Manifest{Evicted: true, Size: m.Size, ContentType: m.ContentType, SHA256: m.SHA256, Version: m.Version, Attributes: m.Attributes}
}

// ExpiredStub returns the stub of m the retention rule leaves: Stub, marked Expired.
func (m Manifest) ExpiredStub() Manifest {
	st := m.Stub()
	st.Expired = true
	return st
}

// InSegment reports whether the manifest points at a segment record (neither inline nor a
// stub).
func (m Manifest) InSegment() bool { return !m.Inline && !m.Evicted }

// Upload is the state of one multipart upload.
type Upload struct {
	Key         storage.Key
	ContentType string
	// CreatedMillis is the wall time the upload started (Unix ms); the janitor expires it.
	CreatedMillis int64
	// Parts maps a part number to its staged file.
	Parts map[int]Part
}

// Part is one staged multipart part.
type Part struct {
	Size int64
	// File names the staged file inside the upload's directory (chosen by storage/local).
	File string
}

// Total is the sum of all part sizes.
func (u Upload) Total() int64 {
	var n int64
	for _, p := range u.Parts {
		n += p.Size
	}
	return n
}

// PartNumbers returns the uploaded part numbers in ascending order.
func (u Upload) PartNumbers() []int {
	ns := make([]int, 0, len(u.Parts))
	for n := range u.Parts {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	return ns
}

// seal appends the CRC-32C of b to b.
func seal(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// unseal checks the framing of a stored value and returns its payload after the version byte.
func unseal(what string, v []byte) ([]byte, error) {
	if len(v) < 5 {
		return nil, fmt.Errorf("decode %s: %w: value of %d bytes is too short", what, storage.ErrCorrupt, len(v))
	}
	body, sum := v[:len(v)-4], binary.LittleEndian.Uint32(v[len(v)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("decode %s: %w: CRC mismatch", what, storage.ErrCorrupt)
	}
	if body[0] != formatV1 {
		return nil, fmt.Errorf("decode %s: %w: unknown format version %d", what, storage.ErrCorrupt, body[0])
	}
	return body[1:], nil
}

// decoder reads the fields of a payload; the first failure sticks so callers check once.
type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated field")

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

// int64 reads a non-negative int64 stored as a uvarint.
func (d *decoder) int64() int64 {
	v := d.uvarint()
	if v > 1<<62 {
		d.fail(errors.New("integer out of range"))
		return 0
	}
	return int64(v)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) fixed(dst []byte) {
	if d.err != nil {
		return
	}
	if len(d.b) < len(dst) {
		d.err = errShort
		return
	}
	copy(dst, d.b)
	d.b = d.b[len(dst):]
}

func (d *decoder) byte() byte {
	var b [1]byte
	d.fixed(b[:])
	return b[0]
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// finish reports the sticky error, or trailing garbage, as corruption.
func (d *decoder) finish(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("decode %s: %w: %v", what, storage.ErrCorrupt, d.err)
	}
	return nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

const (
	flagInline  = 1
	flagEvicted = 2
	// flagAttributes says the encoded storage.Attributes follow the variant part. Manifests
	// without attributes are written exactly as before the flag existed, and manifests
	// written before it decode unchanged, so old data directories stay readable and a node
	// that never stores attributes writes what an older node reads.
	flagAttributes = 4
	flagExpired    = 8 // always with flagEvicted
)

// EncodeManifest returns the stored form of m.
func EncodeManifest(m Manifest) ([]byte, error) {
	if m.Size < 0 {
		return nil, fmt.Errorf("encode manifest: negative size %d", m.Size)
	}
	switch {
	case m.Inline && m.Evicted:
		return nil, errors.New("encode manifest: a manifest cannot be both inline and evicted")
	case m.Expired && !m.Evicted:
		return nil, errors.New("encode manifest: only an evicted stub can be expired")
	case m.Evicted:
		if len(m.Body) != 0 || m.Location != (Location{}) {
			return nil, errors.New("encode manifest: an evicted stub holds no body and no location")
		}
	case m.Inline:
		if int64(len(m.Body)) != m.Size {
			return nil, fmt.Errorf("encode manifest: inline body has %d bytes, size says %d", len(m.Body), m.Size)
		}
	default:
		l := m.Location
		if l.Offset < 0 || l.BodySize != m.Size || l.RecordSize < l.BodySize {
			return nil, fmt.Errorf("encode manifest: inconsistent location %+v for size %d", l, m.Size)
		}
	}
	b := make([]byte, 0, 96+len(m.ContentType)+len(m.Body)+m.Attributes.Size())
	b = append(b, formatV1)
	var flags byte
	if m.Inline {
		flags |= flagInline
	}
	if m.Evicted {
		flags |= flagEvicted
	}
	if !m.Attributes.IsZero() {
		flags |= flagAttributes
	}
	if m.Expired {
		flags |= flagExpired
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(m.Version))
	b = binary.AppendUvarint(b, uint64(m.Size))
	b = append(b, m.SHA256[:]...)
	b = appendBytes(b, []byte(m.ContentType))
	switch {
	case m.Evicted:
		// A stub ends after the identity fields.
	case m.Inline:
		b = appendBytes(b, m.Body)
	default:
		b = binary.AppendUvarint(b, m.Location.Segment)
		b = binary.AppendUvarint(b, uint64(m.Location.Offset))
		b = binary.AppendUvarint(b, uint64(m.Location.BodySize))
		b = binary.AppendUvarint(b, uint64(m.Location.RecordSize))
	}
	if !m.Attributes.IsZero() {
		b = appendBytes(b, m.Attributes.Encoded())
	}
	return seal(b), nil
}

// DecodeManifest parses a stored manifest. The result does not alias v. Any damage is reported
// as an error wrapping storage.ErrCorrupt.
func DecodeManifest(v []byte) (Manifest, error) {
	return decodeManifest(v, true)
}

// decodeManifest parses a stored manifest; with copyBody false an inline body aliases v
// (scans that only need the identity then avoid copying documents of up to 16 MiB).
func decodeManifest(v []byte, copyBody bool) (Manifest, error) {
	p, err := unseal("manifest", v)
	if err != nil {
		return Manifest{}, err
	}
	d := decoder{b: p}
	var m Manifest
	flags := d.byte()
	switch {
	case flags&^(flagInline|flagEvicted|flagAttributes|flagExpired) != 0:
		d.fail(fmt.Errorf("unknown flags %#x", flags))
	case flags&(flagInline|flagEvicted) == flagInline|flagEvicted:
		d.fail(errors.New("flags say both inline and evicted"))
	case flags&(flagExpired|flagEvicted) == flagExpired:
		d.fail(errors.New("flags say expired but not evicted"))
	}
	m.Inline = flags&flagInline != 0
	m.Evicted = flags&flagEvicted != 0
	m.Expired = flags&flagExpired != 0
	m.Version = storage.Version(d.uvarint())
	m.Size = d.int64()
	d.fixed(m.SHA256[:])
	m.ContentType = string(d.bytes())
	switch {
	case m.Evicted:
	case m.Inline:
		body := d.bytes()
		if d.err == nil && int64(len(body)) != m.Size {
			d.fail(fmt.Errorf("inline body has %d bytes, size says %d", len(body), m.Size))
		}
		if copyBody {
			body = append([]byte{}, body...)
		}
		m.Body = body
	default:
		m.Location.Segment = d.uvarint()
		m.Location.Offset = d.int64()
		m.Location.BodySize = d.int64()
		m.Location.RecordSize = d.int64()
		if d.err == nil && (m.Location.BodySize != m.Size || m.Location.RecordSize < m.Location.BodySize) {
			d.fail(fmt.Errorf("inconsistent location %+v for size %d", m.Location, m.Size))
		}
	}
	if flags&flagAttributes != 0 {
		enc := d.bytes()
		if d.err == nil {
			a, err := storage.ParseAttributes(enc)
			switch {
			case err != nil:
				d.fail(err)
			case a.IsZero():
				d.fail(errors.New("attributes flag set without attributes"))
			}
			m.Attributes = a
		}
	}
	if err := d.finish("manifest"); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

func encodeVersion(v storage.Version) []byte {
	b := []byte{formatV1}
	b = binary.AppendUvarint(b, uint64(v))
	return seal(b)
}

func decodeVersion(what string, v []byte) (storage.Version, error) {
	p, err := unseal(what, v)
	if err != nil {
		return 0, err
	}
	d := decoder{b: p}
	ver := storage.Version(d.uvarint())
	return ver, d.finish(what)
}

// EncodeUpload returns the stored form of u.
func EncodeUpload(u Upload) ([]byte, error) {
	if err := u.Key.Validate(); err != nil {
		return nil, fmt.Errorf("encode upload: %w", err)
	}
	b := []byte{formatV1}
	b = appendBytes(b, []byte(u.Key.Tenant))
	b = appendBytes(b, []byte(u.Key.Namespace))
	b = appendBytes(b, []byte(u.Key.Kind))
	b = appendBytes(b, []byte(u.Key.Name))
	b = appendBytes(b, []byte(u.ContentType))
	if u.CreatedMillis < 0 {
		return nil, fmt.Errorf("encode upload: negative creation time %d", u.CreatedMillis)
	}
	b = binary.AppendUvarint(b, uint64(u.CreatedMillis))
	b = binary.AppendUvarint(b, uint64(len(u.Parts)))
	for _, n := range u.PartNumbers() {
		p := u.Parts[n]
		if n < 1 || p.Size < 0 {
			return nil, fmt.Errorf("encode upload: bad part %d (size %d)", n, p.Size)
		}
		b = binary.AppendUvarint(b, uint64(n))
		b = binary.AppendUvarint(b, uint64(p.Size))
		b = appendBytes(b, []byte(p.File))
	}
	return seal(b), nil
}

// DecodeUpload parses a stored upload; damage is reported as storage.ErrCorrupt.
func DecodeUpload(v []byte) (Upload, error) {
	p, err := unseal("upload", v)
	if err != nil {
		return Upload{}, err
	}
	d := decoder{b: p}
	var u Upload
	u.Key.Tenant = string(d.bytes())
	u.Key.Namespace = string(d.bytes())
	u.Key.Kind = storage.Kind(d.bytes())
	u.Key.Name = string(d.bytes())
	u.ContentType = string(d.bytes())
	u.CreatedMillis = d.int64()
	count := d.uvarint()
	if d.err == nil && count > uint64(len(d.b)) { // every part takes at least one byte
		d.fail(fmt.Errorf("part count %d exceeds the value", count))
	}
	u.Parts = make(map[int]Part, min(count, 1024))
	for i := uint64(0); i < count && d.err == nil; i++ {
		n := d.uvarint()
		size := d.int64()
		file := string(d.bytes())
		if n < 1 || n > 1<<31 {
			d.fail(fmt.Errorf("part number %d out of range", n))
		}
		u.Parts[int(n)] = Part{Size: size, File: file}
	}
	if err := d.finish("upload"); err != nil {
		return Upload{}, err
	}
	if err := u.Key.Validate(); err != nil {
		return Upload{}, fmt.Errorf("decode upload: %w: %v", storage.ErrCorrupt, err)
	}
	return u, nil
}

func encodeOutbox(value []byte) []byte {
	b := make([]byte, 0, 5+len(value))
	b = append(b, formatV1)
	b = append(b, value...)
	return seal(b)
}
