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
// Callers decide through Replaces, which applies this to the last-writer-wins kinds.
func Supersedes(v Version, sum [32]byte, cur Version, curSum [32]byte) bool {
	if v != cur {
		return v > cur
	}
	return bytes.Compare(sum[:], curSum[:]) > 0
}

// Copy is one node's state of one key as the conflict rule compares it: the version and
// body digest of an object, or of an evicted stub (Evicted: the body was dropped to stay in
// the disk budget, the metadata is kept).
type Copy struct {
	Version Version
	SHA256  [32]byte
	Evicted bool
}

// Replaces is the cluster's conflict rule (SPEC §5), the one place it is written down: it
// reports whether a copy in arriving from elsewhere takes the place of the stored copy cur of
// a key of kind k. The outbox apply (a peer's push), anti-entropy, bootstrap, read-through
// and corrupt-record repair all store a peer's copy with its origin's version through Put or
// ApplyStub, which decide with Replaces, and the sweep uses it to choose what to pull, so
// every node settles on the same copy whatever order copies reach it in.
//
// Keyvalue documents and action results (LastWriterWins) keep the last writer: the higher
// version, equal versions settling on the higher SHA-256 (Supersedes). A stub keeps its
// version: an older copy does not displace it, one at its version or newer fills it.
//
// Every other kind is immutable and keeps the cluster-wide first writer: a different body
// with a lower version, or an equal version and a lower SHA-256, replaces the stored body.
// Once every node has seen every copy, all of them hold the one with the lowest (version,
// SHA-256). An identical body never replaces another whatever the versions (the copies are
// the same artifact, and anti-entropy's digests do not include immutable objects' versions
// for that reason). A stub is no body: any body fills it, while a stub never displaces a
// body (a key must not vanish from the cluster because one node evicted an older copy);
// between two stubs the same rule picks one, so their digests agree.
//
// A node's own client writes are stamped by its clock after everything it has seen for the
// key, so for an immutable key they never replace a stored body: one node keeps its first
// writer. Replaces is false for identical copies.
func Replaces(k Kind, in, cur Copy) bool {
	if k.LastWriterWins() {
		if cur.Evicted && !in.Evicted {
			return !Supersedes(cur.Version, cur.SHA256, in.Version, in.SHA256)
		}
		return Supersedes(in.Version, in.SHA256, cur.Version, cur.SHA256)
	}
	switch {
	case cur.Evicted && !in.Evicted:
		return true
	case in.Evicted && !cur.Evicted:
		return false
	case in.SHA256 == cur.SHA256:
		return false
	}
	return Supersedes(cur.Version, cur.SHA256, in.Version, in.SHA256)
}

// SameObject reports whether two copies are the same object as anti-entropy's digests see it
// (storage.Index.BucketDigests): the same body, and for last-writer-wins kinds the same
// version; a stub and an object of it are the same. Anti-entropy never pulls a copy that is
// the same object as the local one, so an evicted object is not pulled back.
func SameObject(k Kind, a, b Copy) bool {
	return a.SHA256 == b.SHA256 && (!k.LastWriterWins() || a.Version == b.Version)
}

// MayReplace reports whether some body written at version v could replace cur (Replaces with
// the most favourable SHA-256), so a write that cannot win is answered without reading its
// body.
func MayReplace(k Kind, v Version, cur Copy) bool {
	var best [32]byte // the lowest SHA-256 is the best an immutable write can offer
	if k.LastWriterWins() {
		for i := range best {
			best[i] = 0xff
		}
	}
	return Replaces(k, Copy{Version: v, SHA256: best}, cur)
}
