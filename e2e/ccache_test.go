package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// ccache: Debian's ccache 4.7 with its HTTP remote storage against the real binary, for each
// of its layouts: flat and subdirs on the plain objects surface, bazel on the Bazel HTTP
// surface. A compile with an empty local cache directory uploads; a compile of the same file
// with another empty local cache directory must be a remote hit and produce the same object.

// ccacheWorkspace is a C source and the environment to compile it through ccache.
type ccacheWorkspace struct {
	t      *testing.T
	ccache string
	dir    string
	config string // an empty ccache.conf, so the machine's /etc/ccache.conf plays no part
}

func newCcacheWorkspace(t *testing.T) *ccacheWorkspace {
	t.Helper()
	ccache := requireCommand(t, "ccache")
	requireCommand(t, "gcc")
	w := &ccacheWorkspace{t: t, ccache: ccache, dir: t.TempDir()}
	w.config = filepath.Join(w.dir, "ccache.conf")
	// The test name goes into the source, so runs of different tests never share a key.
	src := "/* " + t.Name() + " */\n#include <stdio.h>\nint add(int a, int b) { return a + b; }\n" +
		"int main(void) { printf(\"%d\\n\", add(2, 3)); return 0; }\n"
	for name, body := range map[string]string{"ccache.conf": "", "main.c": src, "other.c": src + "int other(void) { return 7; }\n"} {
		if err := os.WriteFile(filepath.Join(w.dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// compile compiles source with a fresh local cache directory and remote storage remote (the
// whole CCACHE_REMOTE_STORAGE value), and returns ccache's counters and the object's bytes.
func (w *ccacheWorkspace) compile(source, remote string) (map[string]int, []byte) {
	w.t.Helper()
	cacheDir := w.t.TempDir()
	env := clientEnv("CCACHE_DIR="+cacheDir, "CCACHE_CONFIGPATH="+w.config, "CCACHE_REMOTE_STORAGE="+remote,
		// Errors of the remote storage are logged, not fatal: the log shows what ccache saw.
		"CCACHE_LOGFILE="+filepath.Join(cacheDir, "ccache.log"))
	obj := filepath.Join(w.dir, strings.TrimSuffix(source, ".c")+".o")
	_ = os.Remove(obj)
	runClient(w.t, w.dir, env, w.ccache, "gcc", "-O2", "-c", source, "-o", obj)
	stats := parseCcacheStats(w.t, runClient(w.t, w.dir, env, w.ccache, "--print-stats"))
	if stats["remote_storage_error"] != 0 || stats["remote_storage_timeout"] != 0 {
		// Only the remote storage's lines: the whole log is hundreds of lines per compile.
		log, _ := os.ReadFile(filepath.Join(cacheDir, "ccache.log"))
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "http storage") || strings.Contains(line, "remote storage") {
				w.t.Logf("ccache: %s", line)
			}
		}
	}
	return stats, readFile(w.t, obj)
}

// parseCcacheStats reads `ccache --print-stats` (one "name<TAB>value" per line).
func parseCcacheStats(t *testing.T, out string) map[string]int {
	t.Helper()
	stats := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		name, value, ok := strings.Cut(line, "\t")
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(value)); err == nil {
			stats[name] = n
		}
	}
	if _, ok := stats["remote_storage_hit"]; !ok {
		t.Fatalf("ccache --print-stats printed no remote_storage_hit:\n%s", out)
	}
	return stats
}

func TestCcacheRemoteStorageLayouts(t *testing.T) {
	t.Parallel()
	w := newCcacheWorkspace(t)
	node := StartNode(t, NodeOptions{})
	for _, tc := range []struct {
		layout, url, kind string
	}{
		{"flat", node.URL() + "/api/cache/objects/acme/cpp-flat", "objects"},
		{"subdirs", node.URL() + "/api/cache/objects/acme/cpp-subdirs", "objects"},
		// ccache's bazel layout writes ac/<64 hex>; the Bazel HTTP surface serves it with
		// the path prefix as the namespace.
		{"bazel", node.URL() + "/cppbazel", "ac"},
	} {
		t.Run(tc.layout, func(t *testing.T) {
			remote := tc.url + "|layout=" + tc.layout
			before := ScrapeMetrics(t, node).Artifacts(tc.kind)
			first, compiled := w.compile("main.c", remote)
			if first["remote_storage_hit"] != 0 || first["remote_storage_miss"] != 1 || first["remote_storage_write"] < 1 || first["remote_storage_error"] != 0 {
				t.Fatalf("first compile: want a remote miss and an upload, got %v", first)
			}
			afterFirst := ScrapeMetrics(t, node).Artifacts(tc.kind)
			if d := afterFirst.Sub(before); d.Stored < 1 {
				t.Fatalf("first compile stored nothing in Kura: %+v", d)
			}
			second, restored := w.compile("main.c", remote)
			if second["remote_storage_hit"] != 1 || second["remote_storage_miss"] != 0 || second["cache_miss"] != 0 || second["remote_storage_error"] != 0 {
				t.Fatalf("second compile from a clean local cache: want a remote hit, got %v", second)
			}
			if d := ScrapeMetrics(t, node).Artifacts(tc.kind).Sub(afterFirst); d.Hits < 1 || d.Stored != 0 {
				t.Fatalf("second compile: want Kura hits and no upload, got %+v", d)
			}
			if !bytes.Equal(compiled, restored) {
				t.Fatalf("the object restored from Kura (%d bytes) differs from the compiled one (%d bytes)", len(restored), len(compiled))
			}
			figure(t, "ccache layout=%s: first compile %d remote miss, %d remote writes; clean-cache compile %d remote hit (%d remote reads)",
				tc.layout, first["remote_storage_miss"], first["remote_storage_write"], second["remote_storage_hit"], second["remote_storage_read_hit"])
		})
	}
}

// TestCcacheReadOnlyToken: through the static-tokens policy, a read-write token uploads, a
// read-only token gets remote hits, and its uploads on a miss are refused (403) while the
// compile itself still succeeds.
func TestCcacheReadOnlyToken(t *testing.T) {
	t.Parallel()
	w := newCcacheWorkspace(t)
	node := startPolicyNode(t, examplePolicy("static-tokens.lua"), map[string]string{
		"KURA_POLICY_TOKENS": "cc-rw acme/cpp write; cc-ro acme/cpp read",
	})
	base := node.URL() + "/api/cache/objects/acme/cpp|layout=subdirs|bearer-token="

	// Without a token nothing is read or written, and the compile still succeeds.
	if r := call(t, "GET", node.URL()+"/api/cache/objects/acme/cpp/ab/cd", ""); r.status != 401 {
		t.Fatalf("token-less GET: %d %q", r.status, r.body)
	}
	rw, _ := w.compile("main.c", base+"cc-rw")
	if rw["remote_storage_write"] < 1 || rw["remote_storage_error"] != 0 {
		t.Fatalf("read-write token: want an upload, got %v", rw)
	}
	before := ScrapeMetrics(t, node).Artifacts("objects")
	ro, _ := w.compile("main.c", base+"cc-ro")
	if ro["remote_storage_hit"] != 1 || ro["cache_miss"] != 0 {
		t.Fatalf("read-only token: want a remote hit, got %v", ro)
	}
	// A miss with the read-only token: gcc runs, the uploads are refused.
	miss, obj := w.compile("other.c", base+"cc-ro")
	if miss["remote_storage_hit"] != 0 || miss["cache_miss"] != 1 || len(obj) == 0 {
		t.Fatalf("read-only token on a new file: want a compiled miss, got %v", miss)
	}
	d := ScrapeMetrics(t, node).Artifacts("objects").Sub(before)
	if d.Stored != 0 || d.Rejected < 1 || d.Hits < 1 {
		t.Fatalf("read-only token: want hits, refused writes and nothing stored, got %+v", d)
	}
	// What was refused is really not there: a read-write compile of other.c misses.
	again, _ := w.compile("other.c", base+"cc-rw")
	if again["remote_storage_hit"] != 0 || again["remote_storage_miss"] != 1 {
		t.Fatalf("the refused upload was stored after all: %v", again)
	}
	figure(t, "ccache read-only token: %d remote hit; on a miss %d local miss, %d refused uploads, compile succeeded",
		ro["remote_storage_hit"], miss["cache_miss"], int(d.Rejected))
}
