package segment

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/fdpool"
)

func testPool(t *testing.T, size int, timeout time.Duration) *fdpool.Pool {
	t.Helper()
	p, err := fdpool.New(size, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// sealedRecords commits one record per segment (sealing after each), so every record needs a
// handle of its own.
func sealedRecords(t *testing.T, m *Manager, n, size int) ([]Location, [][]byte) {
	t.Helper()
	locs := make([]Location, n)
	bodies := make([][]byte, n)
	for i := range n {
		bodies[i] = testBody(uint64(100+i), size)
		locs[i] = commit(t, m, fmt.Sprintf("r%d", i), bodies[i])
		m.Seal()
	}
	for i := 1; i < n; i++ {
		if locs[i].Segment == locs[i-1].Segment {
			t.Fatalf("records %d and %d share segment %s", i-1, i, locs[i].Segment)
		}
	}
	return locs, bodies
}

// deletedSegmentFDs lists this process's descriptors on segment files of dir that have been
// unlinked: each keeps the file's space allocated.
func deletedSegmentFDs(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, dir) && strings.HasSuffix(target, "(deleted)") {
			out = append(out, target)
		}
	}
	return out
}

func openStream(t *testing.T, m *Manager, loc Location, name string) io.ReadCloser {
	t.Helper()
	r, err := m.OpenRecord(context.Background(), loc, []byte(name), 0, -1)
	if err != nil {
		t.Fatalf("OpenRecord %s: %v", name, err)
	}
	return r
}

func TestHandleCacheHitsAndLRU(t *testing.T) {
	pool := testPool(t, 16, 5*time.Second)
	m := openManager(t, Options{Pool: pool, HandleCacheSize: 3})
	locs, bodies := sealedRecords(t, m, 5, 2000)
	base := m.HandleStats()

	for range 3 {
		mustRead(t, m, locs[0], "r0", bodies[0])
	}
	st := m.HandleStats()
	if st.Misses-base.Misses != 1 || st.Hits-base.Hits != 2 || st.Open != 1 || st.Cached != 1 {
		t.Fatalf("three reads of one segment: %+v (base %+v), want 1 miss, 2 hits, 1 open", st, base)
	}
	for i := 1; i < 5; i++ {
		mustRead(t, m, locs[i], fmt.Sprintf("r%d", i), bodies[i])
	}
	st = m.HandleStats()
	if st.Cached != 3 || st.Open != 3 || st.Evictions != 2 || st.Capacity != 3 {
		t.Fatalf("after five segments with a cache of 3: %+v", st)
	}
	// One descriptor for the directory plus the three cached handles; the sealed segments'
	// write handles are closed.
	if pool.InUse() != 4 {
		t.Fatalf("pool in use %d, want 4 (directory + 3 cached handles)", pool.InUse())
	}
	// r0 was the least recently used: evicted, so reading it misses again.
	mustRead(t, m, locs[0], "r0", bodies[0])
	if got := m.HandleStats(); got.Misses != st.Misses+1 {
		t.Fatalf("re-reading an evicted segment: %+v", got)
	}
	if n := m.TrimHandles(); n != 3 {
		t.Fatalf("TrimHandles closed %d, want 3", n)
	}
	if st := m.HandleStats(); st.Open != 0 || st.Cached != 0 || pool.InUse() != 1 {
		t.Fatalf("after trim: %+v, pool in use %d", st, pool.InUse())
	}
}

// An evicted or removed segment's handle stays open for the readers still using it and closes
// with the last of them.
func TestHandleOutlivesEvictionAndRemoval(t *testing.T) {
	pool := testPool(t, 16, 5*time.Second)
	m := openManager(t, Options{Pool: pool, HandleCacheSize: 1})
	locs, bodies := sealedRecords(t, m, 3, 300<<10) // streamed, not read whole

	ra := openStream(t, m, locs[0], "r0")
	half := make([]byte, 150<<10)
	if _, err := io.ReadFull(ra, half); err != nil {
		t.Fatal(err)
	}
	mustRead(t, m, locs[1], "r1", bodies[1]) // evicts r0's handle from the one-slot cache
	if st := m.HandleStats(); st.Cached != 1 || st.Open != 2 || st.Evictions != 1 {
		t.Fatalf("r0 evicted while read: %+v, want 1 cached, 2 open", st)
	}
	rest, err := io.ReadAll(ra)
	if err != nil || !bytes.Equal(append(half, rest...), bodies[0]) {
		t.Fatalf("reading on through an evicted handle: %v", err)
	}
	if err := ra.Close(); err != nil {
		t.Fatal(err)
	}
	if st := m.HandleStats(); st.Open != 1 {
		t.Fatalf("evicted handle not closed after its reader: %+v", st)
	}

	// Removal while a reader is in the middle of the record.
	rc := openStream(t, m, locs[2], "r2")
	if _, err := io.ReadFull(rc, half); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(locs[2].Segment); err != nil {
		t.Fatal(err)
	}
	if got := deletedSegmentFDs(t, m.opts.Dir); len(got) != 1 {
		t.Fatalf("descriptors on removed segments while a reader uses one: %v", got)
	}
	rest, err = io.ReadAll(rc)
	if err != nil || !bytes.Equal(append(half, rest...), bodies[2]) {
		t.Fatalf("reading on after the segment was removed: %v", err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if got := deletedSegmentFDs(t, m.opts.Dir); len(got) != 0 {
		t.Fatalf("a removed segment is still held open after its last reader: %v", got)
	}
	if _, err := readRecord(m, locs[2], "r2", 0, -1); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("reading a removed segment = %v, want ErrCorrupt (file missing)", err)
	}
	// A cached, idle handle of a removed segment closes at once.
	mustRead(t, m, locs[1], "r1", bodies[1])
	if err := m.Remove(locs[1].Segment); err != nil {
		t.Fatal(err)
	}
	if got := deletedSegmentFDs(t, m.opts.Dir); len(got) != 0 {
		t.Fatalf("removing a segment kept its idle cached handle open: %v", got)
	}
	if st := m.HandleStats(); st.Open != 0 || st.Cached != 0 || pool.InUse() != 1 {
		t.Fatalf("after removals: %+v, pool in use %d (want only the directory)", st, pool.InUse())
	}
}

func TestExhaustedPoolFailsBusyAndRecovers(t *testing.T) {
	pool := testPool(t, 4, 50*time.Millisecond)
	m := openManager(t, Options{Pool: pool, HandleCacheSize: 1})
	locs, bodies := sealedRecords(t, m, 5, 300<<10)
	// The directory holds one slot; three streaming readers on three segments hold the rest.
	var readers []io.ReadCloser
	for i := range 3 {
		readers = append(readers, openStream(t, m, locs[i], fmt.Sprintf("r%d", i)))
	}
	if pool.InUse() != 4 {
		t.Fatalf("pool in use %d, want 4", pool.InUse())
	}
	_, err := readRecord(m, locs[3], "r3", 0, -1)
	if !errors.Is(err, storage.ErrBusy) || errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("read with every descriptor in use = %v, want ErrBusy", err)
	}
	if pool.Timeouts() != 1 {
		t.Fatalf("pool timeouts %d, want 1", pool.Timeouts())
	}
	// The cached segment (the last opened) needs no new descriptor: it is still served.
	mustRead(t, m, locs[2], "r2", bodies[2])
	// Writing needs a descriptor for a new active segment: busy too, nothing written.
	before := m.TotalBytes()
	if _, err := tryCommit(context.Background(), m, "w", testBody(9, 100)); !errors.Is(err, storage.ErrBusy) {
		t.Fatalf("commit with every descriptor in use = %v, want ErrBusy", err)
	}
	if m.TotalBytes() != before {
		t.Fatalf("a busy commit wrote %d bytes", m.TotalBytes()-before)
	}
	for i, r := range readers {
		if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, bodies[i]) {
			t.Fatalf("reader %d: %v", i, err)
		}
		_ = r.Close()
	}
	mustRead(t, m, locs[3], "r3", bodies[3])
	mustRead(t, m, locs[4], "r4", bodies[4])
	commit(t, m, "w", testBody(9, 100))
}

// Idle cached handles never make anyone wait: a checkout closes one instead, and a handle that
// falls idle while others wait is closed at once.
func TestIdleHandlesGiveWay(t *testing.T) {
	pool := testPool(t, 4, time.Minute)
	m := openManager(t, Options{Pool: pool, HandleCacheSize: 3})
	locs, bodies := sealedRecords(t, m, 4, 300<<10) // streamed: a reader holds its handle
	for i := range 3 {
		mustRead(t, m, locs[i], fmt.Sprintf("r%d", i), bodies[i])
	}
	if pool.InUse() != 4 {
		t.Fatalf("pool in use %d, want 4 (directory + 3 idle cached handles)", pool.InUse())
	}
	ev := m.HandleStats().Evictions
	// A new active segment needs a slot: the least recently used idle handle gives way.
	commit(t, m, "w", testBody(1, 100))
	if st := m.HandleStats(); st.Evictions != ev+1 || st.Cached != 2 {
		t.Fatalf("commit on a pool full of idle handles: %+v", st)
	}
	m.Seal() // closes the write handle
	if pool.Timeouts() != 0 {
		t.Fatal("a checkout timed out although idle handles could be closed")
	}

	// Now fill the pool with handles in use, and queue a reader.
	if n := m.TrimHandles(); n != 2 {
		t.Fatalf("trimmed %d", n)
	}
	ra := openStream(t, m, locs[0], "r0")
	rb := openStream(t, m, locs[1], "r1")
	rc := openStream(t, m, locs[2], "r2")
	if pool.InUse() != 4 {
		t.Fatalf("pool in use %d, want 4", pool.InUse())
	}
	done := make(chan error, 1)
	go func() {
		_, err := readRecord(m, locs[3], "r3", 0, -1)
		done <- err
	}()
	testsupport.WaitFor(t, "the reader to queue for a descriptor", 20*time.Second, func() bool { return pool.Waiters() == 1 })
	// rc's handle is cached; once its reader is done it is idle, and with a waiter queued it
	// is closed rather than kept.
	_ = rc.Close()
	if err := <-done; err != nil {
		t.Fatalf("queued reader after a handle fell idle: %v", err)
	}
	_ = ra.Close()
	_ = rb.Close()
}

func TestHandleCacheDisabledAndValidated(t *testing.T) {
	pool := testPool(t, 4, time.Second)
	if _, err := Open(Options{Dir: t.TempDir(), Pool: pool, HandleCacheSize: 4}); err == nil {
		t.Fatal("Open accepted a handle cache as large as the pool")
	}
	if pool.InUse() != 0 {
		t.Fatalf("a refused Open kept %d descriptors", pool.InUse())
	}
	m := openManager(t, Options{Pool: pool, HandleCacheSize: -1})
	loc := commit(t, m, "x", testBody(1, 1000))
	for range 3 {
		mustRead(t, m, loc, "x", testBody(1, 1000))
	}
	if st := m.HandleStats(); st.Misses != 3 || st.Hits != 0 || st.Open != 0 || st.Capacity != 0 {
		t.Fatalf("disabled cache: %+v", st)
	}
	// Derived size: a quarter of the pool, at least one, below the pool.
	m2 := openManager(t, Options{Pool: testPool(t, 2, time.Second)})
	if c := m2.HandleStats().Capacity; c != 1 {
		t.Fatalf("derived cache size for a pool of 2 = %d, want 1", c)
	}
	m3 := openManager(t, Options{})
	if c := m3.HandleStats().Capacity; c != DefaultHandleCacheSize {
		t.Fatalf("derived cache size for the default pool = %d, want %d", c, DefaultHandleCacheSize)
	}
}

// Readers on many segments race removals: every read either returns the exact body or, for a
// removed segment, ErrCorrupt (missing file); afterwards no descriptor is left behind.
func TestConcurrentReadsAndRemovals(t *testing.T) {
	pool := testPool(t, 12, 10*time.Second)
	m := openManager(t, Options{Pool: pool, HandleCacheSize: 4})
	const n = 24
	locs := make([]Location, n)
	bodies := make([][]byte, n)
	for i := range n {
		size := 3000
		if i%3 == 0 {
			size = 200 << 10 // streamed
		}
		bodies[i] = testBody(uint64(i), size)
		locs[i] = commit(t, m, fmt.Sprintf("r%d", i), bodies[i])
		m.Seal()
	}
	var removed sync.Map
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 300 {
				i := rng.IntN(n)
				got, err := readRecord(m, locs[i], fmt.Sprintf("r%d", i), 0, -1)
				switch {
				case err == nil:
					if !bytes.Equal(got, bodies[i]) {
						t.Errorf("record %d: wrong bytes", i)
						return
					}
				case errors.Is(err, storage.ErrCorrupt):
					if _, ok := removed.Load(i); !ok {
						t.Errorf("record %d of a live segment: %v", i, err)
						return
					}
				default:
					t.Errorf("record %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; i < n; i += 2 {
			removed.Store(i, true)
			if err := m.Remove(locs[i].Segment); err != nil {
				t.Errorf("remove %d: %v", i, err)
				return
			}
			time.Sleep(time.Millisecond) // spread the removals over the readers' run
		}
	})
	wg.Wait()
	st := m.HandleStats()
	if st.Open != int64(st.Cached) || pool.InUse() != 1+st.Cached {
		t.Fatalf("after the run: %+v, pool in use %d: descriptors leaked", st, pool.InUse())
	}
	if got := deletedSegmentFDs(t, m.opts.Dir); len(got) != 0 {
		t.Fatalf("removed segments still open: %v", got)
	}
}

func TestReserveRefusesWritesBeforeTheyHappen(t *testing.T) {
	dir := t.TempDir()
	probe := openManager(t, Options{Dir: filepath.Join(dir, "probe")})
	free, err := probe.FreeBytes()
	if err != nil || free <= 0 {
		t.Fatalf("FreeBytes = %d, %v", free, err)
	}
	// A reserve above the free space: every write must be refused, before any byte lands.
	m := openManager(t, Options{Dir: filepath.Join(dir, "full"), SpillThreshold: 64 << 10, ReserveBytes: free + 1<<40})
	for _, size := range []int{100, 1 << 20} {
		_, err := tryCommit(context.Background(), m, "x", testBody(1, size))
		if !errors.Is(err, storage.ErrInsufficientStorage) {
			t.Fatalf("commit of %d bytes over the reserve = %v, want ErrInsufficientStorage", size, err)
		}
	}
	if m.TotalBytes() != 0 || len(m.Segments()) != 0 {
		t.Fatalf("refused writes left %d bytes in %d segments", m.TotalBytes(), len(m.Segments()))
	}
	if left, _ := filepath.Glob(filepath.Join(m.opts.TmpDir, "*")); len(left) != 0 {
		t.Fatalf("refused writes left staging files: %v", left)
	}
	if err := m.CheckRoom(0); !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("CheckRoom = %v", err)
	}
	// A reserve that fits lets the same writes through.
	ok := openManager(t, Options{Dir: filepath.Join(dir, "ok"), SpillThreshold: 64 << 10, ReserveBytes: 1 << 20})
	for _, size := range []int{100, 1 << 20} {
		loc := commit(t, ok, fmt.Sprintf("x%d", size), testBody(1, size))
		mustRead(t, ok, loc, fmt.Sprintf("x%d", size), testBody(1, size))
	}
}
