package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromiumTimeout bounds one headless render; a cold Chromium start takes a few seconds here.
const chromiumTimeout = 90 * time.Second

// headlessChromium renders url in Debian's chromium and returns its DOM after load, also
// writing a screenshot to shot. Chromium's own profile, crash and cache files go to a
// temporary directory so nothing outside the test is touched.
func headlessChromium(t *testing.T, url, shot string) string {
	t.Helper()
	bin := requireChromium(t)
	profile := t.TempDir()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
		"--user-data-dir=" + profile, "--window-size=1200,1000",
	}
	run := func(extra ...string) (stdout string) {
		ctx, cancel := context.WithTimeout(context.Background(), chromiumTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append(append(base, extra...), url)...)
		cmd.Env = append(os.Environ(), "HOME="+profile, "XDG_CONFIG_HOME="+profile, "XDG_CACHE_HOME="+profile)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", extra, err, errOut.String())
		}
		// A failed navigation is logged as net::ERR_…; the page itself has no script to fail.
		if m := regexp.MustCompile(`net::ERR_[A-Z_]+`).FindString(errOut.String()); m != "" {
			t.Fatalf("chromium could not load %s: %s\n%s", url, m, errOut.String())
		}
		return out.String()
	}
	dom := run("--dump-dom")
	run("--screenshot=" + shot)
	return dom
}

// requireChromium finds Debian's chromium (scripts/install-test-deps installs it).
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	return requireCommand(t, "chromium")
}

// TestStatusPageInChromium: two real nodes in two regions, Nx traffic on the first, and the
// first node's status page rendered by headless Chromium: every section is there with the real
// figures (both members with their health, the hit ratio of the traffic, the disk and memory
// budgets), and a screenshot is written to the test's artifact directory (go test -artifacts).
func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	nodes := startKuraCluster(t, 2, func(i int, o *NodeOptions) {
		o.Region = []string{"eu-west", "us-east"}[i]
		o.Env = map[string]string{"KURA_DISK_BUDGET_BYTES": fmt.Sprint(2 << 30), "KURA_MEMORY_SOFT_LIMIT_BYTES": fmt.Sprint(3 << 30), "KURA_MEMORY_HARD_LIMIT_BYTES": fmt.Sprint(4 << 30)}
	})
	node := nodes[0]
	// One miss, then two hits: 66.7 % over the last minute.
	expectHTTP(t, "miss", call(t, "GET", node.URL()+"/v1/cache/4242", ""), http.StatusNotFound)
	expectHTTP(t, "put", call(t, "PUT", node.URL()+"/v1/cache/4242", "status-page-artifact"), http.StatusOK)
	for range 2 {
		expectHTTP(t, "hit", call(t, "GET", node.URL()+"/v1/cache/4242", ""), http.StatusOK)
	}

	shot := filepath.Join(t.ArtifactDir(), "status.png")
	start := time.Now()
	dom := headlessChromium(t, node.URL()+"/", shot)
	t.Logf("e2e figure: status page rendered by headless Chromium in %s (DOM and screenshot)", time.Since(start).Round(time.Millisecond))

	for _, section := range []string{"node", "members", "hit-ratio", "disk", "memory"} {
		if !strings.Contains(dom, `id="`+section+`"`) {
			t.Errorf("the rendered page misses section %q", section)
		}
	}
	for _, want := range []string{
		"Kura · " + nodes[0].Name, "serving",
		"<h3>eu-west</h3>", "<h3>us-east</h3>", nodes[1].Name, nodes[1].URL(), `class="alive">alive`,
		"<td>nx</td>", "66.7 %",
		"of 2.0 GiB", "3.0 GiB", "4.0 GiB",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", shot, err)
	}
	if b := img.Bounds(); b.Dx() < 800 || b.Dy() < 600 {
		t.Errorf("screenshot is %dx%d, want the 1200x1000 window", b.Dx(), b.Dy())
	}
	t.Logf("screenshot: %s", shot)
}
