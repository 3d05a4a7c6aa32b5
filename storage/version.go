package storage

import (
	"bytes"
	"fmt"
	"sync"
	"time"
)

// Version is a hybrid-logical-clock timestamp: the high 48 bits are wall-clock milliseconds
// since the Unix epoch, the low 16 bits a logical counter. Versions order writes across nodes
// for last-writer-wins and tombstones while staying immune to moderate clock skew: a node that
// observes a version from the future moves its own clock past it.
type Version uint64

const logicalBits = 16

// MakeVersion builds a version from wall milliseconds and a logical counter.
func MakeVersion(wallMillis int64, logical uint16) Version {
	return Version(uint64(wallMillis)<<logicalBits | uint64(logical))
}

// WallMillis is the wall-clock part of v.
func (v Version) WallMillis() int64 { return int64(uint64(v) >> logicalBits) }

// Time is the wall-clock part of v as a time.
func (v Version) Time() time.Time { return time.UnixMilli(v.WallMillis()) }

func (v Version) String() string {
	return fmt.Sprintf("%d.%d", v.WallMillis(), uint64(v)&(1<<logicalBits-1))
}

// Clock issues strictly increasing Versions. It is safe for concurrent use.
type Clock struct {
	mu   sync.Mutex
	now  func() time.Time
	last Version
}

// NewClock returns a clock reading wall time from now (time.Now when nil).
func NewClock(now func() time.Time) *Clock {
	if now == nil {
		now = time.Now
	}
	return &Clock{now: now}
}

// Now returns a version greater than every version this clock issued or observed.
func (c *Clock) Now() Version {
	c.mu.Lock()
	defer c.mu.Unlock()
	wall := MakeVersion(c.now().UnixMilli(), 0)
	if wall > c.last {
		c.last = wall
	} else {
		c.last++
	}
	return c.last
}

// Observe merges a version seen from elsewhere (a peer's write, a stored record) so that
// later calls to Now order after it.
func (c *Clock) Observe(v Version) {
	c.mu.Lock()
	if v > c.last {
		c.last = v
	}
	c.mu.Unlock()
}

// Supersedes reports whether a last-writer-wins write stamped (v, sum) replaces the stored
// state (cur, curSum). The higher version wins; on equal versions (two nodes writing the same
// key in the same millisecond) the higher SHA-256 wins, so every node picks the same winner
// whatever order the writes arrive in. Identical states do not supersede each other.
func Supersedes(v Version, sum [32]byte, cur Version, curSum [32]byte) bool {
	if v != cur {
		return v > cur
	}
	return bytes.Compare(sum[:], curSum[:]) > 0
}
