package segment

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The crash test re-executes this binary as the process it kills.
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		os.Exit(3) // crashChild never returns normally
	}
	goleak.VerifyTestMain(m)
}

// openManager opens a Manager on fresh temporary directories (unless opts names them) and
// closes it when the test ends.
func openManager(t testing.TB, opts Options) *Manager {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	m, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

// testBody returns n deterministic pseudo-random bytes for seed.
func testBody(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// commit stages body under name in chunks (like io.Copy would) and commits it.
func commit(t testing.TB, m *Manager, name string, body []byte) Location {
	t.Helper()
	loc, err := tryCommit(context.Background(), m, name, body)
	if err != nil {
		t.Fatalf("commit %q (%d bytes): %v", name, len(body), err)
	}
	return loc
}

func tryCommit(ctx context.Context, m *Manager, name string, body []byte) (Location, error) {
	s, err := m.Stage(context.Background(), []byte(name))
	if err != nil {
		return Location{}, err
	}
	defer s.Abort()
	// Write in 32 KiB chunks, as io.Copy from a request body would.
	for rest := body; len(rest) > 0; {
		n := min(len(rest), 32<<10)
		if _, err := s.Write(rest[:n]); err != nil {
			return Location{}, err
		}
		rest = rest[n:]
	}
	if s.Size() != int64(len(body)) {
		return Location{}, errors.New("staged size mismatch")
	}
	if s.SHA256() != sha256.Sum256(body) {
		return Location{}, errors.New("staged SHA-256 mismatch")
	}
	return s.Commit(ctx)
}

// readRecord reads body bytes [off, off+n) of the record at loc.
func readRecord(m *Manager, loc Location, name string, off, n int64) ([]byte, error) {
	r, err := m.OpenRecord(context.Background(), loc, []byte(name), off, n)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func mustRead(t testing.TB, m *Manager, loc Location, name string, want []byte) {
	t.Helper()
	got, err := readRecord(m, loc, name, 0, -1)
	if err != nil {
		t.Fatalf("read %q at %+v: %v", name, loc, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q at %+v: got %d bytes, want %d (content differs: %v)", name, loc, len(got), len(want), len(got) == len(want))
	}
}
