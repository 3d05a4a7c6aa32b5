package e2e

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// resumeSize is the body of TestCurlResumesCutDownload: 256 MiB by default (CI runs it in
// about half a minute with the race detector), the whole 2 GiB limit of the objects surface
// with KURA_E2E_RANGE_LARGE=1.
func resumeSize() int64 {
	if os.Getenv("KURA_E2E_RANGE_LARGE") == "1" {
		return 2 << 30
	}
	return 256 << 20
}

// patternReader generates a deterministic body of n bytes without holding it: 1 MiB blocks
// of a fixed pseudo-random pattern, each stamped with its block number so no two blocks are
// alike (a resume at the wrong offset cannot produce the right digest).
type patternReader struct {
	n, off int64
	block  []byte
}

func newPatternReader(n int64) *patternReader {
	block := make([]byte, 1<<20)
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i < len(block); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(block[i:], x)
	}
	return &patternReader{n: n, block: block}
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	blockNo := p.off / int64(len(p.block))
	in := p.off % int64(len(p.block))
	if in == 0 {
		binary.LittleEndian.PutUint64(p.block, uint64(blockNo))
	}
	n := copy(b, p.block[in:min(int64(len(p.block)), in+p.n-p.off)])
	p.off += int64(n)
	return n, nil
}

// TestCurlResumesCutDownload stores a large generated body (streamed, never in memory), starts
// a real curl download of it, kills curl once it has half, and resumes with `curl -C -`: the
// resumed request is a 206 for exactly the rest, and the file's SHA-256 is the body's.
func TestCurlResumesCutDownload(t *testing.T) {
	t.Parallel()
	curl := requireCommand(t, "curl")
	size := resumeSize()
	node := StartNode(t, NodeOptions{})
	url := node.URL() + "/api/cache/objects/acme/downloads/artifact.bin"

	start := time.Now()
	sum := sha256.New()
	req, err := http.NewRequest(http.MethodPut, url, io.TeeReader(newPatternReader(size), sum))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	resp, err := node.Client(10 * time.Minute).Do(req)
	if err != nil {
		t.Fatalf("PUT %d bytes: %v", size, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT %d bytes: status %d", size, resp.StatusCode)
	}
	want := hex.EncodeToString(sum.Sum(nil))
	uploadTook := time.Since(start)

	// The first download is rate-limited so that it is still running when it is cut: at
	// size/8 per second it has half the body after about four seconds.
	out := filepath.Join(t.TempDir(), "artifact.bin")
	first := exec.Command(curl, "--silent", "--show-error", "--limit-rate", fmt.Sprint(size/8), "-o", out, url)
	first.Env = clientEnv()
	first.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- first.Wait() }()
	t.Cleanup(func() {
		_ = first.Process.Kill()
		<-waited
	})
	PollUntil(t, 2*time.Minute, "curl has half the body", func() (bool, string) {
		fi, err := os.Stat(out)
		if err != nil {
			return false, err.Error()
		}
		return fi.Size() >= size/2, fmt.Sprintf("%d of %d bytes", fi.Size(), size)
	})
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("cut the download: %v", err)
	}
	if err := <-waited; err == nil {
		t.Fatal("the first curl finished before it was cut; lower its rate")
	}
	waited <- nil // for the cleanup
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	cutAt := fi.Size()
	if cutAt >= size {
		t.Fatalf("the cut download already has all %d bytes", size)
	}

	start = time.Now()
	stats := runClient(t, t.TempDir(), clientEnv(), curl, "--silent", "--show-error", "--fail", "-C", "-",
		"-o", out, "-w", "%{http_code} %{size_download}", url)
	resumeTook := time.Since(start)
	if want := fmt.Sprintf("206 %d", size-cutAt); strings.TrimSpace(stats) != want {
		t.Fatalf("resumed download: curl reports %q, want %q (status, bytes)", stats, want)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := sha256.New()
	n, err := io.Copy(got, f)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || hex.EncodeToString(got.Sum(nil)) != want {
		t.Fatalf("resumed file: %d bytes, sha256 %x; want %d bytes, %s", n, got.Sum(nil), size, want)
	}
	figure(t, "%d MiB stored in %s; curl cut at %d MiB and resumed with -C - (206, %d MiB) in %s; sha256 matches",
		size>>20, uploadTook.Round(time.Millisecond), cutAt>>20, (size-cutAt)>>20, resumeTook.Round(time.Millisecond))
}
