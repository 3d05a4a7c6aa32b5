package segment

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/kuracache/kura/internal/testsupport/figures"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/fdpool"
)

// Item 3 of the reliability suite (issue 13): an I/O fault at each write, sync, rename,
// truncate and removal the segment store makes. A clean run of a fixed scenario counts the
// calls through the fileOps seam; then, for every k, the scenario runs again with the k-th
// call failing (EIO, ENOSPC, or for a write a short write: half the bytes reach the file,
// then ENOSPC), once (a transient fault) and from k on (the disk stays broken).

type ioFault int

const (
	faultEIO ioFault = iota
	faultENOSPC
	faultShortWrite
)

func (f ioFault) String() string { return [...]string{"EIO", "ENOSPC", "short write"}[f] }

func (f ioFault) errno() syscall.Errno {
	if f == faultEIO {
		return syscall.EIO
	}
	return syscall.ENOSPC
}

// injector is the fileOps seam of one run: it counts calls, names the code site of each, and
// fails the target call (and, if sticky, every later one).
type injector struct {
	calls  int
	sites  []string // code site of each call, in order
	target int      // the call that fails (1-based; 0: none)
	second int      // another call that fails (the long mode's pairs; 0: none)
	sticky bool
	kind   ioFault
	// crossDevice: renames between directories fail with EXDEV (TmpDir on another filesystem)
	// while set, so a staged record is copied.
	crossDevice bool
	// cancelOnWrite, when set, is called after the next pwrite (the committer gives up).
	cancelOnWrite func()

	fired bool
	// removeFailed: an injected fault hit a removal, so the file it was to remove may stay
	// (until the next Open, for staging files and interrupted copies).
	removeFailed bool
	// failedSites are the code sites whose call this run failed (with sticky, several; some
	// are reached only on a failure path, such as the truncate after a failed append).
	failedSites map[string]bool
	failures    int // calls failed so far
	firedSite   string
	firedStep   string
	step        string // the scenario step running
}

// hit counts a call of op and reports whether it must fail.
func (in *injector) hit(op string) bool {
	in.calls++
	site := op + " at " + callSite()
	in.sites = append(in.sites, site)
	if in.target == 0 || in.calls < in.target || (in.calls > in.target && !in.sticky && in.calls != in.second) {
		return false
	}
	if !in.fired {
		in.fired, in.firedSite, in.firedStep = true, site, in.step
	}
	if op == "remove" {
		in.removeFailed = true
	}
	if in.failedSites == nil {
		in.failedSites = map[string]bool{}
	}
	in.failedSites[site] = true
	in.failures++
	return true
}

// callSite names the Manager's line that made the call: the first frame outside this file
// and the seam's own helpers (syncDir, removeFile).
func callSite() string {
	pcs := make([]uintptr, 16)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	for {
		fr, more := frames.Next()
		base := filepath.Base(fr.File)
		if base != "reliability_faults_test.go" && base != "fileops.go" {
			return fmt.Sprintf("%s:%d (%s)", base, fr.Line, strings.TrimPrefix(fr.Function, "github.com/kuracache/kura/storage/segment."))
		}
		if !more {
			return "?"
		}
	}
}

func (in *injector) ops() *fileOps {
	write := func(p []byte, do func([]byte) (int, error)) (int, error) {
		switch in.kind {
		case faultShortWrite:
			n, err := do(p[:len(p)/2])
			if err != nil {
				return n, err
			}
			return n, syscall.ENOSPC
		default:
			return 0, in.kind.errno()
		}
	}
	pathErr := func(op, path string) error { return &os.PathError{Op: op, Path: path, Err: in.kind.errno()} }
	return &fileOps{
		writeAt: func(f *os.File, p []byte, off int64) (int, error) {
			if cancel := in.cancelOnWrite; cancel != nil {
				in.cancelOnWrite = nil
				defer cancel()
			}
			if in.hit("writeAt") {
				return write(p, func(b []byte) (int, error) { return f.WriteAt(b, off) })
			}
			return f.WriteAt(p, off)
		},
		write: func(f *os.File, p []byte) (int, error) {
			if in.hit("write") {
				return write(p, f.Write)
			}
			return f.Write(p)
		},
		truncate: func(f *os.File, size int64) error {
			if in.hit("truncate") {
				return pathErr("truncate", f.Name())
			}
			return f.Truncate(size)
		},
		datasync: func(f *os.File) error {
			if in.hit("datasync") {
				return in.kind.errno()
			}
			// Durability is not what this test checks (the crash simulation does): skipping
			// the real syncs keeps its hundreds of runs fast.
			return nil
		},
		syncDir: func(d *os.File) error {
			if in.hit("syncDir") {
				return pathErr("sync", d.Name())
			}
			return nil
		},
		rename: func(oldpath, newpath string) error {
			if in.hit("rename") {
				return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: in.kind.errno()}
			}
			if in.crossDevice && filepath.Dir(oldpath) != filepath.Dir(newpath) {
				return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.EXDEV}
			}
			return os.Rename(oldpath, newpath)
		},
		remove: func(path string) error {
			if in.hit("remove") {
				return pathErr("remove", path)
			}
			return os.Remove(path)
		},
		freeBytes: func(string) (int64, error) { return 1 << 40, nil },
	}
}

// faultRecord is a record the scenario keeps; acked once its Commit returned it.
type faultRecord struct {
	name  string
	body  []byte
	loc   Location
	acked bool
}

func faultOptions(root string, ops *fileOps, pool *fdpool.Pool) Options {
	return Options{Dir: root + "/segments", TmpDir: root + "/tmp", SpillThreshold: 16 << 10, Pool: pool, ops: ops}
}

// prepareFaultTemplate writes the data directory every run starts from: two acknowledged
// records from an earlier run (the old values that must stay intact), and the leftovers Open
// cleans up (an empty segment, an interrupted copy, a stale staging file), so Open's removals
// are fault sites too.
func prepareFaultTemplate(t *testing.T, root string) []*faultRecord {
	m, err := Open(faultOptions(root, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	old := []*faultRecord{{name: "old-small", body: testBody(1, 5000)}, {name: "old-spilled", body: testBody(2, 70_000)}}
	for _, r := range old {
		r.loc = commit(t, m, r.name, r.body)
		r.acked = true
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{
		"segments/00000000000000ff.seg":            nil,
		"segments/0000000000000100.seg.partial":    []byte("an interrupted cross-filesystem copy"),
		"tmp/" + stagePrefix + "123" + stageSuffix: []byte("a staging file of a killed upload"),
	} {
		if err := os.WriteFile(filepath.Join(root, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return old
}

func copyTree(t *testing.T, src, dst string) {
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(entries)
}

// leftovers lists staging files and interrupted copies in the run's directories.
func leftovers(root string) []string {
	tmp, _ := filepath.Glob(filepath.Join(root, "tmp", "*"))
	partial, _ := filepath.Glob(filepath.Join(root, "segments", "*"+partialSuffix))
	return append(tmp, partial...)
}

func segmentFiles(root string) []string {
	files, _ := filepath.Glob(filepath.Join(root, "segments", "*"+segSuffix))
	return files
}

// faultRun is what one run of the scenario found.
type faultRun struct {
	unclean, partial, leaks []string
}

// runFaultScenario runs the scenario on a copy of the template with in as the seam.
func runFaultScenario(t *testing.T, template, root string, old []*faultRecord, in *injector) faultRun {
	var res faultRun
	copyTree(t, template, root)
	defer os.RemoveAll(root)
	fdsBefore, goroutinesBefore := openFDs(t), runtime.NumGoroutine()
	pool, err := fdpool.New(64, fdpool.DefaultAcquireTimeout)
	if err != nil {
		t.Fatal(err)
	}
	records := slices.Clone(old)
	for i, r := range records {
		c := *r
		records[i] = &c
	}
	var m *Manager

	// step runs one operation; an error must come from the fault (nothing else fails in this
	// scenario), say what it is (ENOSPC as storage.ErrInsufficientStorage, so the protocols
	// answer 507), and never be a panic.
	step := func(name string, fn func() error) error {
		in.step = name
		failuresBefore := in.failures
		var err error
		func() {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
					res.unclean = append(res.unclean, fmt.Sprintf("%s panicked: %v", name, p))
				}
			}()
			err = fn()
		}()
		faulted := in.failures > failuresBefore
		switch {
		case err == nil:
		case !faulted:
			res.unclean = append(res.unclean, fmt.Sprintf("%s failed without a fault: %v", name, err))
		case !errors.Is(err, in.kind.errno()):
			res.unclean = append(res.unclean, fmt.Sprintf("%s: error %q hides the injected %v", name, err, in.kind.errno()))
		case in.kind.errno() == syscall.ENOSPC && !errors.Is(err, storage.ErrInsufficientStorage):
			res.unclean = append(res.unclean, fmt.Sprintf("%s: ENOSPC reported as %q, not as insufficient storage", name, err))
		}
		return err
	}
	commitStep := func(name string, body []byte, spilled bool) *faultRecord {
		r := &faultRecord{name: name, body: body}
		before := segmentFiles(root)
		var loc Location
		err := step("commit "+name, func() error {
			var err error
			loc, err = tryCommit(context.Background(), m, name, body)
			return err
		})
		if err != nil {
			if loc != (Location{}) {
				res.partial = append(res.partial, fmt.Sprintf("failed commit %s returned a location %+v", name, loc))
			}
			// A failed spilled record leaves no segment behind (unless its removal failed
			// too: then it is listed, see checkListing); a failed small one at most the
			// shared segment it was to go to.
			if after := segmentFiles(root); spilled && !slices.Equal(before, after) && !in.removeFailed {
				res.partial = append(res.partial, fmt.Sprintf("failed commit %s left segment files %v (before %v)", name, after, before))
			}
			return r
		}
		r.loc, r.acked = loc, true
		records = append(records, r)
		return r
	}
	// checkListing: every segment file is listed with its size, nothing else is counted.
	checkListing := func(when string) {
		if m == nil {
			return
		}
		segs := m.Segments()
		var sum int64
		for _, s := range segs {
			fi, err := os.Stat(m.segPath(s.ID))
			if err != nil || fi.Size() != s.Size {
				res.partial = append(res.partial, fmt.Sprintf("%s: segment %s listed with %d bytes: %v", when, s.ID, s.Size, err))
			}
			sum += s.Size
		}
		if files := segmentFiles(root); len(files) != len(segs) {
			res.partial = append(res.partial, fmt.Sprintf("%s: %d segment files, %d listed", when, len(files), len(segs)))
		}
		if m.TotalBytes() != sum {
			res.partial = append(res.partial, fmt.Sprintf("%s: TotalBytes %d, listed %d", when, m.TotalBytes(), sum))
		}
	}
	checkRecords := func(m *Manager, when string) {
		for _, r := range records {
			if !r.acked {
				continue
			}
			if got, err := readRecord(m, r.loc, r.name, 0, -1); err != nil || !bytes.Equal(got, r.body) {
				res.partial = append(res.partial, fmt.Sprintf("%s: acknowledged %s at %+v reads %d bytes, %v", when, r.name, r.loc, len(got), err))
			}
		}
	}

	if err := step("open", func() error {
		var err error
		m, err = Open(faultOptions(root, in.ops(), pool))
		return err
	}); err == nil {
		commitStep("small-1", testBody(10, 3000), false)
		commitStep("empty", nil, false)
		commitStep("spilled", testBody(11, stageBufferBytes+5000), true)
		checkListing("after spilled")
		_ = step("abort spilled", func() error {
			s, err := m.Stage(context.Background(), []byte("aborted"))
			if err != nil {
				return err
			}
			if _, err := s.Write(testBody(12, 40_000)); err != nil {
				return err
			}
			s.Abort()
			return nil
		})
		in.crossDevice = true
		commitStep("copied", testBody(13, 60_000), true)
		in.crossDevice = false
		checkListing("after copied")
		m.Seal()
		if victim := commitStep("victim", testBody(14, 2000), false); victim.acked {
			m.Seal()
			victim.acked = false // the caller drops its references before removing the segment
			if err := step("remove", func() error { return m.Remove(victim.loc.Segment) }); err != nil {
				checkListing("after failed remove")
			}
		}
		commitStep("small-2", testBody(15, 9000), false)
		_ = step("append batch", func() error {
			batch := []*faultRecord{{name: "batch-1", body: testBody(18, 700)}, {name: "batch-2", body: testBody(19, 12_000)}}
			recs := make([]Record, len(batch))
			for i, r := range batch {
				recs[i] = Record{Name: []byte(r.name), Body: r.body, SHA256: sha256.Sum256(r.body)}
			}
			locs, err := m.AppendBatch(context.Background(), recs)
			if err != nil {
				return err
			}
			for i, r := range batch {
				r.loc, r.acked = locs[i], true
				records = append(records, r)
			}
			return nil
		})
		// A commit whose caller gives up while it waits for the sync: written, never
		// acknowledged, and the segment's first sync (with its directory fsync) left to Close.
		m.Seal()
		ctx, cancel := context.WithCancel(context.Background())
		in.cancelOnWrite = cancel
		_ = step("commit abandoned", func() error {
			_, err := tryCommit(ctx, m, "abandoned", testBody(17, 1000))
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		})
		in.cancelOnWrite = nil
		cancel()
		checkListing("before close")
		checkRecords(m, "before close")
		_ = step("close", m.Close)
	}
	if pool.InUse() != 0 {
		res.leaks = append(res.leaks, fmt.Sprintf("%d descriptor pool slots still checked out after Close", pool.InUse()))
	}
	// A removal that failed leaves its file (the stale staging file Open removes, the staging
	// file of an aborted or copied record) until the next Open, which removes it.
	if left := leftovers(root); len(left) != 0 && !in.removeFailed {
		res.leaks = append(res.leaks, fmt.Sprintf("temporary files left: %v", left))
	}

	// The disk is repaired: the store opens, every acknowledged record is intact (the old
	// ones included), nothing temporary survives, and it takes writes again.
	m2, err := Open(faultOptions(root, nil, pool))
	if err != nil {
		res.unclean = append(res.unclean, fmt.Sprintf("reopen after the fault: %v", err))
	} else {
		checkRecords(m2, "after reopen")
		if left := leftovers(root); len(left) != 0 {
			res.leaks = append(res.leaks, fmt.Sprintf("temporary files survived reopen: %v", left))
		}
		body := testBody(16, 4000)
		if loc, err := tryCommit(context.Background(), m2, "after-reopen", body); err != nil {
			res.unclean = append(res.unclean, fmt.Sprintf("commit after reopen: %v", err))
		} else if got, err := readRecord(m2, loc, "after-reopen", 0, -1); err != nil || !bytes.Equal(got, body) {
			res.unclean = append(res.unclean, fmt.Sprintf("read after reopen: %v", err))
		}
		if err := m2.Close(); err != nil {
			res.unclean = append(res.unclean, fmt.Sprintf("close after reopen: %v", err))
		}
	}
	if fds := openFDs(t); fds != fdsBefore {
		res.leaks = append(res.leaks, fmt.Sprintf("%d descriptors open before the run, %d after", fdsBefore, fds))
	}
	if g := runtime.NumGoroutine(); g > goroutinesBefore {
		res.leaks = append(res.leaks, fmt.Sprintf("%d goroutines before the run, %d after", goroutinesBefore, g))
	}
	return res
}

func TestReliabilityIOFaults(t *testing.T) {
	base := t.TempDir()
	template := filepath.Join(base, "template")
	old := prepareFaultTemplate(t, template)

	// The clean run counts the calls and names their sites (it runs twice: the first warms up
	// the runtime's own descriptors, such as the poller's, before any are counted).
	var clean *injector
	for range 2 {
		clean = &injector{}
		if res := runFaultScenario(t, template, filepath.Join(base, "clean"), old, clean); len(res.unclean)+len(res.partial)+len(res.leaks) != 0 {
			t.Fatalf("clean run: %+v", res)
		}
	}
	sites := map[string]bool{}
	for _, s := range clean.sites {
		sites[s] = true
	}
	t.Logf("clean run: %d calls through the seam at %d code sites", clean.calls, len(sites))

	injections, unclean, partial, leaks := 0, 0, 0, 0
	report := func(what string, in *injector, msgs []string) {
		for _, m := range msgs {
			t.Errorf("%s at call %d (%s, during %s), %v%s: %s", what, in.target, in.firedSite, in.firedStep, in.kind,
				map[bool]string{true: " from then on", false: ""}[in.sticky], m)
		}
	}
	exercised := map[string]bool{}
	for k := 1; k <= clean.calls; k++ {
		for _, kind := range []ioFault{faultEIO, faultENOSPC, faultShortWrite} {
			op := clean.sites[k-1]
			if kind == faultShortWrite && !strings.HasPrefix(op, "write") {
				continue // only a write can be short
			}
			for _, sticky := range []bool{false, true} {
				in := &injector{target: k, kind: kind, sticky: sticky}
				res := runFaultScenario(t, template, filepath.Join(base, "run"), old, in)
				if !in.fired {
					t.Errorf("call %d (%s) never came in the faulted run: the scenario is not deterministic", k, op)
					continue
				}
				for s := range in.failedSites {
					exercised[s] = true
				}
				injections++
				unclean += len(res.unclean)
				partial += len(res.partial)
				leaks += len(res.leaks)
				report("unclean failure", in, res.unclean)
				report("partial object visible", in, res.partial)
				report("leak", in, res.leaks)
			}
		}
	}
	if figures.Long() {
		// Pairs: a transient EIO at call k, then another at call j of the run that follows
		// (which may take a failure path the clean run never does).
		for k := 1; k <= clean.calls; k++ {
			first := &injector{target: k, kind: faultEIO}
			runFaultScenario(t, template, filepath.Join(base, "run"), old, first)
			for j := k + 1; j <= first.calls; j++ {
				in := &injector{target: k, second: j, kind: faultEIO}
				res := runFaultScenario(t, template, filepath.Join(base, "run"), old, in)
				for s := range in.failedSites {
					exercised[s] = true
				}
				injections++
				unclean += len(res.unclean)
				partial += len(res.partial)
				leaks += len(res.leaks)
				report(fmt.Sprintf("unclean failure (second fault at call %d)", j), in, res.unclean)
				report(fmt.Sprintf("partial object visible (second fault at call %d)", j), in, res.partial)
				report(fmt.Sprintf("leak (second fault at call %d)", j), in, res.leaks)
			}
		}
	}
	siteList := slices.Sorted(maps.Keys(exercised))
	t.Logf("fault sites exercised:\n  %s", strings.Join(siteList, "\n  "))
	figures.Report(t, 3, "fault sites exercised", fmt.Sprintf("%d code sites (%d calls at %d sites in a clean run), %d faulted runs",
		len(exercised), clean.calls, len(sites), injections))
	figures.Check(t, 3, "unclean failures", unclean, 0)
	figures.Check(t, 3, "partial objects visible", partial, 0)
	figures.Check(t, 3, "leaked descriptors or temp files", leaks, 0)
}
