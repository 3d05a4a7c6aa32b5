package ops

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// repoRoot is the repository root: the files under test live there and under ops/.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	return root
}

// readRepoFile reads a file given relative to the repository root.
func readRepoFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// freePorts returns n distinct loopback ports that were free for both TCP and UDP (gossip
// binds both) a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var held []func()
	defer func() {
		for _, release := range held {
			release()
		}
	}()
	for len(ports) < n {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			tl.Close()
			continue
		}
		held = append(held, func() { tl.Close(); ul.Close() })
		ports = append(ports, port)
	}
	return ports
}
