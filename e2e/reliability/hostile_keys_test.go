package reliability

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// hostileKey is one key of the corpus, as it appears in a request target (already
// percent-encoded where the attack is an encoding).
type hostileKey struct {
	name string
	raw  string // path segment(s) or query value as sent
	// mustRefuse: the key is not a valid identifier (NUL, invalid UTF-8, over-long); the
	// rest are valid opaque identifiers that Kura may store, as keys, never as paths.
	mustRefuse bool
}

// hostileKeys is the corpus; each key carries marker and its own number, so that two
// spellings of one identifier ("../x" and "..%2fx" decode alike) do not name one object.
func hostileKeys(marker string) []hostileKey {
	keys := []hostileKey{
		{"traversal", "../../../" + marker, false},
		{"deep traversal", strings.Repeat("../", 40) + "tmp/" + marker, false},
		{"encoded traversal", "..%2f..%2f..%2f" + marker, false},
		{"fully encoded traversal", "%2e%2e%2f%2e%2e%2f%2e%2e%2f" + marker, false},
		{"encoded dots", "%2e%2e/%2e%2e/" + marker, false},
		{"absolute path", "%2ftmp%2f" + marker, false},
		{"backslash traversal", "..%5c..%5c..%5c" + marker, false},
		{"raw backslash", `..\..\` + marker, false},
		{"encoded NUL", marker + "%00.txt", true},
		{"raw NUL", marker + "\x00.txt", true},
		{"invalid UTF-8", "%ff%fe" + marker, true},
		{"overlong UTF-8 dots", "%c0%ae%c0%ae%2f" + marker, true},
		{"over-long", strings.Repeat("a", 1025) + marker, true},
		{"over the header limit", strings.Repeat("b", 70<<10) + marker, true},
	}
	for i := range keys {
		keys[i].raw = strings.Replace(keys[i].raw, marker, fmt.Sprintf("%s-%d", marker, i), 1)
	}
	return keys
}

// keySurface is one route whose request names a key.
type keySurface struct {
	name   string
	method string // the write; reads are GET on the same target
	target func(key string) string
}

var keySurfaces = []keySurface{
	{"plain objects key", "PUT", func(k string) string { return "/api/cache/objects/default/hostile/" + k }},
	{"plain objects tenant", "PUT", func(k string) string { return "/api/cache/objects/" + k + "/hostile/key" }},
	{"gradle key", "PUT", func(k string) string { return "/api/cache/gradle/default/hostile/" + k }},
	{"xcode id", "POST", func(k string) string { return "/api/cache/cas/" + k + "?tenant_id=default&namespace_id=hostile" }},
	{"xcode namespace", "POST", func(k string) string { return "/api/cache/cas/id?tenant_id=default&namespace_id=" + k }},
	{"metro key", "PUT", func(k string) string { return "/api/metro/cache/" + k }},
	{"turborepo hash", "PUT", func(k string) string { return "/v8/artifacts/" + k + "?slug=hostile" }},
}

// TestReliabilityHostileKeys writes every key of a hostile corpus (traversal, encoded
// traversal, NUL, invalid UTF-8, over-long, backslash) through every route that takes a key,
// with a marker in each, and checks that invalid identifiers are refused, that the valid ones
// read back as the opaque keys they are, and that no file appeared outside the data directory
// (the tree around the node is snapshotted before and after, and /tmp is searched for the
// marker).
func TestReliabilityHostileKeys(t *testing.T) {
	node := harness.StartNode(t, harness.NodeOptions{})
	marker := "kurahostile" + uniqueID(t)
	around := filepath.Dir(node.Dir) // the test's temporary root: the node's dir and its siblings
	before := snapshotTree(t, around, node.DataDir)

	mustRefuse, refused, stored, readBack := 0, 0, 0, 0
	for _, s := range keySurfaces {
		for _, k := range hostileKeys(marker) {
			target := s.target(k.raw)
			body := "body of " + s.name + " " + k.name
			status, _ := rawRequest(t, node.HTTPAddr(), s.method, target, body)
			switch {
			case k.mustRefuse:
				mustRefuse++
				if status >= 400 && status < 500 {
					refused++
				} else {
					t.Errorf("%s, %s: status %d, want a 4xx refusal", s.name, k.name, status)
				}
			case status/100 == 2:
				stored++
				// Stored as an opaque key: the same target reads the same bytes back.
				if got, b := rawRequest(t, node.HTTPAddr(), "GET", target, ""); got == http.StatusOK && b == body {
					readBack++
				} else {
					t.Errorf("%s, %s: stored (%d) but GET answered %d %q", s.name, k.name, status, got, b)
				}
			case status >= 400 && status < 500:
				// Refusing a valid-looking key is allowed (a protocol pattern, a malformed target).
			default:
				t.Errorf("%s, %s: status %d", s.name, k.name, status)
			}
		}
	}
	after := snapshotTree(t, around, node.DataDir)
	var created []string
	for p := range after {
		if _, ok := before[p]; !ok {
			created = append(created, p)
		}
	}
	created = append(created, findNamed(t, os.TempDir(), marker)...)
	created = append(created, findNamed(t, node.DataDir, marker)...) // no key is ever a file name
	t.Logf("%d must-refuse keys, %d refused; %d traversal-like keys stored as opaque keys, %d read back; new files: %v",
		mustRefuse, refused, stored, readBack, created)
	figures.Check(t, hostileItem, "invalid keys refused (NUL, invalid UTF-8, over-long)", fmt.Sprintf("%d/%d", refused, mustRefuse), fmt.Sprintf("%d/%d", mustRefuse, mustRefuse))
	figures.Check(t, hostileItem, "traversal-like keys stored read back as opaque keys", fmt.Sprintf("%d/%d", readBack, stored), fmt.Sprintf("%d/%d", stored, stored))
	figures.Check(t, hostileItem, "files created outside the data directory (or named after a key)", len(created), 0)
}

// rawRequest sends one request over a fresh connection exactly as given (Go's client would
// clean or refuse some of these targets) and returns the status and body (0, "" when the
// server closed without answering).
func rawRequest(t *testing.T, addr, method, target, body string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n%s",
		method, target, addr, len(body), body)
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// snapshotTree lists every path under root except those under skip (the data directory,
// which the node writes to as it should).
func snapshotTree(t *testing.T, root, skip string) map[string]bool {
	t.Helper()
	paths := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a file removed while walking (the node's own temporaries)
		}
		if p == skip {
			return filepath.SkipDir
		}
		paths[p] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// findNamed returns the paths under root whose name contains marker. Unreadable directories
// (other users' in /tmp) are skipped.
func findNamed(t *testing.T, root, marker string) []string {
	t.Helper()
	var found []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.Contains(d.Name(), marker) {
			found = append(found, p)
		}
		return nil
	})
	return found
}
