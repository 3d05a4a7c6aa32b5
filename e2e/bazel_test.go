package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

// bazelOutputs are the files of testdata/workspaces/bazel compared across builds. Each genrule
// output is unique per execution (a timestamp, random bytes), so equal bytes after a clean
// prove the file came from the cache.
var bazelOutputs = []string{"hello.txt", "upper.txt", "big.bin", "big.sha256", "hi"}

// bazelWorkspace is a copy of testdata/workspaces/bazel with a private output user root, so
// tests never share a Bazel server, caches or outputs with each other or the machine.
type bazelWorkspace struct {
	t              *testing.T
	bazel          string
	dir            string
	outputUserRoot string
	stubs          string
	builds         int
	// startupFlags are extra startup options every invocation carries (JVM flags, say).
	startupFlags []string
}

func newBazelWorkspace(t *testing.T) *bazelWorkspace {
	t.Helper()
	w := &bazelWorkspace{
		t:              t,
		bazel:          requireCommand(t, "bazel"),
		dir:            copyWorkspace(t, "bazel", nil),
		outputUserRoot: t.TempDir(),
		stubs:          filepath.Join(harness.ModuleRoot(), "e2e", "testdata", "bazel", "stubs"),
	}
	requireCommand(t, "gcc") // cc_binary uses the host's C toolchain
	// Cleanups run last-registered first: shut the server down, then make Bazel's read-only
	// output tree removable for t.TempDir's cleanup.
	t.Cleanup(func() { makeWritable(w.outputUserRoot) })
	t.Cleanup(func() {
		if _, err := runClientErr(t, w.dir, w.env(), w.bazel, w.startup("shutdown")...); err != nil {
			t.Logf("bazel shutdown: %v", err)
		}
	})
	return w
}

func (w *bazelWorkspace) env() []string {
	// TEST_TMPDIR would make Bazel put its output root there instead of --output_user_root.
	var env []string
	for _, kv := range clientEnv() {
		if !strings.HasPrefix(kv, "TEST_TMPDIR=") {
			env = append(env, kv)
		}
	}
	return env
}

// startup prefixes a command with the startup options every invocation must share (a
// different set would restart the server).
func (w *bazelWorkspace) startup(args ...string) []string {
	flags := append([]string{
		"--nohome_rc",
		"--output_user_root=" + w.outputUserRoot,
		// A server orphaned by a killed test exits by itself.
		"--max_idle_secs=300",
	}, w.startupFlags...)
	return append(flags, args...)
}

// run executes one bazel command in the workspace.
func (w *bazelWorkspace) run(args ...string) string {
	w.t.Helper()
	return runClient(w.t, w.dir, w.env(), w.bazel, w.startup(args...)...)
}

// bazelBuild is what one `bazel build` reported.
type bazelBuild struct {
	Output string
	// Processes is the "INFO: N processes: a remote cache hit, b internal, …" breakdown.
	Processes map[string]int
	// Spawns are the executed (non-internal) actions from --execution_log_json_file.
	Spawns []bazelSpawn
}

type bazelSpawn struct {
	Mnemonic        string `json:"mnemonic"`
	ProgressMessage string `json:"progressMessage"`
	Runner          string `json:"runner"`
	RemoteCacheHit  bool   `json:"remoteCacheHit"`
}

// RemoteHits counts spawns served from the remote cache.
func (b bazelBuild) RemoteHits() int {
	hits := 0
	for _, s := range b.Spawns {
		if s.RemoteCacheHit {
			hits++
		}
	}
	return hits
}

// build runs `bazel build //...` with the given --remote_cache URL (http://… or grpc://…)
// plus any extra flags, and collects the process summary and the execution log.
func (w *bazelWorkspace) build(remoteCache string, extra ...string) bazelBuild {
	w.t.Helper()
	args, execLog := w.buildArgs(remoteCache, extra...)
	out := w.run(args...)
	return bazelBuild{Output: out, Processes: parseBazelProcesses(w.t, out), Spawns: readExecLog(w.t, execLog)}
}

// tryBuild is build for a build that may fail: it returns Bazel's output and exit error.
func (w *bazelWorkspace) tryBuild(remoteCache string, extra ...string) (string, error) {
	w.t.Helper()
	args, _ := w.buildArgs(remoteCache, extra...)
	return runClientErr(w.t, w.dir, w.env(), w.bazel, w.startup(args...)...)
}

func (w *bazelWorkspace) buildArgs(remoteCache string, extra ...string) (args []string, execLog string) {
	w.builds++
	execLog = filepath.Join(w.outputUserRoot, fmt.Sprintf("exec-%d.json", w.builds))
	args = []string{
		"build", "//...",
		"--remote_cache=" + remoteCache,
		"--execution_log_json_file=" + execLog,
		"--color=no", "--curses=no", "--noshow_progress",
	}
	for _, repo := range []string{"rules_cc", "rules_java", "rules_proto"} {
		// Bazel 4.2 would download these; the in-tree stand-ins forward to native rules.
		args = append(args, "--override_repository="+repo+"="+filepath.Join(w.stubs, repo))
	}
	return append(args, extra...), execLog
}

// clean removes outputs and the local action cache, so the next build must ask the remote.
func (w *bazelWorkspace) clean() {
	w.t.Helper()
	w.run("clean")
}

// outputDigests hashes the workspace's outputs in bazel-bin.
func (w *bazelWorkspace) outputDigests() map[string][32]byte {
	w.t.Helper()
	sums := map[string][32]byte{}
	for _, name := range bazelOutputs {
		sums[name] = sha256.Sum256(readFile(w.t, filepath.Join(w.dir, "bazel-bin", name)))
	}
	return sums
}

var bazelProcessesLine = regexp.MustCompile(`INFO: (\d+) process(?:es)?(?:: (.*?))?\.?\n`)

// parseBazelProcesses reads Bazel's "INFO: 10 processes: 6 remote cache hit, 4 internal." line.
func parseBazelProcesses(t *testing.T, out string) map[string]int {
	t.Helper()
	m := bazelProcessesLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no process summary in bazel output:\n%s", out)
	}
	counts := map[string]int{}
	for _, part := range strings.Split(strings.TrimSuffix(m[2], "."), ", ") {
		if part == "" {
			continue
		}
		num, name, ok := strings.Cut(part, " ")
		n, err := strconv.Atoi(num)
		if !ok || err != nil {
			t.Fatalf("cannot parse %q in bazel's process summary %q", part, m[0])
		}
		counts[name] += n
	}
	return counts
}

// readExecLog decodes --execution_log_json_file: a stream of JSON SpawnExec objects.
func readExecLog(t *testing.T, path string) []bazelSpawn {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open the execution log: %v", err)
	}
	defer f.Close()
	var spawns []bazelSpawn
	dec := json.NewDecoder(f)
	for {
		var s bazelSpawn
		if err := dec.Decode(&s); errors.Is(err, io.EOF) {
			return spawns
		} else if err != nil {
			t.Fatalf("decode the execution log %s: %v", path, err)
		}
		spawns = append(spawns, s)
	}
}

// checkAllRemoteHits asserts that every executed action of a build was a remote cache hit
// and that it executed the same actions as the build that filled the cache.
func checkAllRemoteHits(t *testing.T, filled, b bazelBuild) {
	t.Helper()
	if len(b.Spawns) == 0 || len(b.Spawns) != len(filled.Spawns) {
		t.Fatalf("build after clean executed %d actions, want the %d of the first build:\n%s", len(b.Spawns), len(filled.Spawns), b.Output)
	}
	for _, s := range b.Spawns {
		if !s.RemoteCacheHit {
			t.Errorf("action %q (%s) was not a remote cache hit (runner %q)", s.ProgressMessage, s.Mnemonic, s.Runner)
		}
	}
	if got := b.Processes["remote cache hit"]; got != len(b.Spawns) {
		t.Errorf("bazel reported %d remote cache hits, want all %d actions: %v", got, len(b.Spawns), b.Processes)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// checkNoRemoteHits asserts a build ran everything itself.
func checkNoRemoteHits(t *testing.T, b bazelBuild) {
	t.Helper()
	if len(b.Spawns) == 0 {
		t.Fatalf("build executed no actions:\n%s", b.Output)
	}
	if hits := b.RemoteHits(); hits != 0 {
		t.Fatalf("build on an empty cache reported %d remote cache hits: %v", hits, b.Processes)
	}
}

// TestBazelHTTPCache builds a workspace with genrules (one with a 20 MB output) and a
// cc_binary using Debian's Bazel 4.2 with --remote_cache=http://…, cleans, and expects every
// action to be a remote cache hit with byte-identical outputs; then does the same under a
// namespace URL prefix, which must not see the default namespace's entries.
func TestBazelHTTPCache(t *testing.T) {
	t.Parallel()
	ws := newBazelWorkspace(t)
	node := StartNode(t, NodeOptions{})

	var defaultSums map[string][32]byte
	t.Run("default namespace", func(t *testing.T) {
		ws.t = t
		start := time.Now()
		first := ws.build(node.URL())
		missTook := time.Since(start).Round(time.Millisecond)
		checkNoRemoteHits(t, first)
		defaultSums = ws.outputDigests()

		ws.clean()
		start = time.Now()
		second := ws.build(node.URL())
		hitTook := time.Since(start).Round(time.Millisecond)
		checkAllRemoteHits(t, first, second)
		compareDigests(t, defaultSums, ws.outputDigests())
		figure(t, "bazel build //... %s executing %d actions (cold server), %s after clean with %d/%d remote cache hits",
			missTook, len(first.Spawns), hitTook, second.RemoteHits(), len(second.Spawns))

		out := runClient(t, ws.dir, clientEnv(), filepath.Join(ws.dir, "bazel-bin", "hi"))
		if !strings.Contains(out, "hello from a binary linked once and cached in Kura") {
			t.Fatalf("restored cc_binary printed %q", out)
		}
	})

	t.Run("namespace prefix", func(t *testing.T) {
		ws.t = t
		remote := node.URL() + "/team-a"
		ws.clean()
		first := ws.build(remote)
		checkNoRemoteHits(t, first)
		sums := ws.outputDigests()
		if sums["big.bin"] == defaultSums["big.bin"] {
			t.Fatalf("namespace team-a restored big.bin from the default namespace")
		}

		ws.clean()
		second := ws.build(remote)
		checkAllRemoteHits(t, first, second)
		compareDigests(t, sums, ws.outputDigests())
	})
}

func compareDigests(t *testing.T, want, got map[string][32]byte) {
	t.Helper()
	for _, name := range bazelOutputs {
		if want[name] != got[name] {
			t.Errorf("bazel-bin/%s differs after the cached build (sha256 %x, want %x)", name, got[name], want[name])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// makeWritable restores write permission on a tree Bazel left read-only, so it can be removed
// by a non-root user too.
func makeWritable(root string) {
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(path, 0o755)
		}
		return nil
	})
}
