package segment

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "KURA_SEGMENT_CRASH_CHILD_DIR"

// crashOptions are shared by the child and the parent's reopen: small segments and a low
// spill threshold so a short run rolls segments and commits spilled records too.
func crashOptions(dir string) Options {
	return Options{Dir: dir + "/segments", TmpDir: dir + "/tmp", TargetSegmentBytes: 1 << 20, SpillThreshold: 64 << 10}
}

// crashChild runs in the re-executed test binary: it commits from several goroutines forever
// and prints each record's location once Commit has returned, until it is killed.
func crashChild(dir string) {
	m, err := Open(crashOptions(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	run := os.Getenv("KURA_SEGMENT_CRASH_RUN")
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				name := fmt.Sprintf("run%s/g%d/%d", run, g, i)
				seed := uint64(len(run))<<40 | uint64(g)<<32 | uint64(i)
				size := int(seed * 2654435761 % (16 << 10))
				if i%16 == 15 {
					size = 64<<10 + int(seed%(200<<10)) // spilled
				}
				body := testBody(seed, size)
				loc, err := tryCommit(context.Background(), m, name, body)
				if err != nil {
					fmt.Fprintln(os.Stderr, "commit:", err)
					os.Exit(2)
				}
				sum := sha256.Sum256(body)
				mu.Lock()
				// One line per record, flushed whole, so the parent only ever sees complete
				// lines for records whose Commit returned.
				fmt.Fprintf(out, "%d %d %d %d %s %s\n", loc.Segment, loc.Offset, loc.BodySize, loc.RecordSize, hex.EncodeToString(sum[:]), name)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

type ackedRecord struct {
	loc  Location
	sum  string
	name string
}

// TestCrashKill9 kills a committing child process with SIGKILL, twice, and checks that every
// record whose Commit returned before the kill reads back intact after reopening.
func TestCrashKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	dir := t.TempDir()
	var acked []ackedRecord
	for run := range 2 {
		got := runCrashChild(t, dir, run, 1500)
		t.Logf("run %d: %d records acknowledged before SIGKILL", run, len(got))
		acked = append(acked, got...)

		m, err := Open(crashOptions(dir))
		if err != nil {
			t.Fatalf("reopen after kill: %v", err)
		}
		for _, r := range acked {
			rd, err := m.OpenRecord(context.Background(), r.loc, []byte(r.name), 0, -1)
			if err != nil {
				t.Fatalf("acknowledged record %s at %+v: %v", r.name, r.loc, err)
			}
			h := sha256.New()
			_, err = io.Copy(h, rd)
			rd.Close()
			if err != nil || hex.EncodeToString(h.Sum(nil)) != r.sum {
				t.Fatalf("acknowledged record %s at %+v: read %v, digest match %v", r.name, r.loc, err, hex.EncodeToString(h.Sum(nil)) == r.sum)
			}
		}
		// Open removed what the killed commits were staging.
		if left, _ := os.ReadDir(crashOptions(dir).TmpDir); len(left) != 0 {
			t.Fatalf("staging files survived reopen: %d", len(left))
		}
		// The reopened manager keeps working after the crash tail.
		loc := commit(t, m, "after-crash", []byte("still writable"))
		mustRead(t, m, loc, "after-crash", []byte("still writable"))
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d acknowledged records verified intact across 2 kills", len(acked))
}

// runCrashChild starts the child, waits until it acknowledged at least want records, kills it
// with SIGKILL mid-flight and returns every complete line it printed.
func runCrashChild(t *testing.T, dir string, run, want int) []ackedRecord {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("KURA_SEGMENT_CRASH_RUN=%d", run))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	readDone := make(chan error, 1)
	go func() {
		br := bufio.NewReader(stdout)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				// A line cut by the kill has no newline: its record is not acknowledged.
				readDone <- err
				close(lines)
				return
			}
			lines <- line
		}
	}()
	var recs []ackedRecord
	deadline := time.After(60 * time.Second)
	killed := false
	for line := range lines {
		recs = append(recs, parseAcked(t, line))
		if !killed && len(recs) >= want {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
		select {
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("child acknowledged only %d records in 60s", len(recs))
		default:
		}
	}
	if err := <-readDone; err != io.EOF {
		t.Fatalf("reading child output: %v", err)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v", err)
	}
	return recs
}

func parseAcked(t *testing.T, line string) ackedRecord {
	t.Helper()
	var r ackedRecord
	fields := strings.SplitN(strings.TrimSuffix(line, "\n"), " ", 6)
	if len(fields) != 6 {
		t.Fatalf("bad child line %q", line)
	}
	if _, err := fmt.Sscan(strings.Join(fields[:4], " "), &r.loc.Segment, &r.loc.Offset, &r.loc.BodySize, &r.loc.RecordSize); err != nil {
		t.Fatalf("bad child line %q: %v", line, err)
	}
	r.sum, r.name = fields[4], fields[5]
	return r
}
