package testsupport

import (
	"io"
	"math/rand/v2"
	"sync/atomic"
)

// CountingReader counts the bytes handed out by the wrapped reader. N is safe to call while
// another goroutine reads.
type CountingReader struct {
	R io.Reader
	n atomic.Int64
}

// Read implements io.Reader.
func (c *CountingReader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// N is how many bytes were read so far.
func (c *CountingReader) N() int64 { return c.n.Load() }

// PatternReader yields n deterministic pseudo-random bytes without holding them in memory, so
// tests can stream bodies larger than they want to allocate.
type PatternReader struct {
	rng  *rand.ChaCha8
	left int64
}

// NewPatternReader returns a reader of n bytes derived from seed; equal seeds give equal bytes.
func NewPatternReader(seed uint64, n int64) *PatternReader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return &PatternReader{rng: rand.NewChaCha8(s), left: n}
}

// Read implements io.Reader.
func (r *PatternReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, _ := r.rng.Read(p)
	r.left -= int64(n)
	return n, nil
}
