package meta

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"

	"github.com/kuracache/kura/storage"
)

// DigestSize is the size of one bucket digest and of one object's entry hash.
const DigestSize = sha256.Size

// DigestBucket returns the anti-entropy bucket of the object whose encoded key (ManifestKey)
// is encodedKey: the leading bits of SHA-256(encodedKey). bits must be at most 32.
func DigestBucket(encodedKey []byte, bits uint32) uint32 {
	if bits == 0 {
		return 0
	}
	sum := sha256.Sum256(encodedKey)
	return binary.BigEndian.Uint32(sum[:4]) >> (32 - bits)
}

// EntryHash is one object's contribution to its bucket digest, as storage.Index defines it:
// SHA-256(encoded key | body SHA-256), followed by the 8-byte big-endian version for
// last-writer-wins kinds (for immutable kinds two nodes may hold the same object written at
// different times, and they must still agree).
func EntryHash(encodedKey []byte, kind storage.Kind, bodySHA256 [32]byte, version storage.Version) [DigestSize]byte {
	h := sha256.New()
	h.Write(encodedKey)
	h.Write(bodySHA256[:])
	if kind.LastWriterWins() {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(version))
		h.Write(v[:])
	}
	var out [DigestSize]byte
	h.Sum(out[:0])
	return out
}

// ObjectDigest returns the bucket (at storage.DigestBucketBits) and the entry hash of the
// object info describes.
func ObjectDigest(info storage.Info) (bucket uint32, hash [DigestSize]byte) {
	ek := ManifestKey(info.Key)
	return DigestBucket(ek, storage.DigestBucketBits), EntryHash(ek, info.Key.Kind, info.SHA256, info.Version)
}

// DigestTable is the bucket digests of a set of objects at storage.DigestBucketBits: each
// bucket is the XOR of the entry hashes of its objects, so adding and removing an object are
// the same O(1) operation and the result does not depend on the order of writes. The zero
// value is the table of no objects. It is not safe for concurrent use.
type DigestTable struct {
	buckets [1 << storage.DigestBucketBits][DigestSize]byte
	objects int64
}

// Add XORs one object in; Remove is the same with the count going down.
func (t *DigestTable) Add(bucket uint32, hash *[DigestSize]byte) {
	subtle.XORBytes(t.buckets[bucket][:], t.buckets[bucket][:], hash[:])
	t.objects++
}

// Remove XORs one object out.
func (t *DigestTable) Remove(bucket uint32, hash *[DigestSize]byte) {
	subtle.XORBytes(t.buckets[bucket][:], t.buckets[bucket][:], hash[:])
	t.objects--
}

// AddObject and RemoveObject take the object's Info.
func (t *DigestTable) AddObject(info storage.Info) {
	b, h := ObjectDigest(info)
	t.Add(b, &h)
}

// RemoveObject XORs out the object info describes.
func (t *DigestTable) RemoveObject(info storage.Info) {
	b, h := ObjectDigest(info)
	t.Remove(b, &h)
}

// Merge XORs every bucket of d into t and adds its object count (d may count negatively,
// when it holds the changes made while t was being built).
func (t *DigestTable) Merge(d *DigestTable) {
	for i := range t.buckets {
		subtle.XORBytes(t.buckets[i][:], t.buckets[i][:], d.buckets[i][:])
	}
	t.objects += d.objects
}

// Objects is the number of objects summarised.
func (t *DigestTable) Objects() int64 { return t.objects }

// Digests returns 2^bits bucket digests concatenated in bucket order, for bits at most
// storage.DigestBucketBits: a coarser bucket is the XOR of the finer buckets sharing its
// leading bits, exactly what a table built at that resolution would hold.
func (t *DigestTable) Digests(bits uint32) ([]byte, error) {
	if bits > storage.DigestBucketBits {
		return nil, fmt.Errorf("%w: %d bucket bits requested, at most %d are supported",
			storage.ErrInvalidKey, bits, storage.DigestBucketBits)
	}
	out := make([]byte, (1<<bits)*DigestSize)
	shift := storage.DigestBucketBits - bits
	for i := range t.buckets {
		dst := out[(i>>shift)*DigestSize:][:DigestSize]
		subtle.XORBytes(dst, dst, t.buckets[i][:])
	}
	return out, nil
}
