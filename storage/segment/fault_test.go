package segment

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/kuracache/kura/storage"
)

// ENOSPC is tested two ways: deterministically, by injecting errors through fileOps at exact
// points (a partial pwrite, a failed fdatasync, a staging write), and for real on a tiny tmpfs
// mounted for the test (TestRealDiskFull; skipped where mounting is not permitted).

// faultyOps wraps the real file operations; each armed fault fires once.
type faultyOps struct {
	writeAtErr  atomic.Pointer[error] // next pwrite writes half its bytes, then fails
	writeErr    atomic.Pointer[error] // next staging write fails
	datasyncErr atomic.Pointer[error] // next fdatasync fails
	renameErr   atomic.Pointer[error] // every rename between directories fails (a staging file's move)
	syncDirErr  atomic.Pointer[error] // next directory fsync fails
	removeErr   atomic.Pointer[error] // next removal of a segment file fails
}

func (f *faultyOps) ops() *fileOps {
	return &fileOps{
		writeAt: func(file *os.File, p []byte, off int64) (int, error) {
			if e := f.writeAtErr.Swap(nil); e != nil {
				n, err := file.WriteAt(p[:len(p)/2], off)
				if err != nil {
					return n, err
				}
				return n, *e
			}
			return file.WriteAt(p, off)
		},
		write: func(file *os.File, p []byte) (int, error) {
			if e := f.writeErr.Swap(nil); e != nil {
				return 0, *e
			}
			return file.Write(p)
		},
		datasync: func(file *os.File) error {
			if e := f.datasyncErr.Swap(nil); e != nil {
				return *e
			}
			return fdatasync(file)
		},
		rename: func(oldpath, newpath string) error {
			if e := f.renameErr.Load(); e != nil && filepath.Dir(oldpath) != filepath.Dir(newpath) {
				return *e
			}
			return os.Rename(oldpath, newpath)
		},
		syncDir: func(d *os.File) error {
			if e := f.syncDirErr.Swap(nil); e != nil {
				return *e
			}
			return d.Sync()
		},
		remove: func(path string) error {
			if strings.HasSuffix(path, segSuffix) {
				if e := f.removeErr.Swap(nil); e != nil {
					return *e
				}
			}
			return os.Remove(path)
		},
	}
}

func arm(p *atomic.Pointer[error], err error) { p.Store(&err) }

func TestAppendENOSPC(t *testing.T) {
	var faults faultyOps
	m := openManager(t, Options{ops: faults.ops()})
	a := commit(t, m, "a", testBody(1, 3000))

	arm(&faults.writeAtErr, syscall.ENOSPC)
	_, err := tryCommit(context.Background(), m, "b", testBody(2, 3000))
	if !errors.Is(err, storage.ErrInsufficientStorage) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("commit on a full disk = %v, want ErrInsufficientStorage", err)
	}
	// The half-written record was cut back: the segment ends where a ended.
	if fi, err := os.Stat(m.segPath(a.Segment)); err != nil || fi.Size() != a.RecordSize {
		t.Fatalf("segment not cut back after a partial write: %v size %d, want %d", err, fi.Size(), a.RecordSize)
	}
	// Once there is room the same segment continues right after a.
	c := commit(t, m, "c", testBody(3, 3000))
	if c.Segment != a.Segment || c.Offset != a.RecordSize {
		t.Fatalf("after ENOSPC the next record should continue the segment: %+v", c)
	}
	mustRead(t, m, a, "a", testBody(1, 3000))
	mustRead(t, m, c, "c", testBody(3, 3000))

	// Another I/O error retires the segment instead.
	arm(&faults.writeAtErr, syscall.EIO)
	_, err = tryCommit(context.Background(), m, "d", testBody(4, 3000))
	if !errors.Is(err, syscall.EIO) || errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("commit on EIO = %v", err)
	}
	e := commit(t, m, "e", testBody(5, 3000))
	if e.Segment == a.Segment || e.Offset != 0 {
		t.Fatalf("after EIO the next record must start a new segment: %+v", e)
	}
	mustRead(t, m, c, "c", testBody(3, 3000))
	mustRead(t, m, e, "e", testBody(5, 3000))
	checkAccounting(t, m)
}

func TestSyncENOSPC(t *testing.T) {
	var faults faultyOps
	m := openManager(t, Options{ops: faults.ops()})
	a := commit(t, m, "a", testBody(1, 1000))

	// Every commit waiting on the failed sync fails; none of them may be referenced.
	arm(&faults.datasyncErr, syscall.ENOSPC)
	var wg sync.WaitGroup
	var failed, succeeded atomic.Int32
	for i := range 8 {
		wg.Go(func() {
			_, err := tryCommit(context.Background(), m, fmt.Sprintf("b%d", i), testBody(uint64(10+i), 1000))
			switch {
			case err == nil:
				succeeded.Add(1)
			case errors.Is(err, storage.ErrInsufficientStorage):
				failed.Add(1)
			default:
				t.Errorf("commit b%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if failed.Load() == 0 {
		t.Fatal("no commit saw the failed sync")
	}
	// The segment whose sync failed takes no more appends.
	for _, s := range m.Segments() {
		if s.ID == a.Segment && s.Active {
			t.Fatal("segment with a failed sync is still active")
		}
	}
	c := commit(t, m, "c", testBody(2, 1000))
	if c.Segment == a.Segment {
		t.Fatalf("record appended to a segment whose sync failed: %+v", c)
	}
	mustRead(t, m, a, "a", testBody(1, 1000))
	mustRead(t, m, c, "c", testBody(2, 1000))
	t.Logf("failed sync: %d commits failed with it, %d went to the next segment", failed.Load(), succeeded.Load())
}

func TestSpillENOSPC(t *testing.T) {
	var faults faultyOps
	m := openManager(t, Options{SpillThreshold: 4096, ops: faults.ops()})
	before := m.TotalBytes()

	// The disk fills while the body streams in.
	s, err := m.Stage(context.Background(), []byte("big"))
	if err != nil {
		t.Fatal(err)
	}
	arm(&faults.writeErr, syscall.ENOSPC)
	_, err = s.Write(testBody(1, stageBufferBytes+10_000))
	if !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("Write on a full disk = %v", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("Write after failure = %v, want the same error", err)
	}
	if _, err := s.Commit(context.Background()); !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("Commit after failed Write = %v", err)
	}
	assertNoStaging(t, m)

	// The disk fills when the record is synced at Commit.
	arm(&faults.datasyncErr, syscall.EDQUOT)
	if _, err := tryCommit(context.Background(), m, "big2", testBody(2, 100_000)); !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("Commit with failing sync = %v", err)
	}
	assertNoStaging(t, m)
	if m.TotalBytes() != before || len(m.Segments()) != 0 {
		t.Fatalf("failed spills left segments: %+v", m.Segments())
	}
	loc := commit(t, m, "big3", testBody(3, 100_000))
	mustRead(t, m, loc, "big3", testBody(3, 100_000))
	checkAccounting(t, m)
}

// TestSpillDirSyncFailsAndRemoveToo: a spilled record whose directory fsync fails is not
// acknowledged and its segment is removed; when the removal fails as well (found by
// TestReliabilityIOFaults with a disk that stays broken) the file is listed, so its bytes are
// counted and eviction can retire it, rather than sitting on disk unaccounted.
func TestSpillDirSyncFailsAndRemoveToo(t *testing.T) {
	var faults faultyOps
	m := openManager(t, Options{SpillThreshold: 4096, ops: faults.ops()})
	arm(&faults.syncDirErr, syscall.EIO)
	arm(&faults.removeErr, syscall.EIO)
	if _, err := tryCommit(context.Background(), m, "big", testBody(1, 50_000)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("commit with a failing directory fsync = %v", err)
	}
	if segs := m.Segments(); len(segs) != 1 || segs[0].Size != RecordSize(50_000, len("big")) {
		t.Fatalf("the unremovable unacknowledged segment is not listed: %+v", segs)
	}
	checkAccounting(t, m)
	loc := commit(t, m, "next", testBody(2, 50_000))
	mustRead(t, m, loc, "next", testBody(2, 50_000))
	checkAccounting(t, m)
}

func assertNoStaging(t *testing.T, m *Manager) {
	t.Helper()
	if left, _ := filepath.Glob(filepath.Join(m.opts.TmpDir, "*")); len(left) != 0 {
		t.Fatalf("staging files left: %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join(m.opts.Dir, "*.partial")); len(left) != 0 {
		t.Fatalf("partial copies left: %v", left)
	}
}

func TestCrossDeviceStagingInjected(t *testing.T) {
	var faults faultyOps
	arm(&faults.renameErr, &os.LinkError{Op: "rename", Err: syscall.EXDEV})
	m := openManager(t, Options{SpillThreshold: 4096, ops: faults.ops()})
	loc := commit(t, m, "big", testBody(1, 300_000))
	mustRead(t, m, loc, "big", testBody(1, 300_000))
	assertNoStaging(t, m)
	checkAccounting(t, m)
}

func TestCrossDeviceStagingReal(t *testing.T) {
	tmp, err := os.MkdirTemp("/dev/shm", "kseg-test-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	dir := t.TempDir()
	var a, b syscall.Stat_t
	if syscall.Stat(tmp, &a) != nil || syscall.Stat(dir, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm is on the same filesystem as the test directory")
	}
	m := openManager(t, Options{Dir: dir, TmpDir: tmp, SpillThreshold: 4096})
	loc := commit(t, m, "big", testBody(1, 2<<20))
	mustRead(t, m, loc, "big", testBody(1, 2<<20))
	assertNoStaging(t, m)
	checkAccounting(t, m)
}

// TestRealDiskFull fills a 2 MiB tmpfs until the kernel says ENOSPC, then frees a segment and
// writes again. It needs permission to mount (root in the dev container and CI).
func TestRealDiskFull(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	m, err := Open(Options{Dir: mnt + "/seg", TmpDir: mnt + "/tmp", TargetSegmentBytes: 256 << 10, SpillThreshold: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	type rec struct {
		loc  Location
		name string
		seed uint64
		size int
	}
	var acked []rec
	fill := func(size int) error {
		for i := 0; ; i++ {
			seed := uint64(len(acked))
			name := fmt.Sprintf("%d-%d", size, seed)
			loc, err := tryCommit(context.Background(), m, name, testBody(seed, size))
			if err != nil {
				return err
			}
			acked = append(acked, rec{loc, name, seed, size})
			if i > 10_000 {
				return errors.New("the 2 MiB tmpfs never filled")
			}
		}
	}
	if err := fill(8 << 10); !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("small records on a full disk: %v", err)
	}
	if err := fill(100 << 10); !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("spilled records on a full disk: %v", err)
	}
	assertNoStaging(t, m)
	full := len(acked)

	// Eviction frees the oldest sealed segment; writes work again.
	m.Seal()
	oldest := m.Segments()[0].ID
	if err := m.Remove(oldest); err != nil {
		t.Fatal(err)
	}
	var kept []rec
	for _, r := range acked {
		if r.loc.Segment != oldest {
			kept = append(kept, r)
		}
	}
	acked = kept
	loc := commit(t, m, "after", testBody(99, 8<<10))
	mustRead(t, m, loc, "after", testBody(99, 8<<10))
	for _, r := range acked {
		mustRead(t, m, r.loc, r.name, testBody(r.seed, r.size))
	}
	t.Logf("%d records fitted before ENOSPC; the %d outside the freed segment read back intact", full, len(acked))
}

// TestStagedDirectWrites covers the staging writer's edges: bodies whose ends fall on and
// around the aligned buffer's boundaries (the unaligned tail goes out after O_DIRECT is
// switched off), and a filesystem that takes the O_DIRECT flag but refuses a direct write
// with EINVAL (the write is repeated buffered and the record is intact).
func TestStagedDirectWrites(t *testing.T) {
	var faults faultyOps
	m := openManager(t, Options{SpillThreshold: 4096, ops: faults.ops()})
	sizes := []int{4097, directAlign * 3, stageBufferBytes - 1, stageBufferBytes, stageBufferBytes + 1, 3*stageBufferBytes + directAlign + 7}
	for i, n := range sizes {
		name := fmt.Sprintf("direct-%d", n)
		body := testBody(uint64(100+i), n)
		loc := commit(t, m, name, body)
		mustRead(t, m, loc, name, body)
	}
	f, err := os.CreateTemp(t.TempDir(), "direct")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if setDirect(f, true) != nil {
		t.Skip("the test directory's filesystem has no O_DIRECT; the EINVAL fallback cannot be reached")
	}
	arm(&faults.writeErr, syscall.EINVAL)
	body := testBody(7, 2*stageBufferBytes+123)
	loc := commit(t, m, "refused-direct", body)
	mustRead(t, m, loc, "refused-direct", body)
	if faults.writeErr.Load() != nil {
		t.Fatal("the armed EINVAL never fired: no staging write happened")
	}
	checkAccounting(t, m)
	assertNoStaging(t, m)
}
