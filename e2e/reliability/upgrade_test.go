package reliability

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// previousReleaseCommit is the build the rolling-upgrade test runs beside HEAD when the
// repository has no release tag: the last commit before the reliability suite's first one
// (issue 13), i.e. the release the suite's changes upgrade from. KURA_PREVIOUS_RELEASE names
// another commit or tag.
const previousReleaseCommit = "24e3a1d6bb352e3a979b8b54ac19d6fbe5d1728d"

// upgradeAntiEntropyMS keeps sweeps frequent so convergence is measured in seconds.
const upgradeAntiEntropyMS = "500"

// TestReliabilityRollingUpgrade (item 13) runs a node built from the previous release beside
// a node built from HEAD:
//   - each writes alone first, then they join: anti-entropy (and bootstrap) between the two
//     builds must converge both ways;
//   - writes on either side replicate to the other while they run together;
//   - the previous build's data directory then opens on HEAD (the upgrade) and HEAD's opens on
//     the previous build (the rollback), each alone, so every read is served from local disk:
//     every object must be intact on both.
func TestReliabilityRollingUpgrade(t *testing.T) {
	harness.RequireKura(t)
	prevBin, prevRev := buildPreviousRelease(t)
	t.Logf("previous release %s built at %s", prevRev, prevBin)

	env := map[string]string{"KURA_ANTI_ENTROPY_INTERVAL_MS": upgradeAntiEntropyMS, "KURA_GOSSIP_REJOIN_INTERVAL_MS": "500"}
	perSide := figures.Pick(40, 400)
	maxSize := figures.Pick(256<<10, 4<<20)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))

	prev := harness.StartNode(t, harness.NodeOptions{Name: "prev", Binary: prevBin, Env: env})
	head := harness.StartNode(t, harness.NodeOptions{Name: "head", Env: env})

	// 1. Apart: each build writes objects its peer has never seen and no outbox will push.
	apartPrev := putBlobs(t, prev, "apart-prev", perSide, maxSize, rng)
	apartHead := putBlobs(t, head, "apart-head", perSide, maxSize, rng)
	putKeyValues(t, prev, "kv-prev", perSide/4)
	prev.Stop()
	head.Stop()

	// 2. Together: the two builds join; anti-entropy must bring each the other's objects.
	prev.SetPeers([]string{head.GossipAddr()})
	head.SetPeers([]string{prev.GossipAddr()})
	prev.Restart()
	head.Restart()
	waitRingSize(t, 2, prev, head)
	joined := time.Now()
	want := float64(2*perSide + perSide/4) // both sides' blobs and the previous build's keyvalue entries
	harness.PollUntil(t, 2*time.Minute, "anti-entropy between the previous build and HEAD", func() (bool, string) {
		p := harness.ScrapeMetrics(t, prev).Sum("kura_storage_index_objects", nil)
		h := harness.ScrapeMetrics(t, head).Sum("kura_storage_index_objects", nil)
		return p >= want && h >= want, fmt.Sprintf("prev holds %v objects, head %v, want %v", p, h, want)
	})
	figures.Report(t, 13, "anti-entropy prev⇄HEAD converged after joining", time.Since(joined).Round(100*time.Millisecond).String())

	// 3. Live replication in both directions, plus a last-writer-wins keyvalue overwritten
	// across builds.
	livePrev := putBlobs(t, prev, "live-prev", perSide, maxSize, rng)
	liveHead := putBlobs(t, head, "live-head", perSide, maxSize, rng)
	kvHead := putKeyValues(t, head, "kv-prev", perSide/4) // the same ids: HEAD's later write wins
	waitOutboxDrained(t, prev, head)
	prev.Stop()
	head.Stop()

	// 4. Upgrade: the previous build's directory on HEAD, alone (no peer to read through to).
	prev.SetBinary("")
	prev.SetPeers(nil)
	prev.Restart()
	checkHeld(t, prev, "objects intact after HEAD opened the previous build's data directory",
		apartPrev, apartHead, livePrev, liveHead)
	figures.Check(t, 13, "writes on HEAD replicated to the previous build", fraction(t, prev, liveHead), "100 %")
	figures.Check(t, 13, "HEAD's objects pulled by the previous build's anti-entropy", fraction(t, prev, apartHead), "100 %")
	checkKeyValues(t, prev, kvHead)
	prev.Stop()

	// 5. Rollback: HEAD's directory (now carrying its format marker) on the previous build.
	head.SetBinary(prevBin)
	head.SetPeers(nil)
	head.Restart()
	checkHeld(t, head, "objects intact after the previous build opened HEAD's data directory",
		apartPrev, apartHead, livePrev, liveHead)
	figures.Check(t, 13, "writes on the previous build replicated to HEAD", fraction(t, head, livePrev), "100 %")
	figures.Check(t, 13, "the previous build's objects pulled by HEAD's anti-entropy", fraction(t, head, apartPrev), "100 %")
	checkKeyValues(t, head, kvHead)
}

// buildPreviousRelease builds the previous release's kura (race-instrumented like the binary
// under test, so the build reuses its compiled dependencies) and caches it by commit.
func buildPreviousRelease(t *testing.T) (bin, rev string) {
	t.Helper()
	root := harness.ModuleRoot()
	rev = os.Getenv("KURA_PREVIOUS_RELEASE")
	if rev == "" {
		// The newest release tag before HEAD, else the commit before this suite.
		if out, err := exec.Command("git", "-C", root, "describe", "--tags", "--abbrev=0", "HEAD^").Output(); err == nil {
			rev = strings.TrimSpace(string(out))
		} else {
			rev = previousReleaseCommit
		}
	}
	out, err := exec.Command("git", "-C", root, "rev-parse", "--verify", "--quiet", rev+"^{commit}").Output()
	if err != nil {
		t.Skipf("the previous release %s is not in this clone's history (a shallow clone?): %v", rev, err)
	}
	commit := strings.TrimSpace(string(out))
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "kura-reliability", fmt.Sprintf("%s-race-%v", commit[:12], harness.Race()))
	bin = filepath.Join(dir, "kura")
	if _, err := os.Stat(bin); err == nil {
		return bin, rev
	}
	src := t.TempDir()
	extract := exec.Command("sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", root, commit, src)
	if out, err := extract.CombinedOutput(); err != nil {
		t.Fatalf("extract %s: %v\n%s", commit, err, out)
	}
	staging := t.TempDir()
	start := time.Now()
	built, err := harness.Build(src, staging, harness.Race())
	if err != nil {
		t.Fatalf("build the previous release: %v", err)
	}
	t.Logf("built the previous release in %s", time.Since(start).Round(time.Second))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Copy then rename: a concurrent or interrupted run never sees half a binary.
	data, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	tmp := bin + ".tmp" + fmt.Sprint(os.Getpid())
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin, rev
}

// blob is one stored CAS object: its body and its SHA-256 key.
type blob struct {
	key  string
	body []byte
}

// putBlobs stores n Bazel HTTP CAS blobs of 1 KiB to maxSize bytes on node.
func putBlobs(t *testing.T, node *harness.Node, label string, n, maxSize int, rng *rand.Rand) []blob {
	t.Helper()
	out := make([]blob, n)
	client := node.Client(time.Minute)
	for i := range out {
		body := make([]byte, 1<<10+rng.IntN(maxSize-1<<10+1))
		copy(body, fmt.Sprintf("%s-%d-", label, i))
		for j := len(label) + 8; j < len(body); j += 97 {
			body[j] = byte(rng.Uint32())
		}
		sum := sha256.Sum256(body)
		out[i] = blob{key: hex.EncodeToString(sum[:]), body: body}
		req, err := http.NewRequest(http.MethodPut, node.URL()+"/cas/"+out[i].key, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: PUT blob %d: %v", node.Name, i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s: PUT blob %d: status %d", node.Name, i, resp.StatusCode)
		}
	}
	return out
}

// getBlob reads one blob back; ok is false on a miss or a body that differs.
func getBlob(node *harness.Node, b blob) (ok bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, node.URL()+"/cas/"+b.key, nil)
	if err != nil {
		return false, err
	}
	resp, err := node.Client(time.Minute).Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if !bytes.Equal(body, b.body) {
			return false, fmt.Errorf("blob %s: %d bytes served differ from the %d stored", b.key[:12], len(body), len(b.body))
		}
		return true, nil
	case http.StatusNotFound:
		return false, nil
	default:
		return false, fmt.Errorf("blob %s: status %d", b.key[:12], resp.StatusCode)
	}
}

// fraction is the share of blobs node serves intact, as "100 %" or "n/total".
func fraction(t *testing.T, node *harness.Node, blobs []blob) string {
	t.Helper()
	held := 0
	for _, b := range blobs {
		ok, err := getBlob(node, b)
		if err != nil {
			t.Errorf("%s: %v", node.Name, err)
		}
		if ok {
			held++
		}
	}
	if held == len(blobs) {
		return "100 %"
	}
	return fmt.Sprintf("%d/%d", held, len(blobs))
}

// checkHeld records the figure name as the share of every given blob node serves intact.
func checkHeld(t *testing.T, node *harness.Node, name string, sets ...[]blob) {
	t.Helper()
	var all []blob
	for _, s := range sets {
		all = append(all, s...)
	}
	figures.Check(t, 13, name, fraction(t, node, all), "100 %")
}

// putKeyValues writes n keyvalue entries named label-i whose values name the node's build.
func putKeyValues(t *testing.T, node *harness.Node, label string, n int) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := range n {
		id := fmt.Sprintf("%s-%d", label, i)
		value := fmt.Sprintf("written by %s at %d", node.Name, time.Now().UnixNano())
		doc := fmt.Sprintf(`{"cas_id":%q,"entries":[{"value":%q}]}`, id, value)
		req, err := http.NewRequest(http.MethodPut, node.URL()+"/api/cache/keyvalue?tenant_id=default&namespace_id=upgrade", strings.NewReader(doc))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := node.Client(time.Minute).Do(req)
		if err != nil {
			t.Fatalf("%s: PUT keyvalue %s: %v", node.Name, id, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%s: PUT keyvalue %s: status %d", node.Name, id, resp.StatusCode)
		}
		out[id] = value
	}
	return out
}

// checkKeyValues records how many of the last-writer-wins entries node serves with the last
// value written (HEAD's, written after the previous build's).
func checkKeyValues(t *testing.T, node *harness.Node, want map[string]string) {
	t.Helper()
	current := 0
	for id, value := range want {
		resp, err := node.Client(time.Minute).Get(node.URL() + "/api/cache/keyvalue/" + id + "?tenant_id=default&namespace_id=upgrade")
		if err != nil {
			t.Fatalf("%s: GET keyvalue %s: %v", node.Name, id, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(value)) {
			current++
		} else {
			t.Logf("%s: keyvalue %s: status %d, %q; want the value %q", node.Name, id, resp.StatusCode, body, value)
		}
	}
	figures.Check(t, 13, fmt.Sprintf("last-writer-wins entries overwritten across builds, current on %s", node.Name),
		fmt.Sprintf("%d/%d", current, len(want)), fmt.Sprintf("%d/%d", len(want), len(want)))
}

// waitRingSize waits until every node counts size live members (/up ring_members, which
// every release reports).
func waitRingSize(t *testing.T, size int, nodes ...*harness.Node) {
	t.Helper()
	harness.PollUntil(t, time.Minute, fmt.Sprintf("a ring of %d", size), func() (bool, string) {
		for _, n := range nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			up, err := n.Up(ctx)
			cancel()
			if err != nil {
				return false, err.Error()
			}
			if up.RingMembers != size {
				return false, fmt.Sprintf("%s counts %d members", n.Name, up.RingMembers)
			}
		}
		return true, ""
	})
}

// waitOutboxDrained waits until no node holds an outbox entry for any peer.
func waitOutboxDrained(t *testing.T, nodes ...*harness.Node) {
	t.Helper()
	harness.PollUntil(t, 2*time.Minute, "outboxes drained", func() (bool, string) {
		for _, n := range nodes {
			if d := harness.ScrapeMetrics(t, n).Sum("kura_outbox_depth", nil); d != 0 {
				return false, fmt.Sprintf("%s: kura_outbox_depth %v", n.Name, d)
			}
		}
		return true, ""
	})
}

// TestReliabilityNewerDataFormatRefused (item 13): a data directory whose layout version this
// build cannot read (a newer release wrote it) stops startup with a message naming the
// version, before anything in it is opened or changed.
func TestReliabilityNewerDataFormatRefused(t *testing.T) {
	node := harness.Prepare(t, harness.NodeOptions{}, 0)
	if err := os.MkdirAll(node.DataDir, 0o750); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(node.DataDir, "KURA_FORMAT")
	if err := os.WriteFile(marker, []byte("kura-data-format 2\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary())
	cmd.Env = node.Environ()
	out, err := cmd.CombinedOutput()
	refused := err != nil && ctx.Err() == nil && strings.Contains(string(out), "format version 2")
	if !refused {
		t.Logf("kura on a format-2 directory: %v\n%s", err, out)
	}
	figures.Check(t, 13, "a data directory of a newer format refused at startup, naming its version", refused, true)
	if _, err := os.Stat(filepath.Join(node.DataDir, "meta")); err == nil {
		t.Errorf("the refused directory gained a metadata database")
	}
}
