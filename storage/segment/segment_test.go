package segment

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

func TestRoundTripSizes(t *testing.T) {
	m := openManager(t, Options{})
	sizes := []int{0, 1, BlockSize - 1, BlockSize, BlockSize + 1, DefaultSpillThreshold, DefaultSpillThreshold + 1, 5 << 20}
	locs := make([]Location, len(sizes))
	bodies := make([][]byte, len(sizes))
	for i, n := range sizes {
		bodies[i] = testBody(uint64(i), n)
		name := fmt.Sprintf("tenant\x00ns\x00cas\x00size-%d", n)
		locs[i] = commit(t, m, name, bodies[i])
		loc := locs[i]
		if loc.BodySize != int64(n) || loc.RecordSize != RecordSize(int64(n), len(name)) {
			t.Fatalf("size %d: location %+v has wrong sizes", n, loc)
		}
		spilled := int64(n) > DefaultSpillThreshold
		if spilled && loc.Offset != 0 {
			t.Fatalf("size %d: a spilled record must start its own segment, got %+v", n, loc)
		}
	}
	// Records are verified only after all were written, so a later append that clobbered an
	// earlier record would show.
	for i, n := range sizes {
		mustRead(t, m, locs[i], fmt.Sprintf("tenant\x00ns\x00cas\x00size-%d", n), bodies[i])
	}
	// The in-memory records share the active segment back to back.
	if locs[1].Segment != locs[0].Segment || locs[1].Offset != locs[0].Offset+locs[0].RecordSize {
		t.Fatalf("small records are not contiguous: %+v then %+v", locs[0], locs[1])
	}
	if locs[6].Segment == locs[5].Segment || locs[7].Segment == locs[6].Segment {
		t.Fatalf("spilled records must get segments of their own: %+v %+v %+v", locs[5], locs[6], locs[7])
	}
	st := m.Stats()
	if st.Appends != 6 || st.Spills != 2 {
		t.Fatalf("stats %+v, want 6 appends and 2 spills", st)
	}
	checkAccounting(t, m)
}

// checkAccounting compares the in-memory segment list with the directory.
func checkAccounting(t *testing.T, m *Manager) {
	t.Helper()
	segs := m.Segments()
	var sum int64
	for i, s := range segs {
		if i > 0 && segs[i-1].ID >= s.ID {
			t.Fatalf("segments not sorted by ID: %+v", segs)
		}
		fi, err := os.Stat(m.segPath(s.ID))
		if err != nil {
			t.Fatalf("segment %s listed but: %v", s.ID, err)
		}
		if fi.Size() != s.Size {
			t.Fatalf("segment %s: listed size %d, file size %d", s.ID, s.Size, fi.Size())
		}
		sum += s.Size
	}
	if got := m.TotalBytes(); got != sum {
		t.Fatalf("TotalBytes = %d, segments sum to %d", got, sum)
	}
	files, _ := filepath.Glob(filepath.Join(m.opts.Dir, "*.seg"))
	if len(files) != len(segs) {
		t.Fatalf("%d segment files on disk, %d listed", len(files), len(segs))
	}
}

func TestRanges(t *testing.T) {
	m := openManager(t, Options{})
	for _, size := range []int{100 << 10, 200 << 10, 5<<20 + 123} {
		body := testBody(uint64(size), size)
		name := fmt.Sprintf("range-%d", size)
		loc := commit(t, m, name, body)
		n := int64(size)
		offsets := []int64{0, 1, BlockSize - 1, BlockSize, BlockSize + 1, 2 * BlockSize, n - BlockSize, n - 1, n, n + 10}
		lengths := []int64{-1, 0, 1, BlockSize - 1, BlockSize, BlockSize + 1, 3*BlockSize + 5, n + 1}
		for _, off := range offsets {
			for _, length := range lengths {
				got, err := readRecord(m, loc, name, off, length)
				if err != nil {
					t.Fatalf("size %d range %d+%d: %v", size, off, length, err)
				}
				lo := min(off, n)
				hi := n
				if length >= 0 {
					hi = min(lo+length, n)
				}
				if !bytes.Equal(got, body[lo:hi]) {
					t.Fatalf("size %d range %d+%d: got %d bytes, want %d", size, off, length, len(got), hi-lo)
				}
			}
		}
		// The reader must follow io.Reader's rules with odd buffer sizes too.
		r, err := m.OpenRecord(context.Background(), loc, []byte(name), BlockSize-7, 2*BlockSize+11)
		if err != nil {
			t.Fatal(err)
		}
		if err := iotest.TestReader(r, body[BlockSize-7:min(3*BlockSize+4, size)]); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		r.Close()
	}
	if _, err := m.OpenRecord(context.Background(), Location{}, nil, -1, 1); err == nil {
		t.Fatal("negative offset accepted")
	}
}

func TestConcurrentCommitAndRead(t *testing.T) {
	m := openManager(t, Options{TargetSegmentBytes: 512 << 10, SpillThreshold: 64 << 10})
	const workers, perWorker = 24, 30
	type rec struct {
		loc  Location
		name string
		body []byte
	}
	var (
		mu   sync.Mutex
		recs []rec
		wg   sync.WaitGroup
	)
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				seed := uint64(w*1000 + i)
				size := int(seed * 7919 % (48 << 10))
				if i%10 == 9 {
					size = 64<<10 + int(seed%(100<<10)) // spilled
				}
				name := fmt.Sprintf("w%d/r%d", w, i)
				body := testBody(seed, size)
				loc, err := tryCommit(context.Background(), m, name, body)
				if err != nil {
					errc <- fmt.Errorf("commit %s: %w", name, err)
					return
				}
				// Read back something committed by anybody, concurrently with the appends.
				mu.Lock()
				recs = append(recs, rec{loc, name, body})
				other := recs[int(seed)%len(recs)]
				mu.Unlock()
				got, err := readRecord(m, other.loc, other.name, 0, -1)
				if err != nil || !bytes.Equal(got, other.body) {
					errc <- fmt.Errorf("read %s back: %v (equal=%v)", other.name, err, bytes.Equal(got, other.body))
					return
				}
			}
		})
	}
	// Seal concurrently as eviction would.
	stop := make(chan struct{})
	sealed := make(chan struct{})
	go func() {
		defer close(sealed)
		for {
			select {
			case <-stop:
				return
			default:
				m.Seal()
				_ = m.Segments()
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-sealed
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if len(recs) != workers*perWorker {
		t.Fatalf("%d records committed, want %d", len(recs), workers*perWorker)
	}
	// Every location must be distinct and readable after all writes finished.
	seen := map[Location]bool{}
	for _, r := range recs {
		if seen[r.loc] {
			t.Fatalf("location %+v handed out twice", r.loc)
		}
		seen[r.loc] = true
		mustRead(t, m, r.loc, r.name, r.body)
	}
	checkAccounting(t, m)
	st := m.Stats()
	t.Logf("%d commits (%d appends, %d spills) took %d syncs; %d segments", len(recs), st.Appends, st.Spills, st.Syncs, len(m.Segments()))
}

// TestGroupCommitBatches proves that concurrent commits share one fdatasync: the first sync is
// held until every other committer has appended, so exactly one more sync covers them all.
func TestGroupCommitBatches(t *testing.T) {
	const committers = 64
	release := make(chan struct{})
	var syncCalls sync.Map
	ops := osFileOps
	ops.datasync = func(f *os.File) error {
		if _, loaded := syncCalls.LoadOrStore("first", true); !loaded {
			<-release
		}
		return fdatasync(f)
	}
	m := openManager(t, Options{ops: &ops})
	body := testBody(1, 1024)
	recSize := RecordSize(1024, len("gc-00"))
	var wg sync.WaitGroup
	locs := make([]Location, committers)
	errs := make([]error, committers)
	for i := range committers {
		wg.Go(func() {
			locs[i], errs[i] = tryCommit(context.Background(), m, fmt.Sprintf("gc-%02d", i), body)
		})
	}
	testsupport.WaitFor(t, "all committers to append", 20*time.Second, func() bool { return m.TotalBytes() == committers*recSize })
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		mustRead(t, m, locs[i], fmt.Sprintf("gc-%02d", i), body)
	}
	st := m.Stats()
	if st.Appends != committers || st.Syncs != 2 {
		t.Fatalf("stats %+v: want %d appends covered by exactly 2 syncs", st, committers)
	}
}

// TestGroupCommitRealDisk measures batching with the real fdatasync and no help from the test.
func TestGroupCommitRealDisk(t *testing.T) {
	m := openManager(t, Options{})
	const workers, perWorker = 32, 20
	var wg sync.WaitGroup
	body := testBody(2, 1024)
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				if _, err := tryCommit(context.Background(), m, fmt.Sprintf("%d-%d", w, i), body); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	st := m.Stats()
	t.Logf("%d concurrent 1 KiB commits used %d fdatasyncs (%.1f commits per sync)", st.Appends, st.Syncs, float64(st.Appends)/float64(st.Syncs))
	if st.Appends != workers*perWorker || st.Syncs >= st.Appends {
		t.Fatalf("stats %+v: concurrent commits did not share syncs", st)
	}
}

func TestCorruption(t *testing.T) {
	type part int
	const (
		inBody part = iota
		inTable
		inFooter
	)
	footerAt := func(loc Location, nameLen int) int64 { return loc.Offset + loc.RecordSize - footerLen(nameLen) }
	targets := []struct {
		what string
		part part
		// at returns the file offset to damage.
		at func(loc Location, nameLen int) int64
	}{
		{"body block 0", inBody, func(loc Location, _ int) int64 { return loc.Offset + 10 }},
		{"body block 1", inBody, func(loc Location, _ int) int64 { return loc.Offset + BlockSize + 5 }},
		{"last body byte", inBody, func(loc Location, _ int) int64 { return loc.Offset + loc.BodySize - 1 }},
		{"CRC table entry 1", inTable, func(loc Location, _ int) int64 { return loc.Offset + loc.BodySize + 4 + 2 }},
		{"footer magic", inFooter, footerAt},
		{"footer body size", inFooter, func(loc Location, n int) int64 { return footerAt(loc, n) + 12 }},
		{"footer sha", inFooter, func(loc Location, n int) int64 { return footerAt(loc, n) + 30 }},
		{"footer name", inFooter, func(loc Location, n int) int64 { return footerAt(loc, n) + footerHeadLen }},
		{"footer crc", inFooter, func(loc Location, _ int) int64 { return loc.Offset + loc.RecordSize - 6 }},
		{"footer length", inFooter, func(loc Location, _ int) int64 { return loc.Offset + loc.RecordSize - 1 }},
	}
	// Both read paths: a record read whole (small) and one streamed block by block.
	for _, size := range []int{2*BlockSize - 1000, 5*BlockSize - 7} {
		for _, tg := range targets {
			t.Run(fmt.Sprintf("%d/%s", size, tg.what), func(t *testing.T) {
				m := openManager(t, Options{})
				body := testBody(uint64(size), size)
				// Neighbours before and after, to check the damage stays contained.
				before := commit(t, m, "before", testBody(7, 1000))
				loc := commit(t, m, "victim", body)
				after := commit(t, m, "after", testBody(8, 1000))
				at := tg.at(loc, len("victim"))
				flipByte(t, m.segPath(loc.Segment), at)
				// firstBad is the first body byte that must not be handed out.
				var firstBad int64
				switch tg.part {
				case inBody:
					firstBad = (at - loc.Offset) / BlockSize * BlockSize
				case inTable:
					firstBad = (at - loc.Offset - loc.BodySize) / crcEntryLen * BlockSize
				}

				r, err := m.OpenRecord(context.Background(), loc, []byte("victim"), 0, -1)
				var got []byte
				if err == nil {
					got, err = io.ReadAll(r)
					r.Close()
				}
				if !errors.Is(err, storage.ErrCorrupt) {
					t.Fatalf("read after damaging %s: err = %v, want ErrCorrupt", tg.what, err)
				}
				if !strings.Contains(err.Error(), loc.Segment.String()) {
					t.Fatalf("error does not name the segment: %v", err)
				}
				if int64(len(got)) > firstBad || !bytes.Equal(got, body[:len(got)]) {
					t.Fatalf("returned %d bytes before the error; at most %d intact bytes allowed", len(got), firstBad)
				}
				if firstBad > 0 {
					// Blocks before the damage are still served by a range read.
					if prefix, err := readRecord(m, loc, "victim", 0, firstBad); err != nil || !bytes.Equal(prefix, body[:firstBad]) {
						t.Fatalf("intact prefix: %v", err)
					}
				}
				mustRead(t, m, before, "before", testBody(7, 1000))
				mustRead(t, m, after, "after", testBody(8, 1000))
			})
		}
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read byte at %d: %v", off, err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestMismatchedMetadata(t *testing.T) {
	m := openManager(t, Options{})
	small := commit(t, m, "small", testBody(1, 5000))
	large := commit(t, m, "large", testBody(2, 300<<10))
	for _, tc := range []struct {
		what string
		loc  Location
		name string
	}{
		{"wrong name (small)", small, "smalL"},
		{"wrong name (large)", large, "other"},
		{"longer name", small, "small-but-longer"},
		{"shifted offset", Location{small.Segment, small.Offset + 1, small.BodySize, small.RecordSize}, "small"},
		{"wrong body size", Location{small.Segment, small.Offset, small.BodySize - 4, small.RecordSize - 4}, "small"},
		{"inconsistent record size", Location{small.Segment, small.Offset, small.BodySize, small.RecordSize + 1}, "small"},
		{"past the end", Location{large.Segment, large.RecordSize, large.BodySize, large.RecordSize}, "large"},
		{"missing segment", Location{large.Segment + 100, 0, large.BodySize, large.RecordSize}, "large"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			got, err := readRecord(m, tc.loc, tc.name, 0, -1)
			if !errors.Is(err, storage.ErrCorrupt) || len(got) != 0 {
				t.Fatalf("err = %v (%d bytes), want ErrCorrupt and no bytes", err, len(got))
			}
		})
	}
	_, err := readRecord(m, Location{large.Segment + 100, 0, large.BodySize, large.RecordSize}, "large", 0, -1)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing segment error should also wrap fs.ErrNotExist: %v", err)
	}
}

func TestTornSegment(t *testing.T) {
	m := openManager(t, Options{})
	a := commit(t, m, "a", testBody(1, 10_000))
	b := commit(t, m, "b", testBody(2, 200<<10))
	m.Seal()
	if b.Segment != a.Segment {
		t.Fatalf("both records should share the active segment: %+v %+v", a, b)
	}
	if err := os.Truncate(m.segPath(b.Segment), b.Offset+b.RecordSize-3); err != nil {
		t.Fatal(err)
	}
	if _, err := readRecord(m, b, "b", 0, -1); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("torn record: err = %v, want ErrCorrupt", err)
	}
	// Torn in the middle of the body: the footer is gone entirely.
	if err := os.Truncate(m.segPath(b.Segment), b.Offset+BlockSize); err != nil {
		t.Fatal(err)
	}
	if _, err := readRecord(m, b, "b", 0, 10); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("torn record: err = %v, want ErrCorrupt", err)
	}
	mustRead(t, m, a, "a", testBody(1, 10_000))
}

func TestRollingAndSeal(t *testing.T) {
	const target = 10 << 10
	m := openManager(t, Options{TargetSegmentBytes: target})
	var locs []Location
	for i := range 45 { // 10 records fill a segment: end mid-segment
		locs = append(locs, commit(t, m, fmt.Sprintf("r%d", i), testBody(uint64(i), 1024)))
	}
	segs := m.Segments()
	if len(segs) < 3 {
		t.Fatalf("expected rolls, got %+v", segs)
	}
	for i, s := range segs {
		last := i == len(segs)-1
		if s.Active != last {
			t.Fatalf("only the newest segment may be active: %+v", segs)
		}
		if !last && s.Size < target {
			t.Fatalf("segment %s sealed before reaching the target: %+v", s.ID, segs)
		}
	}
	for i, loc := range locs {
		mustRead(t, m, loc, fmt.Sprintf("r%d", i), testBody(uint64(i), 1024))
	}
	m.Seal()
	if slices.ContainsFunc(m.Segments(), func(s SegmentInfo) bool { return s.Active }) {
		t.Fatal("Seal left an active segment")
	}
	next := commit(t, m, "next", []byte("x"))
	if next.Segment <= segs[len(segs)-1].ID || next.Offset != 0 {
		t.Fatalf("after Seal the next record must start a new segment, got %+v", next)
	}
	// A sealed file is never written again.
	info, _ := os.Stat(m.segPath(segs[len(segs)-1].ID))
	commit(t, m, "more", []byte("y"))
	if again, _ := os.Stat(m.segPath(segs[len(segs)-1].ID)); again.Size() != info.Size() {
		t.Fatal("sealed segment grew")
	}
	checkAccounting(t, m)
}

func TestRemove(t *testing.T) {
	m := openManager(t, Options{})
	small := commit(t, m, "small", testBody(1, 100))
	large := commit(t, m, "large", testBody(2, 3<<20))

	if err := m.Remove(small.Segment); !errors.Is(err, ErrActive) {
		t.Fatalf("Remove(active) = %v, want ErrActive", err)
	}
	if err := m.Remove(9999); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Remove(unknown) = %v, want fs.ErrNotExist", err)
	}
	// A reader opened before the removal keeps reading the whole record.
	r, err := m.OpenRecord(context.Background(), large, []byte("large"), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	firstChunk := make([]byte, 1000)
	if _, err := io.ReadFull(r, firstChunk); err != nil {
		t.Fatal(err)
	}
	before := m.TotalBytes()
	if err := m.Remove(large.Segment); err != nil {
		t.Fatalf("Remove(sealed): %v", err)
	}
	if got := m.TotalBytes(); got != before-large.RecordSize {
		t.Fatalf("TotalBytes %d after removing %d of %d", got, large.RecordSize, before)
	}
	rest, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(append(firstChunk, rest...), testBody(2, 3<<20)) {
		t.Fatalf("reader disturbed by Remove: %v", err)
	}
	if _, err := readRecord(m, large, "large", 0, -1); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("reading a removed segment: %v, want ErrCorrupt", err)
	}
	if err := m.Remove(large.Segment); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second Remove = %v, want fs.ErrNotExist", err)
	}
	m.Seal()
	if err := m.Remove(small.Segment); err != nil {
		t.Fatalf("Remove after Seal: %v", err)
	}
	if len(m.Segments()) != 0 || m.TotalBytes() != 0 {
		t.Fatalf("segments left: %+v", m.Segments())
	}
	checkAccounting(t, m)
}

func TestReopen(t *testing.T) {
	dir, tmp := t.TempDir(), t.TempDir()
	m, err := Open(Options{Dir: dir, TmpDir: tmp, SpillThreshold: 4096})
	if err != nil {
		t.Fatal(err)
	}
	a := commit(t, m, "a", testBody(1, 1000))
	b := commit(t, m, "b", testBody(2, 10_000))
	// Leave a staged spill behind, as a crash would.
	s, err := m.Stage(context.Background(), []byte("abandoned"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(testBody(3, 8192)); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// Leftovers a crash can leave, and files that are not ours.
	for _, p := range []string{
		filepath.Join(dir, ID(500).fileName()),             // empty segment
		filepath.Join(dir, "00000000000001f5.seg.partial"), // interrupted copy
		filepath.Join(dir, "notes.txt"),
		filepath.Join(tmp, "multipart-part-1.tmp"),
	} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	m2 := openManager(t, Options{Dir: dir, TmpDir: tmp})
	mustRead(t, m2, a, "a", testBody(1, 1000))
	mustRead(t, m2, b, "b", testBody(2, 10_000))
	for _, p := range []string{filepath.Join(dir, ID(500).fileName()), filepath.Join(dir, "00000000000001f5.seg.partial")} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s should have been removed: %v", p, err)
		}
	}
	for _, p := range []string{filepath.Join(dir, "notes.txt"), filepath.Join(tmp, "multipart-part-1.tmp")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s is not ours and must be kept: %v", p, err)
		}
	}
	if stale, _ := filepath.Glob(filepath.Join(tmp, stagePrefix+"*")); len(stale) != 0 {
		t.Errorf("stale staging files kept: %v", stale)
	}
	for _, s := range m2.Segments() {
		if s.Active {
			t.Fatalf("Open must not reopen a segment for appends: %+v", m2.Segments())
		}
	}
	c := commit(t, m2, "c", testBody(4, 100))
	if c.Segment <= 500 || c.Offset != 0 {
		t.Fatalf("first record after reopen must start a new segment after every existing ID: %+v", c)
	}
	checkAccounting(t, m2)
}

func TestClose(t *testing.T) {
	m := openManager(t, Options{SpillThreshold: 1024})
	loc := commit(t, m, "x", testBody(1, 300<<10))
	r, err := m.OpenRecord(context.Background(), loc, []byte("x"), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := m.Stage(context.Background(), []byte("pending"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pending.Write(testBody(2, 4096)); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := pending.Commit(context.Background()); !errors.Is(err, ErrClosed) || !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Commit after Close = %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(m.opts.TmpDir, "*")); len(left) != 0 {
		t.Fatalf("failed Commit left staging files: %v", left)
	}
	if _, err := m.Stage(context.Background(), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Stage after Close = %v", err)
	}
	if _, err := m.OpenRecord(context.Background(), loc, []byte("x"), 0, -1); !errors.Is(err, ErrClosed) {
		t.Fatalf("OpenRecord after Close = %v", err)
	}
	if err := m.Remove(loc.Segment); !errors.Is(err, ErrClosed) {
		t.Fatalf("Remove after Close = %v", err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, testBody(1, 300<<10)) {
		t.Fatalf("reader opened before Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestStagedLifecycle(t *testing.T) {
	m := openManager(t, Options{SpillThreshold: 1000})
	if _, err := m.Stage(context.Background(), make([]byte, MaxNameBytes+1)); err == nil {
		t.Fatal("over-long name accepted")
	}
	// Abort of a spilled record removes its staging file; Abort is idempotent.
	s, _ := m.Stage(context.Background(), []byte("a"))
	if _, err := s.Write(testBody(1, 5000)); err != nil {
		t.Fatal(err)
	}
	if files, _ := filepath.Glob(filepath.Join(m.opts.TmpDir, stagePrefix+"*")); len(files) != 1 {
		t.Fatalf("a 5000-byte body over a 1000-byte threshold should have spilled: %v", files)
	}
	s.Abort()
	s.Abort()
	if files, _ := filepath.Glob(filepath.Join(m.opts.TmpDir, "*")); len(files) != 0 {
		t.Fatalf("Abort left %v", files)
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("Write after Abort accepted")
	}
	if _, err := s.Commit(context.Background()); err == nil {
		t.Fatal("Commit after Abort accepted")
	}
	// Abort after Commit keeps the record.
	s2, _ := m.Stage(context.Background(), []byte("b"))
	body := testBody(2, 999)
	s2.Write(body[:500])
	s2.Write(nil)
	s2.Write(body[500:])
	if got := s2.SHA256(); got != sha256.Sum256(body) {
		t.Fatal("SHA256 mismatch")
	}
	loc, err := s2.Commit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s2.Abort()
	if _, err := s2.Commit(context.Background()); err == nil {
		t.Fatal("second Commit accepted")
	}
	mustRead(t, m, loc, "b", body)
	// A cancelled context before Commit stores nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	before := m.TotalBytes()
	if _, err := tryCommit(ctx, m, "c", body); !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit with cancelled ctx = %v", err)
	}
	if _, err := tryCommit(ctx, m, "d", testBody(3, 4000)); !errors.Is(err, context.Canceled) {
		t.Fatalf("spilled Commit with cancelled ctx = %v", err)
	}
	if m.TotalBytes() != before {
		t.Fatal("cancelled commits wrote bytes")
	}
	if files, _ := filepath.Glob(filepath.Join(m.opts.TmpDir, "*")); len(files) != 0 {
		t.Fatalf("cancelled commit left %v", files)
	}
}

// TestCommitCancelledWhileWaiting: a caller whose ctx ends while its sync is pending gets the
// ctx error promptly, and everybody else still completes.
func TestCommitCancelledWhileWaiting(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var once sync.Once
	ops := osFileOps
	ops.datasync = func(f *os.File) error {
		once.Do(func() { entered <- struct{}{}; <-release })
		return fdatasync(f)
	}
	m := openManager(t, Options{ops: &ops})
	leaderDone := make(chan error, 1)
	go func() {
		_, err := tryCommit(context.Background(), m, "leader", []byte("a"))
		leaderDone <- err
	}()
	<-entered // the leader is inside the first (held) sync
	ctx, cancel := context.WithCancel(context.Background())
	followerDone := make(chan error, 1)
	go func() {
		_, err := tryCommit(ctx, m, "follower", []byte("b"))
		followerDone <- err
	}()
	testsupport.WaitFor(t, "the follower to append", 20*time.Second, func() bool { return m.TotalBytes() == RecordSize(1, 6)+RecordSize(1, 8) })
	cancel()
	if err := <-followerDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled follower: %v", err)
	}
	close(release)
	if err := <-leaderDone; err != nil {
		t.Fatalf("leader: %v", err)
	}
}

// TestCorruptFirstBlockFailsOpen: damage in the first block a streamed read would hand out
// (its body or its CRC entry) is reported by OpenRecord itself, before the caller has
// committed to serving the record, so the store can treat it as a miss and read a peer's copy
// through. Damage further on still only fails the Read that reaches it.
func TestCorruptFirstBlockFailsOpen(t *testing.T) {
	const size = 5*BlockSize - 7 // streamed, not read whole
	cases := []struct {
		what   string
		at     func(loc Location) int64
		offset int64 // start of the range read
		atOpen bool
	}{
		{"body block 0", func(loc Location) int64 { return loc.Offset + 100 }, 0, true},
		{"CRC entry 0", func(loc Location) int64 { return loc.Offset + loc.BodySize + 1 }, 0, true},
		{"body block 2, range from block 2", func(loc Location) int64 { return loc.Offset + 2*BlockSize + 9 }, 2*BlockSize + 5, true},
		{"body block 3, range from block 0", func(loc Location) int64 { return loc.Offset + 3*BlockSize + 9 }, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.what, func(t *testing.T) {
			m := openManager(t, Options{})
			body := testBody(3, size)
			loc := commit(t, m, "victim", body)
			flipByte(t, m.segPath(loc.Segment), tc.at(loc))
			r, err := m.OpenRecord(context.Background(), loc, []byte("victim"), tc.offset, -1)
			if tc.atOpen {
				if !errors.Is(err, storage.ErrCorrupt) {
					t.Fatalf("OpenRecord = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenRecord = %v; the damage is past the first block, so opening must work", err)
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if !errors.Is(err, storage.ErrCorrupt) || !bytes.Equal(got, body[:len(got)]) || len(got) > 3*BlockSize {
				t.Fatalf("read %d bytes, err %v; want at most the 3 intact blocks, then ErrCorrupt", len(got), err)
			}
		})
	}
}
