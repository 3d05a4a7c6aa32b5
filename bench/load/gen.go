package load

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"sync/atomic"
)

// Uniq makes this run's generated content unique across runs and workers: a random nonce and
// a sequence shared by every generator of the run.
type Uniq struct {
	Nonce [8]byte
	seq   atomic.Uint64
}

// Next is a number never returned before in this run.
func (u *Uniq) Next() uint64 { return u.seq.Add(1) }

// BlobGen makes unique blobs of one size cheaply: the body is fixed random bytes except the
// last 32, which carry a unique tag, and the SHA-256 state after the fixed part is saved, so
// each new digest costs hashing 32 bytes instead of the whole blob.
type BlobGen struct {
	buf    []byte
	prefix []byte // marshalled sha256 state after buf[:len(buf)-32]
	u      *Uniq
	worker uint64
}

// NewBlobGen makes a generator of blobs of size (at least 32 bytes) whose fixed part is
// derived from seed.
func NewBlobGen(u *Uniq, size int, seed uint64) *BlobGen {
	if size < 32 {
		panic(fmt.Sprintf("blob size %d below the 32-byte tag", size))
	}
	buf := make([]byte, size)
	r := mrand.New(mrand.NewPCG(seed, uint64(size)))
	for i := 0; i+8 <= size; i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
	}
	h := sha256.New()
	h.Write(buf[:size-32])
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(fmt.Sprintf("sha256 state: %v", err)) // the standard library's sha256 always marshals
	}
	return &BlobGen{buf: buf, prefix: state, u: u, worker: seed}
}

// Next rewrites the tag and returns the blob (valid until the next call) and its SHA-256.
func (g *BlobGen) Next() ([]byte, [32]byte) {
	tag := g.buf[len(g.buf)-32:]
	copy(tag, g.u.Nonce[:])
	binary.LittleEndian.PutUint64(tag[8:], g.worker)
	binary.LittleEndian.PutUint64(tag[16:], g.u.Next())
	binary.LittleEndian.PutUint64(tag[24:], 0x6b757261) // "kura"
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(g.prefix); err != nil {
		panic(fmt.Sprintf("sha256 state: %v", err))
	}
	h.Write(tag)
	var sum [32]byte
	h.Sum(sum[:0])
	return g.buf, sum
}
