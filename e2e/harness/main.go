package harness

import (
	"context"
	"debug/buildinfo"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Paths shared by every test of the calling test binary, set once by Main.
var (
	kuraBinary string // the kura executable under test ("" in -short mode)
	kuraRace   bool   // whether kuraBinary was built with the race detector
	moduleRoot string // the directory holding go.mod
)

// buildTimeout bounds `go build ./cmd/kura`: a cold build on a 2-core machine with -race takes
// a few minutes; anything past this is a hung toolchain, not a slow one.
const buildTimeout = 15 * time.Minute

// Main is the body of a test package's TestMain: it finds the module, builds kura once (or
// takes KURA_E2E_BINARY), runs the tests, and returns the exit code. In -short mode it builds
// nothing; every node a test asks for then skips the test.
//
// KURA_E2E_RACE=1/0 forces the server's race instrumentation on or off; by default it follows
// the test binary's.
func Main(m *testing.M) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	root, err := findModuleRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		return 1
	}
	moduleRoot = root
	if testing.Short() {
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "kura-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: create a directory for the kura binary: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if prebuilt := os.Getenv("KURA_E2E_BINARY"); prebuilt != "" {
		abs, err := filepath.Abs(prebuilt)
		if err != nil {
			fmt.Fprintf(os.Stderr, "harness: KURA_E2E_BINARY: %v\n", err)
			return 1
		}
		kuraBinary = abs
		kuraRace = builtWithRace(abs)
		fmt.Fprintf(os.Stderr, "harness: testing the prebuilt binary %s (race=%v)\n", abs, kuraRace)
	} else {
		race := raceEnabled
		switch os.Getenv("KURA_E2E_RACE") {
		case "1", "true":
			race = true
		case "0", "false":
			race = false
		}
		start := time.Now()
		bin, err := Build(root, tmp, race)
		if err != nil {
			fmt.Fprintf(os.Stderr, "harness: %v\n", err)
			return 1
		}
		kuraBinary, kuraRace = bin, race
		fmt.Fprintf(os.Stderr, "harness: built %s (race=%v) in %s\n", bin, race, time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}

// builtWithRace reads the race flag from a Go binary's build information (false when it
// cannot be read).
func builtWithRace(path string) bool {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// Binary is the kura executable under test.
func Binary() string { return kuraBinary }

// Race reports whether Binary was built with the race detector (timings are slower, memory
// figures meaningless).
func Race() bool { return kuraRace }

// ModuleRoot is the directory holding go.mod.
func ModuleRoot() string { return moduleRoot }

// Build compiles ./cmd/kura of the module (or worktree) at root into dir/kura.
func Build(root, dir string, race bool) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, statErr := os.Stat(goTool); statErr != nil {
			return "", fmt.Errorf("find the go tool to build kura: %w", err)
		}
	}
	bin := filepath.Join(dir, "kura")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/kura")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build kura (go %s in %s): %w\n%s", strings.Join(args, " "), root, err, out)
	}
	return bin, nil
}

func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find the module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// RequireKura skips the calling test in -short mode; otherwise the binary exists (Main exits
// before running any test when it cannot be built).
func RequireKura(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("tests that start real kura processes are skipped in -short mode")
	}
	if kuraBinary == "" {
		t.Fatal("harness: no kura binary (TestMain did not call harness.Main)")
	}
}

// WithoutKuraEnv is the test process's environment minus every KURA_* variable, so a
// developer's shell cannot leak settings into a node.
func WithoutKuraEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KURA_") {
			env = append(env, kv)
		}
	}
	return env
}

// TestBinaryRace reports whether this test binary runs under the race detector.
func TestBinaryRace() bool { return raceEnabled }
