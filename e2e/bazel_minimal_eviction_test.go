package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBazelMinimalSurvivesEviction is a build without the bytes at 100 % of a small disk
// budget: Bazel 4.2 fills the cache, cleans, and builds again with --remote_download_minimal
// (every action a remote hit, nothing downloaded: Bazel only remembers the outputs are in the
// cache); other clients then fill the budget so eviction retires the segments the outputs
// were in; finally two actions change, and Bazel downloads the outputs they consume (the
// 20 MB big.bin and hello.txt) from the cache. GetActionResult and FindMissingBlobs refreshed
// those outputs, so eviction moved them forward instead of dropping them, and the build
// succeeds with no failed download.
func TestBazelMinimalSurvivesEviction(t *testing.T) {
	t.Parallel()
	const budget = 48 << 20
	ws := newBazelWorkspace(t)
	node := StartNode(t, NodeOptions{Env: map[string]string{"KURA_DISK_BUDGET_BYTES": strconv.Itoa(budget)}})
	remote := "grpc://" + node.GRPCAddr()

	filled := ws.build(remote)
	checkNoRemoteHits(t, filled)
	ws.clean()
	minimal := ws.build(remote, "--remote_download_minimal")
	checkAllRemoteHits(t, filled, minimal)
	if _, err := os.Stat(filepath.Join(ws.dir, "bazel-bin", "big.bin")); err == nil {
		t.Fatal("--remote_download_minimal downloaded big.bin")
	}

	// Another client writes a budget's worth of blobs: the oldest segments, holding the
	// build's outputs, are retired.
	dropped := func() float64 {
		return metric(t, node, "kura_storage_eviction_records_total", map[string]string{"action": "dropped"})
	}
	droppedBefore := dropped()
	const fillerSize = 2 << 20
	for i := range budget / fillerSize {
		body := bytes.Repeat([]byte{byte(i)}, fillerSize-16)
		body = fmt.Appendf(body, "%016d", i)
		sum := sha256.Sum256(body)
		got := do(t, request{Method: "PUT", URL: node.URL() + "/cas/" + hex.EncodeToString(sum[:]), Body: bytes.NewReader(body)})
		if got.Status >= 300 {
			t.Fatalf("filler PUT %d: %d %s", i, got.Status, got.Body)
		}
	}
	PollUntil(t, 30*time.Second, "eviction back within the budget", func() (bool, string) {
		used := metric(t, node, "kura_storage_segment_bytes", nil)
		return used <= budget, fmt.Sprintf("%v segment bytes", used)
	})
	moved := metric(t, node, "kura_storage_eviction_records_total", map[string]string{"action": "moved"})
	if dropped() == droppedBefore {
		t.Fatal("filling the budget dropped no record: eviction did not run")
	}

	// Two actions change, so Bazel runs them and fetches their inputs, which it only knew as
	// remote outputs of the minimal build.
	build := filepath.Join(ws.dir, "BUILD")
	src := string(readFile(t, build))
	changed := strings.NewReplacer(
		`cmd = "tr a-z A-Z < $< > $@",`, `cmd = "tr a-z A-Z < $< > $@ && echo changed >> $@",`,
		`cmd = "sha256sum $< | cut -d' ' -f1 > $@",`, `cmd = "sha256sum $< | cut -d' ' -f1 > $@ && echo changed >> $@",`,
	).Replace(src)
	if changed == src {
		t.Fatal("the BUILD file no longer has the commands this test changes")
	}
	if err := os.WriteFile(build, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	// build fails the test on a non-zero exit (a failed download fails a Bazel 4.2 build).
	third := ws.build(remote, "--remote_download_minimal")
	if strings.Contains(third.Output, "Failed to fetch") || strings.Contains(third.Output, "CacheNotFoundException") {
		t.Fatalf("a download failed:\n%s", third.Output)
	}
	// Only the two changed actions run. Had eviction dropped big.bin, the completeness check
	// would have turned its action into a miss and Bazel would have run it again.
	var ran []string
	for _, sp := range third.Spawns {
		if !sp.RemoteCacheHit {
			ran = append(ran, sp.ProgressMessage)
		}
	}
	if len(ran) != 2 {
		t.Fatalf("the build after eviction ran %d actions %q, want only the 2 changed ones (an evicted output was a miss)", len(ran), ran)
	}
	if moved == 0 {
		t.Fatal("eviction moved no record forward: the refreshed outputs were not kept")
	}
	sum := strings.TrimSpace(strings.SplitN(string(readFile(t, filepath.Join(ws.dir, "bazel-bin", "big.sha256"))), "\n", 2)[0])
	if len(sum) != 64 {
		t.Fatalf("big.sha256 = %q after the rebuild", sum)
	}
	figure(t, "bazel minimal at a %d MiB budget: %d hits without the bytes, then %v records dropped and %v moved forward by eviction; 0 failed downloads when two actions consumed them",
		budget>>20, minimal.RemoteHits(), dropped()-droppedBefore, moved)
}
