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
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/internal/testsupport/figures"
	"github.com/kuracache/kura/storage"
)

// Item 3 of the reliability suite for the staging the segment store does not see: multipart
// part files and resumable (ByteStream) uploads, which write, sync, truncate and remove files
// under tmp/ themselves (Options.stagingFaults). An I/O fault at each of those operations, once
// and from then on: the operation fails cleanly with the injected error, nothing partial
// becomes visible (an object exists only once completed, whole; a part is recorded only when
// durable; a resumable upload never reports more durable bytes than it has), now and after a
// reopen, and no descriptor, goroutine or staging file outlives its use.

// stagingFaultRun is one scenario's findings.
type stagingFaultRun struct {
	unclean, partial, leaks []string
	failedOps               int
}

func stagingBody(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// runStagingFaultScenario: a multipart upload of two parts with part 1 sent twice, completed;
// a resumable upload written and checkpointed in two halves, completed; a second one left
// unfinished with one checkpoint. The scenario stops at the first failed operation.
func runStagingFaultScenario(t *testing.T, dataDir string, in *storeInjector) stagingFaultRun {
	var res stagingFaultRun
	defer os.RemoveAll(dataDir)
	fdsBefore, goroutinesBefore := openFDCount(t), runtime.NumGoroutine()
	opts := Options{DataDir: dataDir, Registerer: prometheus.NewRegistry(), Metadata: smallMeta(),
		ReservedDiskBytes: -1, stagingFaults: in.hook}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	module := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindModule, Name: "builds/h1/App.framework"}
	part1, part1b, part2 := stagingBody(1, 200_000), stagingBody(2, 210_000), stagingBody(3, 50_000)
	resumed, unfinished := cas("resumed"), cas("unfinished")
	whole, half := stagingBody(4, 300_000), stagingBody(5, 100_000)

	var (
		completedModule, completedResumed bool
		partsAcked                        = map[int][]byte{} // the last acknowledged body of each part
		unfinishedDurable, resumedDurable int64              // what their last checkpoints made durable
		uploadID                          string
	)
	failed := false
	step := func(what string, op func() error) {
		if failed {
			return
		}
		before := in.failuresSoFar()
		var err error
		func() {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("panic: %v", p)
					res.unclean = append(res.unclean, fmt.Sprintf("%s panicked: %v", what, p))
				}
			}()
			err = op()
		}()
		faulted := in.failuresSoFar() > before
		switch {
		case err == nil:
			return
		case !faulted:
			res.unclean = append(res.unclean, fmt.Sprintf("%s failed without a fault: %v", what, err))
		case !errors.Is(err, in.errno):
			res.unclean = append(res.unclean, fmt.Sprintf("%s: error %q hides the injected %v", what, err, in.errno))
		case in.errno == syscall.ENOSPC && !errors.Is(err, storage.ErrInsufficientStorage):
			res.unclean = append(res.unclean, fmt.Sprintf("%s: ENOSPC reported as %q", what, err))
		default:
			res.failedOps++
		}
		failed = true
	}

	in.mu.Lock()
	in.armed = true
	in.mu.Unlock()
	step("StartUpload", func() (err error) { uploadID, err = s.StartUpload(ctx(t), module, ""); return err })
	for _, p := range []struct {
		n    int
		body []byte
	}{{1, part1}, {2, part2}, {1, part1b}} {
		step(fmt.Sprintf("PutPart %d", p.n), func() error {
			if err := s.PutPart(ctx(t), uploadID, p.n, bytes.NewReader(p.body)); err != nil {
				return err
			}
			partsAcked[p.n] = p.body
			return nil
		})
	}
	step("CompleteUpload", func() error {
		if _, err := s.CompleteUpload(ctx(t), uploadID, []int{1, 2}); err != nil {
			return err
		}
		completedModule = true
		return nil
	})
	step("resumable upload", func() error {
		w, err := s.ResumeWrite(ctx(t), resumed, "u1", int64(len(whole)))
		if err != nil {
			return err
		}
		defer w.Close()
		for _, chunk := range [][]byte{whole[:150_000], whole[150_000:]} {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
			if err := w.Checkpoint(ctx(t)); err != nil {
				return err
			}
			resumedDurable = w.Offset()
		}
		if _, err := w.Complete(ctx(t), storage.PutOptions{Size: int64(len(whole))}, nil); err != nil {
			return err
		}
		completedResumed = true
		return nil
	})
	step("unfinished resumable upload", func() error {
		w, err := s.ResumeWrite(ctx(t), unfinished, "u2", 2*int64(len(half)))
		if err != nil {
			return err
		}
		defer w.Close()
		if _, err := w.Write(half); err != nil {
			return err
		}
		if err := w.Checkpoint(ctx(t)); err != nil {
			return err
		}
		unfinishedDurable = int64(len(half))
		return nil
	})

	check := func(s *Store, when string) {
		got, err := read(t, s, module)
		want := append(append([]byte(nil), partsAcked[1]...), partsAcked[2]...)
		switch {
		case completedModule && (err != nil || !bytes.Equal(got, want)):
			res.partial = append(res.partial, fmt.Sprintf("%s: the completed module reads %d bytes, %v", when, len(got), err))
		case !completedModule && !isNotFound(err):
			res.partial = append(res.partial, fmt.Sprintf("%s: the module was never completed but reads %d bytes, %v", when, len(got), err))
		}
		if !completedModule && uploadID != "" {
			// The recorded parts are exactly the acknowledged ones: completing them now (the
			// hook is off) stores their concatenation.
			var parts []int
			for n := range 2 {
				if partsAcked[n+1] != nil {
					parts = append(parts, n+1)
				}
			}
			if len(parts) == 2 && when == "after reopen" {
				if _, err := s.CompleteUpload(ctx(t), uploadID, parts); err != nil {
					res.partial = append(res.partial, fmt.Sprintf("%s: completing the acknowledged parts: %v", when, err))
				} else if got, err := read(t, s, module); err != nil || !bytes.Equal(got, want) {
					res.partial = append(res.partial, fmt.Sprintf("%s: the acknowledged parts complete to %d bytes, %v; want %d", when, len(got), err, len(want)))
				}
			}
		}
		got, err = read(t, s, resumed)
		switch {
		case completedResumed && (err != nil || !bytes.Equal(got, whole)):
			res.partial = append(res.partial, fmt.Sprintf("%s: the completed resumable upload reads %d bytes, %v", when, len(got), err))
		case !completedResumed && !isNotFound(err):
			res.partial = append(res.partial, fmt.Sprintf("%s: the resumable upload was never completed but reads %d bytes, %v", when, len(got), err))
		}
		if _, err := read(t, s, unfinished); !isNotFound(err) {
			res.partial = append(res.partial, fmt.Sprintf("%s: an unfinished upload is readable (%v)", when, err))
		}
		for _, u := range []struct {
			key     storage.Key
			id      string
			size    int64
			durable int64
		}{{unfinished, "u2", 2 * int64(len(half)), unfinishedDurable}, {resumed, "u1", int64(len(whole)), resumedDurable}} {
			durable, err := s.WriteStatus(ctx(t), u.key, u.id, u.size)
			if err != nil && !errors.Is(err, storage.ErrUploadNotFound) {
				res.partial = append(res.partial, fmt.Sprintf("%s: WriteStatus %s: %v", when, u.id, err))
			}
			if durable > u.durable {
				res.partial = append(res.partial, fmt.Sprintf("%s: WriteStatus %s reports %d durable bytes, %d were checkpointed", when, u.id, durable, u.durable))
			}
		}
	}
	in.mu.Lock()
	in.armed = false
	in.mu.Unlock()
	check(s, "after the fault")
	_ = s.Close()

	opts.Registerer, opts.stagingFaults = prometheus.NewRegistry(), nil
	s2, err := Open(opts)
	if err != nil {
		res.unclean = append(res.unclean, fmt.Sprintf("reopen: %v", err))
		return res
	}
	check(s2, "after reopen")
	// Staging files left: only what a live record references (the unfinished resumable
	// upload, the parts of an upload that was not completed).
	if !in.removeFailed {
		var left []string
		_ = filepath.WalkDir(filepath.Join(dataDir, "tmp"), func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				left = append(left, strings.TrimPrefix(path, dataDir+"/"))
			}
			return nil
		})
		allowed := 0
		if unfinishedDurable > 0 {
			allowed++ // its staged file
		}
		if resumedDurable > 0 && !completedResumed {
			allowed++ // checkpointed, so kept for the client to resume
		}
		if !completedModule {
			allowed += len(partsAcked)
		}
		if len(left) > allowed {
			res.leaks = append(res.leaks, fmt.Sprintf("%d staging files after reopen, %d referenced: %v", len(left), allowed, left))
		}
	}
	if err := s2.Close(); err != nil {
		res.unclean = append(res.unclean, fmt.Sprintf("close after reopen: %v", err))
	}
	res.leaks = append(res.leaks, leaksSince(t, fdsBefore, goroutinesBefore)...)
	return res
}

func TestReliabilityIOFaultsStaging(t *testing.T) {
	base := t.TempDir()
	var clean *storeInjector
	for range 2 { // the first run warms up the runtime's own descriptors
		clean = &storeInjector{}
		if res := runStagingFaultScenario(t, filepath.Join(base, "clean"), clean); len(res.unclean)+len(res.partial)+len(res.leaks) != 0 {
			t.Fatalf("clean run: %+v", res)
		}
	}
	t.Logf("clean run: %d staging disk operations: %s", clean.calls, strings.Join(clean.sites, ", "))
	sites := map[string]bool{}
	for _, s := range clean.sites {
		sites[strings.Fields(s)[0]] = true
	}
	for _, op := range []string{"mkdir", "create", "write", "sync", "syncDir", "truncate", "remove"} {
		if !sites[op] {
			t.Errorf("the scenario never reaches a staging %q", op)
		}
	}
	tot := runFaultMatrix(t, clean, func(in *storeInjector) (int, []string, []string, []string) {
		res := runStagingFaultScenario(t, filepath.Join(base, "run"), in)
		return res.failedOps, res.unclean, res.partial, res.leaks
	})
	runs, failedOps, unclean, partial, leaks := tot.runs, tot.failedOps, tot.unclean, tot.partial, tot.leaks
	if failedOps == 0 {
		t.Fatal("no injected fault ever failed an operation: the hook does not reach the staging")
	}
	figures.Report(t, 3, "staging fault sites exercised", fmt.Sprintf("%d multipart and resumable disk operations, %d faulted runs, %d operations failed",
		clean.calls, runs, failedOps))
	figures.Check(t, 3, "staging: unclean failures", unclean, 0)
	figures.Check(t, 3, "staging: partial objects visible", partial, 0)
	figures.Check(t, 3, "staging: leaked descriptors or staging files", leaks, 0)
}
