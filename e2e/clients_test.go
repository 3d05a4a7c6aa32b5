package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

// clientTimeout bounds one run of a client tool (a build). Cold runs take seconds; the bound
// only turns a hang into a clear failure.
const clientTimeout = 5 * time.Minute

// clientsRequired reports whether a missing client must fail the test instead of skipping it:
// in CI every client is installed by scripts/install-test-deps, so absence is a broken setup.
func clientsRequired() bool {
	return os.Getenv("CI") == "true" || os.Getenv("KURA_E2E_REQUIRE_CLIENTS") == "1"
}

// missingClient skips (locally) or fails (CI) a test whose client tool is not installed.
func missingClient(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...) + " (run scripts/install-test-deps)"
	if clientsRequired() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// requireCommand returns the absolute path of a tool on PATH.
func requireCommand(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		missingClient(t, "%s is not installed: %v", name, err)
	}
	return path
}

// nodeClients is the npm install of the pinned Nx and Metro clients (e2e/clients/node).
func nodeClients(t testing.TB) string {
	t.Helper()
	return filepath.Join(harness.ModuleRoot(), "e2e", "clients", "node", "node_modules")
}

// requireNodeClient returns the path of an executable from e2e/clients/node (e.g. "nx").
func requireNodeClient(t testing.TB, bin string) string {
	t.Helper()
	requireCommand(t, "node")
	path := filepath.Join(nodeClients(t), ".bin", bin)
	if _, err := os.Stat(path); err != nil {
		missingClient(t, "%s is not installed in e2e/clients/node: %v", bin, err)
	}
	return path
}

// copyWorkspace copies testdata/workspaces/<name> into a fresh temporary directory, replacing
// each "@KEY@" placeholder in text files with replacements[KEY].
func copyWorkspace(t testing.TB, name string, replacements map[string]string) string {
	t.Helper()
	src := filepath.Join(harness.ModuleRoot(), "e2e", "testdata", "workspaces", name)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for k, v := range replacements {
			data = bytes.ReplaceAll(data, []byte("@"+k+"@"), []byte(v))
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy workspace %s: %v", name, err)
	}
	return dst
}

// clientEnv is the environment for client tools: the test's own, with loopback exempt from
// any proxy the machine has configured (Nx's reqwest and Node honour HTTP_PROXY).
func clientEnv(extra ...string) []string {
	env := append([]string(nil), os.Environ()...)
	env = append(env, "NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost")
	return append(env, extra...)
}

// runClient runs a client tool in dir, bounded by clientTimeout, and returns its combined
// output. A non-zero exit fails the test with the output. The whole process group is killed
// on timeout, so a JVM or node child cannot outlive the test.
func runClient(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runClientErr(t, dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return out
}

// runClientErr is runClient for callers that expect a failure.
func runClientErr(t testing.TB, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start).Round(time.Millisecond)
	line := filepath.Base(name) + " " + strings.Join(args, " ")
	if len(line) > 160 {
		line = line[:160] + "…"
	}
	t.Logf("ran %s in %s", line, elapsed)
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s: %w", clientTimeout, err)
	}
	return out.String(), err
}

// readFile reads a file the test needs, failing the test when it is missing.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return data
}

// figure logs a measured result worth keeping in CI output: scripts/test repeats every
// "e2e figure:" line after the run, even for passing tests. Keep double quotes out of it.
func figure(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Logf("e2e figure: %s: %s", t.Name(), fmt.Sprintf(format, args...))
}
