package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// turboWorkspace is a copy of testdata/workspaces/turbo (two npm workspace packages, b
// depending on a, each with a build task writing dist/out.txt) wired to the pinned turbo.
type turboWorkspace struct {
	t     *testing.T
	dir   string
	turbo string
	// signed turns remoteCache.signature on in turbo.json.
	signed bool
	// token is TURBO_TOKEN.
	token string
}

func newTurboWorkspace(t *testing.T, signed bool) *turboWorkspace {
	t.Helper()
	turbo := requireNodeClient(t, "turbo")
	git := requireCommand(t, "git")
	dir := copyWorkspace(t, "turbo", map[string]string{"SIGNATURE": strconv.FormatBool(signed)})
	// turbo runs its platform binary (the optional @turbo/linux-64) from the shared install.
	if err := os.Symlink(nodeClients(t), filepath.Join(dir, "node_modules")); err != nil {
		t.Fatalf("link node_modules: %v", err)
	}
	// turbo hashes the files git sees; dist and .turbo are git-ignored so the task hashes
	// stay the same from one run to the next.
	runClient(t, dir, clientEnv(), git, "init", "-q", ".")
	return &turboWorkspace{t: t, dir: dir, turbo: turbo, signed: signed, token: "e2e-token"}
}

// turboRun is one `turbo run build --summarize` as its run summary reports it.
type turboRun struct {
	output string
	// remoteHits counts tasks restored from the remote cache; tasks is all of them.
	remoteHits, tasks int
	// outputs maps a package to its dist/out.txt after the run.
	outputs map[string]string
}

var turboSummaryPath = regexp.MustCompile(`Summary:\s+(\S+\.json)`)

// build runs the build task of both packages against server's remote cache only (turbo's
// local cache is off, so every hit comes from Kura), with team as TURBO_TEAM ("team_…" is
// sent as ?teamId=, anything else as ?slug=) and key as the signature key when signed.
func (w *turboWorkspace) build(server, team, key string) turboRun {
	w.t.Helper()
	env := clientEnv(
		"TURBO_API="+server,
		"TURBO_TOKEN="+w.token,
		"TURBO_TEAM="+team,
		"TURBO_TELEMETRY_DISABLED=1",
		"DO_NOT_TRACK=1",
		"TURBO_NO_UPDATE_NOTIFIER=1",
		"TURBO_UI=false",
	)
	if w.signed {
		env = append(env, "TURBO_REMOTE_CACHE_SIGNATURE_KEY="+key)
	}
	out := runClient(w.t, w.dir, env, w.turbo, "run", "build", "--cache=remote:rw", "--summarize", "--output-logs=full")
	m := turboSummaryPath.FindStringSubmatch(out)
	if m == nil {
		w.t.Fatalf("turbo printed no run summary path:\n%s", out)
	}
	var summary struct {
		Tasks []struct {
			TaskID string `json:"taskId"`
			Cache  struct {
				Remote bool   `json:"remote"`
				Status string `json:"status"`
				Source string `json:"source"`
			} `json:"cache"`
		} `json:"tasks"`
	}
	if err := json.Unmarshal(readFile(w.t, m[1]), &summary); err != nil {
		w.t.Fatalf("parse run summary %s: %v", m[1], err)
	}
	run := turboRun{output: out, tasks: len(summary.Tasks), outputs: map[string]string{}}
	for _, task := range summary.Tasks {
		if task.Cache.Status == "HIT" && task.Cache.Source == "REMOTE" {
			run.remoteHits++
		}
	}
	for _, pkg := range []string{"a", "b"} {
		run.outputs[pkg] = string(readFile(w.t, filepath.Join(w.dir, "packages", pkg, "dist", "out.txt")))
	}
	return run
}

// forget removes the task outputs and everything turbo keeps locally, as on a fresh checkout.
func (w *turboWorkspace) forget() {
	w.t.Helper()
	for _, p := range []string{".turbo", "packages/a/dist", "packages/b/dist", "packages/a/.turbo", "packages/b/.turbo"} {
		if err := os.RemoveAll(filepath.Join(w.dir, p)); err != nil {
			w.t.Fatalf("remove %s: %v", p, err)
		}
	}
}

// expectRestored checks a second run: every task a remote hit, outputs those of the first.
func expectRestored(t *testing.T, first, second turboRun) {
	t.Helper()
	if second.tasks != 2 || second.remoteHits != second.tasks || !strings.Contains(second.output, "FULL TURBO") {
		t.Fatalf("second run: %d of %d tasks were remote hits, want all of them:\n%s", second.remoteHits, second.tasks, second.output)
	}
	for pkg, want := range first.outputs {
		if second.outputs[pkg] != want {
			t.Fatalf("package %s: restored output %q, the first run wrote %q", pkg, second.outputs[pkg], want)
		}
	}
}

// turboQuery asks node about hashes through the artifact query API.
func turboQuery(t *testing.T, n *Node, teamParam string, hashes []string) map[string]map[string]any {
	t.Helper()
	body, _ := json.Marshal(map[string][]string{"hashes": hashes})
	req, err := http.NewRequest(http.MethodPost, n.URL()+"/v8/artifacts?"+teamParam, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer e2e-token")
	resp, err := n.Client(10 * time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v8/artifacts: %d, %v", resp.StatusCode, err)
	}
	return out
}

var turboTaskHash = regexp.MustCompile(`cache (?:miss|hit),[^\n]*?\b([0-9a-f]{16})\b`)

// taskHashes are the task hashes turbo printed.
func taskHashes(out string) []string {
	var hs []string
	for _, m := range turboTaskHash.FindAllStringSubmatch(out, -1) {
		hs = append(hs, m[1])
	}
	return hs
}

// TestTurboRemoteCache runs the real turbo 2 CLI against one node: a first run uploads both
// tasks, a second from a clean checkout restores both from Kura, with remoteCache.signature
// off and on (then turbo verifies the stored x-artifact-tag, and a wrong key gets no hit).
func TestTurboRemoteCache(t *testing.T) {
	t.Parallel()
	node := StartNode(t, NodeOptions{})

	t.Run("unsigned", func(t *testing.T) {
		ws := newTurboWorkspace(t, false)
		before := ScrapeMetrics(t, node).Artifacts("turbo")
		first := ws.build(node.URL(), "acme-web", "")
		if first.remoteHits != 0 || first.tasks != 2 {
			t.Fatalf("first run on an empty cache: %d remote hits of %d tasks:\n%s", first.remoteHits, first.tasks, first.output)
		}
		afterFirst := ScrapeMetrics(t, node).Artifacts("turbo")
		if d := afterFirst.Sub(before); d.Misses != 2 || d.Stored != 2 {
			t.Fatalf("first run: want 2 misses and 2 uploads, got %+v", d)
		}
		ws.forget()
		start := time.Now()
		second := ws.build(node.URL(), "acme-web", "")
		took := time.Since(start).Round(time.Millisecond)
		expectRestored(t, first, second)
		if d := ScrapeMetrics(t, node).Artifacts("turbo").Sub(afterFirst); d.Hits != 2 || d.Stored != 0 {
			t.Fatalf("second run: want 2 hits and no upload, got %+v", d)
		}
		// The durations turbo sent came back with the artifacts (turbo's timeSaved).
		for h, info := range turboQuery(t, node, "slug=acme-web", taskHashes(first.output)) {
			if d, _ := info["taskDurationMs"].(float64); d <= 0 || info["size"] == nil {
				t.Fatalf("artifact %s: %v, want its size and a task duration", h, info)
			}
		}
		if events := ScrapeMetrics(t, node).Sum("kura_turbo_cache_events_total", map[string]string{"source": "remote", "event": "hit"}); events < 2 {
			t.Errorf("kura_turbo_cache_events_total{remote,hit} = %v, want turbo's 2 reported hits", events)
		}
		figure(t, "turbo run build: first run 0/2 remote hits (2 uploaded), second run from a clean checkout %d/%d remote hits in %s",
			second.remoteHits, second.tasks, took)
	})

	t.Run("signed", func(t *testing.T) {
		ws := newTurboWorkspace(t, true)
		first := ws.build(node.URL(), "team_signed", "e2e-signing-key")
		if first.remoteHits != 0 {
			t.Fatalf("first signed run: %d remote hits:\n%s", first.remoteHits, first.output)
		}
		hashes := taskHashes(first.output)
		if len(hashes) != 2 {
			t.Fatalf("task hashes %v in:\n%s", hashes, first.output)
		}
		for h, info := range turboQuery(t, node, "teamId=team_signed", hashes) {
			if tag, _ := info["tag"].(string); tag == "" {
				t.Fatalf("artifact %s has no stored x-artifact-tag: %v", h, info)
			}
		}
		ws.forget()
		second := ws.build(node.URL(), "team_signed", "e2e-signing-key")
		expectRestored(t, first, second)
		// turbo checks the tag against its own key: with another key no artifact is trusted.
		ws.forget()
		forged := ws.build(node.URL(), "team_signed", "another-key")
		if forged.remoteHits != 0 {
			t.Fatalf("a run with another signature key trusted %d artifacts:\n%s", forged.remoteHits, forged.output)
		}
		figure(t, "turbo with remoteCache.signature: first run 0/2, second %d/%d remote hits (tags verified), with a wrong key %d/%d",
			second.remoteHits, second.tasks, forged.remoteHits, forged.tasks)
	})
}

// TestTurboAcrossNodes uploads through node A with signatures on and, once B holds a replica,
// restores every task from B: the body, the duration and the signature tag all replicated,
// and B served them from its own store (no read-through to A).
func TestTurboAcrossNodes(t *testing.T) {
	t.Parallel()
	ws := newTurboWorkspace(t, true)
	nodes := startKuraCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	k := newClusterKit(t, nil)

	first := ws.build(a.URL(), "team_mesh", "mesh-key")
	if first.remoteHits != 0 {
		t.Fatalf("first run: %d remote hits:\n%s", first.remoteHits, first.output)
	}
	converged := k.waitConverged(t, convergeTimeout(2), 2, a, b)
	readThroughBefore := readThroughHits(t, b)
	ws.forget()
	start := time.Now()
	second := ws.build(b.URL(), "team_mesh", "mesh-key")
	took := time.Since(start).Round(time.Millisecond)
	expectRestored(t, first, second)
	if got := readThroughHits(t, b) - readThroughBefore; got != 0 {
		t.Errorf("B served %v reads through A: the run was not served from B's replica", got)
	}
	figure(t, "turbo (signed) filled node A; B held a replica %s later; from a clean checkout against B %d/%d remote hits in %s",
		converged, second.remoteHits, second.tasks, took)
}

// TestPolicyTurboTokens: turbo's bearer token reaches the policy (the static-tokens example).
// A read-only token runs the tasks, its uploads are refused with 403 and the run still
// succeeds; a read-write token uploads; the read-only token then restores every task; an
// unknown token gets 401 everywhere and turbo builds without the cache.
func TestPolicyTurboTokens(t *testing.T) {
	t.Parallel()
	ws := newTurboWorkspace(t, false)
	node := startPolicyNode(t, examplePolicy("static-tokens.lua"), map[string]string{"KURA_POLICY_TOKENS": staticTokens})

	before := ScrapeMetrics(t, node).Artifacts("turbo")
	ws.token = "ci-ro"
	if run := ws.build(node.URL(), "web", ""); run.remoteHits != 0 {
		t.Fatalf("read-only run on an empty cache: %d remote hits:\n%s", run.remoteHits, run.output)
	}
	if d := ScrapeMetrics(t, node).Artifacts("turbo").Sub(before); d.Stored != 0 || d.Rejected < 1 {
		t.Fatalf("the read-only token's upload was not refused: %+v", d)
	}

	ws.forget()
	ws.token = "ci-rw"
	first := ws.build(node.URL(), "web", "")
	if d := ScrapeMetrics(t, node).Artifacts("turbo").Sub(before); d.Stored != 2 {
		t.Fatalf("the read-write token's run did not upload both tasks: %+v", d)
	}

	ws.forget()
	ws.token = "ci-ro"
	expectRestored(t, first, ws.build(node.URL(), "web", ""))

	ws.forget()
	ws.token = "stolen"
	if run := ws.build(node.URL(), "web", ""); run.remoteHits != 0 || !strings.Contains(run.output, "401") {
		t.Fatalf("an unknown token: %d remote hits, want none and turbo's 401 warning:\n%s", run.remoteHits, run.output)
	}
}
