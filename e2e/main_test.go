package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Paths shared by every test, set once by TestMain.
var (
	// kuraBinary is the kura executable under test ("" when the suite is skipped).
	kuraBinary string
	// kuraRace reports whether kuraBinary was built with the race detector.
	kuraRace bool
	// moduleRoot is the directory holding go.mod.
	moduleRoot string
)

// buildTimeout bounds `go build ./cmd/kura`: a cold build on a 2-core machine with -race takes
// a few minutes; anything past this is a hung toolchain, not a slow one.
const buildTimeout = 15 * time.Minute

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := findModuleRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	moduleRoot = root
	if testing.Short() {
		// Every test skips itself in -short mode; building the binary would be wasted work.
		return m.Run()
	}

	tmp, err := os.MkdirTemp("", "kura-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: create a directory for the kura binary: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if prebuilt := os.Getenv("KURA_E2E_BINARY"); prebuilt != "" {
		abs, err := filepath.Abs(prebuilt)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: KURA_E2E_BINARY: %v\n", err)
			return 1
		}
		kuraBinary = abs
		fmt.Fprintf(os.Stderr, "e2e: testing the prebuilt binary %s\n", abs)
	} else {
		race := raceEnabled
		switch os.Getenv("KURA_E2E_RACE") {
		case "1", "true":
			race = true
		case "0", "false":
			race = false
		}
		start := time.Now()
		bin, err := buildKura(root, tmp, race)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		kuraBinary, kuraRace = bin, race
		fmt.Fprintf(os.Stderr, "e2e: built %s (race=%v) in %s\n", bin, race, time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}

// buildKura compiles ./cmd/kura once for the whole run; every node of every test reuses it.
func buildKura(root, dir string, race bool) (string, error) {
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

// findModuleRoot walks up from the test's working directory (the package directory) to go.mod.
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

// requireKura skips the calling test in -short mode; otherwise the binary exists (TestMain
// exits before running any test when it cannot be built).
func requireKura(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e tests start real processes; skipped in -short mode")
	}
	if kuraBinary == "" {
		t.Fatal("e2e: no kura binary (TestMain did not build one)")
	}
}
