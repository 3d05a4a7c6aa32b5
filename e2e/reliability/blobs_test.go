package reliability

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

// The helpers of the storage items (crash under load, bit rot, eviction soak): deterministic
// blob bodies that are regenerated instead of kept in memory, and streaming comparisons of
// what a node serves against them.

// seedEnv replays a storage item with the seed its log printed.
const seedEnv = "KURA_RELIABILITY_SEED"

// itemSeed is the run's random seed: KURA_RELIABILITY_SEED, else the clock. It is logged so
// that a failure can be replayed.
func itemSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(seedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", seedEnv, err)
		}
		seed = v
	}
	t.Logf("random seed %d (replay with %s=%d)", seed, seedEnv, seed)
	return seed
}

// blobSpec names a blob body by its generator inputs: the same spec always yields the same
// bytes, so a 64 MiB body is never held in memory by the test.
type blobSpec struct {
	seed, id uint64
	size     int64
}

// body streams the blob's bytes (ChaCha8 keyed by seed and id).
func (b blobSpec) body() io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], b.seed)
	binary.LittleEndian.PutUint64(key[8:], b.id)
	binary.LittleEndian.PutUint64(key[16:], uint64(b.size))
	return io.LimitReader(rand.NewChaCha8(key), b.size)
}

// digest is the blob's SHA-256 in hex (the CAS key).
func (b blobSpec) digest() string {
	h := sha256.New()
	if _, err := io.Copy(h, b.body()); err != nil {
		panic(err) // the generator cannot fail
	}
	return hex.EncodeToString(h.Sum(nil))
}

// bytes materialises a small blob.
func (b blobSpec) bytes() []byte {
	out, _ := io.ReadAll(b.body())
	return out
}

// served is what one GET delivered, compared byte by byte with what was written.
type served struct {
	status   int
	received int64 // body bytes that arrived
	badBytes int64 // of those, bytes that differ from the original (or lie past its end)
	readErr  error // the body stream broke (a cut connection) before its end
}

// whole reports a complete, byte-identical body.
func (s served) whole(size int64) bool {
	return s.status == http.StatusOK && s.readErr == nil && s.received == size && s.badBytes == 0
}

// compareStream reads got to its end and compares it with want, counting differing bytes and
// bytes beyond want's end.
func compareStream(got io.Reader, want io.Reader) (received, bad int64, err error) {
	wantBuf := bufio.NewReaderSize(want, 64<<10)
	buf := make([]byte, 64<<10)
	exp := make([]byte, 64<<10)
	for {
		n, rerr := got.Read(buf)
		if n > 0 {
			m, _ := io.ReadFull(wantBuf, exp[:n])
			for i := 0; i < m; i++ {
				if buf[i] != exp[i] {
					bad++
				}
			}
			bad += int64(n - m) // past the original's end
			received += int64(n)
		}
		if rerr == io.EOF {
			return received, bad, nil
		}
		if rerr != nil {
			return received, bad, rerr
		}
	}
}

// getCompared GETs url and compares the body with spec's bytes as it streams in.
func getCompared(ctx context.Context, client *http.Client, url string, spec blobSpec) (served, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return served{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return served{}, err
	}
	defer resp.Body.Close()
	s := served{status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return s, nil
	}
	s.received, s.badBytes, s.readErr = compareStream(resp.Body, spec.body())
	return s, nil
}

// sendBody sends body (of size bytes) with method to url and returns the status.
func sendBody(ctx context.Context, client *http.Client, method, url string, body io.Reader, size int64, contentType string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return 0, err
	}
	req.ContentLength = size
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, nil
}

// putBazelCAS uploads spec to the Bazel HTTP CAS of node (hash-verified by kura) under digest.
func putBazelCAS(ctx context.Context, client *http.Client, node *harness.Node, spec blobSpec, digest string) (int, error) {
	return sendBody(ctx, client, http.MethodPut, bazelCASURL(node, digest), spec.body(), spec.size, "application/octet-stream")
}

// bazelCASURL is the Bazel HTTP cache address of a CAS blob on node.
func bazelCASURL(node *harness.Node, digest string) string { return node.URL() + "/cas/" + digest }

// scrapeSum sums the samples of a Prometheus family on node whose labels include labels
// (a family that is absent sums to 0). The text format is parsed directly: one line per
// sample, `name{k="v",…} value`.
func scrapeSum(t testing.TB, node *harness.Node, name string, labels map[string]string) float64 {
	t.Helper()
	resp, err := node.Client(30 * time.Second).Get(node.URL() + "/metrics")
	if err != nil {
		t.Fatalf("GET %s/metrics: %v", node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: status %d", node.Name, resp.StatusCode)
	}
	var total float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var labelText string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndex(rest, "}")
			if end < 0 {
				continue
			}
			labelText, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another family whose name starts with this one
		}
		for k, v := range labels {
			if !strings.Contains(labelText, k+`="`+v+`"`) {
				continue lines
			}
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Fatalf("%s metric line %q: %v", node.Name, line, err)
		}
		total += v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s/metrics: %v", node.Name, err)
	}
	return total
}

// percentWhole renders part of whole as the figures print it: "100 %" exactly when nothing is
// missing (never rounded up to it).
func percentWhole(part, whole int) string {
	if whole == 0 || part == whole {
		return "100 %"
	}
	v := float64(part) * 100 / float64(whole)
	if v > 99.99 {
		v = 99.99
	}
	return fmt.Sprintf("%.2f %% (%d of %d)", v, part, whole)
}

// readyTimeStats renders p50 and max of ds.
func readyTimeStats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	sorted := append([]time.Duration(nil), ds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	p50 := sorted[(len(sorted)-1)/2]
	return fmt.Sprintf("p50 %s, max %s (%d restarts)", p50.Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond), len(sorted))
}

// logLinesWith counts the lines of node's log that contain every one of parts.
func logLinesWith(t testing.TB, node *harness.Node, parts ...string) int {
	t.Helper()
	data, err := os.ReadFile(node.LogPath())
	if err != nil {
		t.Fatalf("read %s's log: %v", node.Name, err)
	}
	n := 0
	for _, line := range bytes.Split(data, []byte("\n")) {
		ok := true
		for _, p := range parts {
			if !bytes.Contains(line, []byte(p)) {
				ok = false
				break
			}
		}
		if ok {
			n++
		}
	}
	return n
}
