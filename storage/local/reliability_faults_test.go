package local

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/internal/testsupport/figures"
	"github.com/kuracache/kura/storage"
)

// Item 3 of the reliability suite (issue 13), one level up from storage/segment's
// TestReliabilityIOFaults: an I/O fault at each disk operation the segment store makes during
// a store's Puts (through segment.Options.FaultHook), once and from then on. Every Put either
// succeeds or fails cleanly; after a failure the key holds its old value or is absent, now
// and after reopening; nothing leaks.

// storeInjector counts the segment store's disk operations and fails the target one.
type storeInjector struct {
	mu       sync.Mutex
	armed    bool
	calls    int
	sites    []string
	target   int
	sticky   bool
	errno    syscall.Errno
	failures int
	// removeFailed: a removal failed, so the file it was to remove (a staging file) may stay
	// until the next Open.
	removeFailed bool
}

func (in *storeInjector) hook(op, path string) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.armed {
		return nil
	}
	in.calls++
	name := filepath.Base(path)
	if strings.HasPrefix(name, "kseg-stage-") {
		name = "staging file"
	}
	in.sites = append(in.sites, op+" "+name)
	if in.target == 0 || in.calls < in.target || (in.calls > in.target && !in.sticky) {
		return nil
	}
	in.failures++
	if op == "remove" {
		in.removeFailed = true
	}
	return &os.PathError{Op: op, Path: path, Err: in.errno}
}

func (in *storeInjector) failuresSoFar() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.failures
}

type storeFaultRun struct {
	unclean, partial, leaks []string
	failedPuts              int // Puts the fault made fail (cleanly)
}

func acKey(name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindAC, Name: name}
}

// runStoreFaultScenario overwrites two action-cache entries (one small, one spilled) and
// creates two CAS blobs with in failing the segment store's disk operations.
func runStoreFaultScenario(t *testing.T, dataDir string, in *storeInjector) storeFaultRun {
	var res storeFaultRun
	defer os.RemoveAll(dataDir)
	fdsBefore, goroutinesBefore := openFDCount(t), runtime.NumGoroutine()
	opts := Options{DataDir: dataDir, Registerer: prometheus.NewRegistry(), Metadata: smallMeta(),
		SpillThreshold: 64 << 10, ReservedDiskBytes: -1, segmentFaults: in.hook}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	body := func(seed uint64, n int) []byte {
		b := make([]byte, n)
		r := rand.New(rand.NewPCG(seed, seed))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	type object struct {
		key      storage.Key
		old, new []byte // old nil: absent before
		acked    bool
	}
	objects := []*object{
		{key: acKey("small"), old: body(1, 3000), new: body(2, 4000)},
		{key: acKey("spilled"), old: body(3, 150_000), new: body(4, 170_000)},
		{key: cas("small-new"), new: body(5, 2000)},
		{key: cas("spilled-new"), new: body(6, 130_000)},
	}
	for _, o := range objects {
		if o.old != nil {
			put(t, s, o.key, o.old)
		}
	}
	in.mu.Lock()
	in.armed = true
	in.mu.Unlock()

	// check: the key holds the new value if its Put succeeded, else the old one or nothing.
	check := func(s *Store, o *object, when string) {
		got, err := read(t, s, o.key)
		switch {
		case o.acked:
			if err != nil || !bytes.Equal(got, o.new) {
				res.partial = append(res.partial, fmt.Sprintf("%s: %v: acknowledged value reads %d bytes, %v", when, o.key, len(got), err))
			}
		case o.old == nil:
			if !isNotFound(err) {
				res.partial = append(res.partial, fmt.Sprintf("%s: %v: failed create reads %d bytes, %v (want absent)", when, o.key, len(got), err))
			}
		case err != nil || !bytes.Equal(got, o.old):
			res.partial = append(res.partial, fmt.Sprintf("%s: %v: failed overwrite reads %d bytes, %v (want the old value)", when, o.key, len(got), err))
		}
	}
	for _, o := range objects {
		before := in.failuresSoFar()
		var err error
		func() {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
					res.unclean = append(res.unclean, fmt.Sprintf("Put %v panicked: %v", o.key, p))
				}
			}()
			_, err = s.Put(ctx(t), o.key, bytes.NewReader(o.new), storage.PutOptions{Size: int64(len(o.new))})
		}()
		faulted := in.failuresSoFar() > before
		if err != nil && faulted {
			res.failedPuts++
		}
		switch {
		case err == nil:
			o.acked = true
		case !faulted:
			res.unclean = append(res.unclean, fmt.Sprintf("Put %v failed without a fault: %v", o.key, err))
		case !errors.Is(err, in.errno):
			res.unclean = append(res.unclean, fmt.Sprintf("Put %v: error %q hides the injected %v", o.key, err, in.errno))
		case in.errno == syscall.ENOSPC && !errors.Is(err, storage.ErrInsufficientStorage):
			res.unclean = append(res.unclean, fmt.Sprintf("Put %v: ENOSPC reported as %q", o.key, err))
		}
		check(s, o, "after the Put")
	}
	// A batch (one segment write and sync for all its items): each item stores its new value
	// or leaves the old one.
	batch := []*object{
		{key: acKey("batch-overwrite"), old: body(7, 900), new: body(8, 1100)},
		{key: cas("batch-new"), new: body(9, 5000)},
	}
	// Their old values go in with the injector off (its calls are not counted).
	in.mu.Lock()
	in.armed = false
	in.mu.Unlock()
	for _, o := range batch {
		if o.old == nil {
			continue
		}
		if _, err := s.Put(ctx(t), o.key, bytes.NewReader(o.old), storage.PutOptions{Size: int64(len(o.old))}); err != nil {
			res.unclean = append(res.unclean, fmt.Sprintf("Put %v failed without a fault: %v", o.key, err))
		}
	}
	in.mu.Lock()
	in.armed = true
	in.mu.Unlock()
	items := make([]storage.PutItem, len(batch))
	for i, o := range batch {
		items[i] = storage.PutItem{Key: o.key, Body: o.new, Opts: storage.PutOptions{Size: int64(len(o.new))}}
	}
	before := in.failuresSoFar()
	results := s.PutBatch(ctx(t), items)
	for i, o := range batch {
		err := results[i].Err
		switch {
		case err == nil:
			o.acked = true
		case in.failuresSoFar() == before:
			res.unclean = append(res.unclean, fmt.Sprintf("PutBatch item %v failed without a fault: %v", o.key, err))
		case !errors.Is(err, in.errno):
			res.unclean = append(res.unclean, fmt.Sprintf("PutBatch item %v: error %q hides the injected %v", o.key, err, in.errno))
		default:
			res.failedPuts++
		}
		check(s, o, "after the PutBatch")
	}
	objects = append(objects, batch...)
	_ = s.Close() // may fail on a disk that stays broken; must not hang or panic

	staging := filepath.Join(dataDir, "tmp", "staging")
	if left, _ := os.ReadDir(staging); len(left) != 0 && !in.removeFailed {
		res.leaks = append(res.leaks, fmt.Sprintf("%d staging files left after Close", len(left)))
	}
	opts.Registerer, opts.segmentFaults = prometheus.NewRegistry(), nil
	s2, err := Open(opts)
	if err != nil {
		res.unclean = append(res.unclean, fmt.Sprintf("reopen: %v", err))
		return res
	}
	for _, o := range objects {
		check(s2, o, "after reopen")
	}
	if left, _ := os.ReadDir(staging); len(left) != 0 {
		res.leaks = append(res.leaks, fmt.Sprintf("%d staging files survived reopen", len(left)))
	}
	if partial, _ := filepath.Glob(filepath.Join(dataDir, "segments", "*.partial")); len(partial) != 0 {
		res.leaks = append(res.leaks, fmt.Sprintf("interrupted copies survived reopen: %v", partial))
	}
	if err := s2.Close(); err != nil {
		res.unclean = append(res.unclean, fmt.Sprintf("close after reopen: %v", err))
	}
	res.leaks = append(res.leaks, leaksSince(t, fdsBefore, goroutinesBefore)...)
	return res
}

// leaksSince reports descriptors and goroutines beyond the counts taken before a run.
func leaksSince(t *testing.T, fdsBefore, goroutinesBefore int) []string {
	var leaks []string
	if fds := openFDCount(t); fds != fdsBefore {
		leaks = append(leaks, fmt.Sprintf("%d descriptors open before the run, %d after", fdsBefore, fds))
	}
	// The store's background goroutines end with Close, but not necessarily at once.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutinesBefore && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > goroutinesBefore {
		leaks = append(leaks, fmt.Sprintf("%d goroutines before the run, %d after", goroutinesBefore, g))
	}
	return leaks
}

// faultMatrixTotals sums a fault matrix's findings.
type faultMatrixTotals struct{ runs, failedOps, unclean, partial, leaks int }

// runFaultMatrix fails each of the clean run's calls in turn, with EIO and ENOSPC, once and
// from then on, reporting every finding as a test error.
func runFaultMatrix(t *testing.T, clean *storeInjector, run func(in *storeInjector) (failedOps int, unclean, partial, leaks []string)) faultMatrixTotals {
	var tot faultMatrixTotals
	for k := 1; k <= clean.calls; k++ {
		for _, errno := range []syscall.Errno{syscall.EIO, syscall.ENOSPC} {
			for _, sticky := range []bool{false, true} {
				failed, unclean, partial, leaks := run(&storeInjector{target: k, errno: errno, sticky: sticky})
				tot.runs++
				tot.failedOps += failed
				tot.unclean += len(unclean)
				tot.partial += len(partial)
				tot.leaks += len(leaks)
				for _, m := range append(append(unclean, partial...), leaks...) {
					t.Errorf("%v at call %d (%s), from then on %v: %s", errno, k, clean.sites[k-1], sticky, m)
				}
			}
		}
	}
	return tot
}

func openFDCount(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(entries)
}

func TestReliabilityIOFaultsStore(t *testing.T) {
	base := t.TempDir()
	var clean *storeInjector
	for range 2 { // the first run warms up the runtime's own descriptors
		clean = &storeInjector{}
		if res := runStoreFaultScenario(t, filepath.Join(base, "clean"), clean); len(res.unclean)+len(res.partial)+len(res.leaks) != 0 {
			t.Fatalf("clean run: %+v", res)
		}
	}
	t.Logf("clean run: %d segment-store disk operations: %s", clean.calls, strings.Join(clean.sites, ", "))
	tot := runFaultMatrix(t, clean, func(in *storeInjector) (int, []string, []string, []string) {
		res := runStoreFaultScenario(t, filepath.Join(base, "run"), in)
		return res.failedPuts, res.unclean, res.partial, res.leaks
	})
	runs, failedPuts, unclean, partial, leaks := tot.runs, tot.failedOps, tot.unclean, tot.partial, tot.leaks
	if failedPuts == 0 {
		t.Fatal("no injected fault ever failed a Put: the hook does not reach the segment store")
	}
	figures.Report(t, 3, "store fault sites exercised", fmt.Sprintf("%d segment-store operations of 4 Puts and a PutBatch, %d faulted runs, %d Puts failed",
		clean.calls, runs, failedPuts))
	figures.Check(t, 3, "store: unclean failures", unclean, 0)
	figures.Check(t, 3, "store: partial objects visible", partial, 0)
	figures.Check(t, 3, "store: leaked descriptors or temp files", leaks, 0)
}
