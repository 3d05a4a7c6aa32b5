package segment

import (
	"os"
	"sync"
	"syscall"
	"time"
)

// The verified-record set lets a hot large record be served without re-reading its bytes in
// user space: once every block of a record has been read and checked against its CRC by this
// process, later reads within VerifiedTTL trust the file (pread straight into the caller's
// buffer, or sendfile to a socket) instead of checking each block again. Checking costs a
// pread copy and a CRC pass per byte, about half of the server's CPU for a large GET.
//
// The rule (docs/segments.md, "Verified records"): a mark is only trusted while the segment
// file is provably unchanged since the check — same inode, size and modification time, looked
// up with one fstat per read — and for at most VerifiedTTL. Anything that writes the file
// through the kernel (a stray process, a test flipping a byte, our own appends to the active
// segment) moves its mtime, so the next read verifies again and catches the damage. A check
// made less than mtimeGranularity after the file's last modification is not remembered, so a
// write landing within the same coarse timestamp tick cannot go unnoticed. What the rule
// cannot see is a change beneath the filesystem (bit rot on the medium) after the check: such
// bytes could be served for at most VerifiedTTL, and only if the kernel dropped the pages from
// its cache and read them back from the disk in that window. Clients that verify digests
// (Bazel does for CAS downloads) still catch it; the first read after the TTL drops the record.
const (
	// VerifiedTTL bounds how long one successful check of a record is trusted.
	VerifiedTTL = 5 * time.Minute
	// verifiedEntries bounds the set: two generations of at most half this many records each
	// (~100 bytes per entry). Only records read as a stream (above wholeRecordBytes) are
	// entered, so 16 Ki entries cover at least 2 GiB of hot data.
	verifiedEntries = 16 << 10
	// mtimeGranularity is the coarsest file timestamp granularity the rule allows for: Linux
	// stamps writes with its coarse clock (a tick of 1-10 ms) and the coarsest filesystems a
	// cache would run on (ext3, ext4 with small inodes) keep whole seconds. A check must end
	// more than this after the last modification to be remembered.
	mtimeGranularity = time.Second
)

type verifiedKey struct {
	seg ID
	off int64
}

// fileState identifies a file's content as far as the kernel tells: a write or truncate
// changes mtime and possibly size; a replaced file has another inode.
type fileState struct {
	dev, ino uint64
	size     int64
	mtime    int64 // Unix nanoseconds
}

func statFile(f *os.File) (fileState, bool) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return fileState{}, false
	}
	return fileState{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano()}, true
}

type verifiedMark struct {
	recordSize int64
	file       fileState
	at         time.Time // when the check finished (monotonic)
}

// verifiedSet is the bounded set of records checked since this Manager opened. Two
// generations give an LRU-like bound without a list: lookups promote into cur; when cur is
// full it becomes prev and the old prev is dropped.
type verifiedSet struct {
	mu        sync.Mutex
	cur, prev map[verifiedKey]verifiedMark
	half      int
	ttl       time.Duration
	disabled  bool
}

func newVerifiedSet(entries int, ttl time.Duration) *verifiedSet {
	if entries <= 0 || ttl <= 0 {
		return &verifiedSet{disabled: true}
	}
	half := max(entries/2, 1)
	return &verifiedSet{cur: make(map[verifiedKey]verifiedMark), prev: map[verifiedKey]verifiedMark{}, half: half, ttl: ttl}
}

// trusted reports whether loc was checked within the TTL and the file it was checked in is
// still in state st.
func (v *verifiedSet) trusted(loc Location, st fileState) bool {
	if v.disabled {
		return false
	}
	k := verifiedKey{loc.Segment, loc.Offset}
	v.mu.Lock()
	defer v.mu.Unlock()
	m, ok := v.cur[k]
	if !ok {
		if m, ok = v.prev[k]; !ok {
			return false
		}
		delete(v.prev, k)
		v.insertLocked(k, m)
	}
	if m.recordSize != loc.RecordSize || m.file != st || time.Since(m.at) > v.ttl {
		delete(v.cur, k)
		return false
	}
	return true
}

// mark remembers that every block of loc was just checked in a file now in state st.
func (v *verifiedSet) mark(loc Location, st fileState) {
	if v.disabled {
		return
	}
	now := time.Now()
	if now.Sub(time.Unix(0, st.mtime)) <= mtimeGranularity {
		return // a write in the same timestamp tick would leave mtime as it is
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.insertLocked(verifiedKey{loc.Segment, loc.Offset}, verifiedMark{recordSize: loc.RecordSize, file: st, at: now})
}

func (v *verifiedSet) insertLocked(k verifiedKey, m verifiedMark) {
	if len(v.cur) >= v.half {
		v.prev, v.cur = v.cur, make(map[verifiedKey]verifiedMark, v.half)
	}
	v.cur[k] = m
}

// forget drops every mark of segment id (it was removed).
func (v *verifiedSet) forget(id ID) {
	if v.disabled {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, g := range []map[verifiedKey]verifiedMark{v.cur, v.prev} {
		for k := range g {
			if k.seg == id {
				delete(g, k)
			}
		}
	}
}
