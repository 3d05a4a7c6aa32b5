package segment

import (
	"math/bits"
	"sync"
)

// Staging buffers are recycled because every Put allocates one: at thousands of small
// commits per second, or a growing buffer per large upload before it spills, the garbage
// would otherwise cost the GC a noticeable share of two cores. Buffers are pooled by
// power-of-two capacity so a request never gets a buffer much larger than it needs.
const (
	minPooledBuf  = 4 << 10
	maxPooledLog2 = 22
	maxPooledBuf  = 1 << maxPooledLog2
)

// bufPools[i] holds buffers of capacity 1<<(i-1).
var bufPools [maxPooledLog2 + 2]sync.Pool

// getBuf returns an empty slice with capacity c. A power-of-two c up to maxPooledBuf may come
// from the pool; other sizes are allocated.
func getBuf(c int) []byte {
	if c >= minPooledBuf && c <= maxPooledBuf && c&(c-1) == 0 {
		if b, ok := bufPools[bits.Len(uint(c))].Get().(*[]byte); ok {
			return (*b)[:0]
		}
	}
	return make([]byte, 0, c)
}

// putBuf recycles b; the caller must not touch it afterwards.
func putBuf(b []byte) {
	c := cap(b)
	if c >= minPooledBuf && c <= maxPooledBuf && c&(c-1) == 0 {
		b = b[:0]
		bufPools[bits.Len(uint(c))].Put(&b)
	}
}

// bufCap picks the capacity for a staging buffer that must hold need bytes: the next power
// of two (so it can be pooled), unless that would exceed limit.
func bufCap(need, limit int) int {
	c := max(need, minPooledBuf)
	if c&(c-1) != 0 {
		c = 1 << bits.Len(uint(c))
	}
	if c > limit {
		return max(limit, need)
	}
	return c
}
