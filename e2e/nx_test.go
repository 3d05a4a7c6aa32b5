package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nxWorkspace is a copy of testdata/workspaces/nx wired to the pinned Nx install.
type nxWorkspace struct {
	t   *testing.T
	dir string
	nx  string
}

func newNxWorkspace(t *testing.T) *nxWorkspace {
	t.Helper()
	nx := requireNodeClient(t, "nx")
	git := requireCommand(t, "git")
	dir := copyWorkspace(t, "nx", nil)
	// Nx must find itself in the workspace's node_modules; the shared install is linked in.
	if err := os.Symlink(nodeClients(t), filepath.Join(dir, "node_modules")); err != nil {
		t.Fatalf("link node_modules: %v", err)
	}
	// Nx hashes every file git does not ignore; the outputs (dist, .nx) are in .gitignore so
	// the task hash stays the same from one run to the next.
	runClient(t, dir, clientEnv(), git, "init", "-q", ".")
	return &nxWorkspace{t: t, dir: dir, nx: nx}
}

// build runs `nx run lib1:build` against the given remote cache server URL and returns Nx's
// output and the task's output file content.
func (w *nxWorkspace) build(server string) (output, artifact string) {
	w.t.Helper()
	output, err := w.run(server, "e2e-token")
	if err != nil {
		w.t.Fatalf("nx run lib1:build: %v\n%s", err, output)
	}
	return output, string(readFile(w.t, filepath.Join(w.dir, "packages", "lib1", "dist", "out.txt")))
}

// run runs `nx run lib1:build` with the given access token ("" sends none) and returns Nx's
// output and exit error.
func (w *nxWorkspace) run(server, token string) (string, error) {
	w.t.Helper()
	env := clientEnv(
		"NX_DAEMON=false",
		"NX_NO_CLOUD=true",
		"NX_TUI=false",
		"NX_SELF_HOSTED_REMOTE_CACHE_SERVER="+server,
	)
	if token != "" {
		env = append(env, "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN="+token)
	}
	return runClientErr(w.t, w.dir, env, w.nx, "run", "lib1:build", "--outputStyle=static")
}

// forget removes Nx's local cache and the task outputs, as on a fresh CI checkout.
func (w *nxWorkspace) forget() {
	w.t.Helper()
	for _, p := range []string{".nx/cache", "packages/lib1/dist"} {
		if err := os.RemoveAll(filepath.Join(w.dir, p)); err != nil {
			w.t.Fatalf("remove %s: %v", p, err)
		}
	}
}

// TestNxRemoteCache runs a real Nx 24 workspace against Kura's self-hosted cache API, first on
// the plain /v1/cache path, then on the namespaced /api/nx/{tenant}/{namespace} path.
func TestNxRemoteCache(t *testing.T) {
	t.Parallel()
	ws := newNxWorkspace(t)
	node := StartNode(t, NodeOptions{})

	var defaultArtifact string
	t.Run("default path", func(t *testing.T) {
		before := ScrapeMetrics(t, node).Artifacts("nx")
		start := time.Now()
		out, first := ws.build(node.URL())
		missTook := time.Since(start)
		if isNxRemoteHit(out) {
			t.Fatalf("first run on an empty cache reported a remote hit:\n%s", out)
		}
		afterFirst := ScrapeMetrics(t, node).Artifacts("nx")
		if d := afterFirst.Sub(before); d.Misses < 1 || d.Stored < 1 {
			t.Fatalf("first run: want a miss then an upload, got %+v", d)
		}

		ws.forget()
		start = time.Now()
		out, second := ws.build(node.URL())
		hitTook := time.Since(start)
		if !isNxRemoteHit(out) {
			t.Fatalf("second run after removing .nx/cache and dist was not served from Kura:\n%s", out)
		}
		if second != first {
			t.Fatalf("restored output %q differs from the first run's %q", second, first)
		}
		if d := ScrapeMetrics(t, node).Artifacts("nx").Sub(afterFirst); d.Hits < 1 || d.Stored != 0 {
			t.Fatalf("second run: want a hit and no upload, got %+v", d)
		}
		defaultArtifact = first
		figure(t, "nx run lib1:build %s on a miss (uploaded), %s restored from Kura", missTook.Round(time.Millisecond), hitTook.Round(time.Millisecond))
	})

	t.Run("namespaced path", func(t *testing.T) {
		server := node.URL() + "/api/nx/acme/web"
		ws.forget()
		// The task hash is the same as above, but a different namespace must not see the
		// default namespace's entry: the task runs again and produces a new output.
		out, first := ws.build(server)
		if isNxRemoteHit(out) {
			t.Fatalf("namespace acme/web was served the default namespace's entry:\n%s", out)
		}
		if first == defaultArtifact {
			t.Fatalf("task did not run again in namespace acme/web (output %q)", first)
		}

		ws.forget()
		out, second := ws.build(server)
		if !isNxRemoteHit(out) {
			t.Fatalf("second run in namespace acme/web was not served from Kura:\n%s", out)
		}
		if second != first {
			t.Fatalf("restored output %q differs from the first run's %q", second, first)
		}
	})
}

// isNxRemoteHit recognises Nx's report of a task restored from the remote cache: the task
// header is tagged "[remote cache]" and the summary counts the hit.
func isNxRemoteHit(out string) bool {
	return strings.Contains(out, "[remote cache]") && strings.Contains(out, "1/1 hit")
}
