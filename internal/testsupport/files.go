package testsupport

import (
	"os"
	"path/filepath"
	"testing"
)

// FileTree writes files (slash-separated path relative to the root → content) under a new
// temporary directory and returns it: a fake /proc or /sys for code that reads the host.
func FileTree(t testing.TB, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for rel, content := range files {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}
