package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGradleBuildCache builds a Java project with Debian's Gradle 4.4.1 and its stock
// HttpBuildCache pointed at Kura's path-style Gradle endpoint (Gradle drops query strings),
// then removes build/ and expects compileJava to come FROM-CACHE with identical class bytes.
func TestGradleBuildCache(t *testing.T) {
	t.Parallel()
	gradle := requireCommand(t, "gradle")
	requireCommand(t, "java")
	node := StartNode(t, NodeOptions{})
	cacheURL := node.URL() + "/api/cache/gradle/acme/android/"
	dir := copyWorkspace(t, "gradle", map[string]string{"KURA_GRADLE_CACHE_URL": cacheURL,
		"KURA_GRADLE_USER": "e2e", "KURA_GRADLE_PASSWORD": "e2e-secret"})
	// A private Gradle home: no daemon registry, init scripts or caches from the machine.
	env := clientEnv("GRADLE_USER_HOME=" + t.TempDir())
	// No --offline: it turns the remote build cache off.
	args := []string{"--no-daemon", "--build-cache", "--console=plain", "--stacktrace", "compileJava"}
	class := filepath.Join(dir, "build", "classes", "java", "main", "demo", "Main.class")

	before := ScrapeMetrics(t, node).Artifacts("gradle")
	start := time.Now()
	out := runClient(t, dir, env, gradle, args...)
	missTook := time.Since(start)
	checkGradleCacheHealthy(t, out)
	if strings.Contains(out, "FROM-CACHE") {
		t.Fatalf("first build on an empty cache reported FROM-CACHE:\n%s", out)
	}
	afterFirst := ScrapeMetrics(t, node).Artifacts("gradle")
	if d := afterFirst.Sub(before); d.Misses < 1 || d.Stored < 1 {
		t.Fatalf("first build: want a miss and an upload, got %+v\n%s", d, out)
	}
	compiled := readFile(t, class)

	if err := os.RemoveAll(filepath.Join(dir, "build")); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	out = runClient(t, dir, env, gradle, args...)
	hitTook := time.Since(start)
	checkGradleCacheHealthy(t, out)
	if !strings.Contains(out, ":compileJava FROM-CACHE") {
		t.Fatalf("second build after rm -rf build did not take compileJava from Kura:\n%s", out)
	}
	if d := ScrapeMetrics(t, node).Artifacts("gradle").Sub(afterFirst); d.Hits < 1 || d.Stored != 0 {
		t.Fatalf("second build: want a hit and no upload, got %+v", d)
	}
	if restored := readFile(t, class); !bytes.Equal(restored, compiled) {
		t.Fatalf("restored Main.class (%d bytes) differs from the compiled one (%d bytes)", len(restored), len(compiled))
	}
	figure(t, "gradle compileJava %s on a miss (uploaded), %s FROM-CACHE", missTook.Round(time.Millisecond), hitTook.Round(time.Millisecond))
}

// checkGradleCacheHealthy fails on the messages Gradle 4.4 prints when a cache request failed:
// one error disables the remote cache for the rest of the build, which would hide a bug.
func checkGradleCacheHealthy(t *testing.T, out string) {
	t.Helper()
	for _, bad := range []string{
		"Could not load entry",
		"Could not store entry",
		"remote build cache was disabled",
		"Remote build cache is disabled",
	} {
		if strings.Contains(out, bad) {
			t.Fatalf("Gradle reported a remote cache problem (%q):\n%s", bad, out)
		}
	}
	if !strings.Contains(out, "BUILD SUCCESSFUL") {
		t.Fatalf("Gradle build did not succeed:\n%s", out)
	}
}
