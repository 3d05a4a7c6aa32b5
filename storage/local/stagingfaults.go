package local

import (
	"io"
	"os"
)

// stagingFault asks Options.stagingFaults (tests only) whether the staging operation op on
// path fails; nil when no hook is set.
func (s *Store) stagingFault(op, path string) error {
	if s.opts.stagingFaults == nil {
		return nil
	}
	return s.opts.stagingFaults(op, path)
}

// stagingWriter is f, or with a fault hook set, f behind it.
func (s *Store) stagingWriter(f *os.File) io.Writer {
	if s.opts.stagingFaults == nil {
		return f
	}
	return faultyStagingWriter{s: s, f: f}
}

// faultyStagingWriter consults the hook before each write; a refused write still lands half
// its bytes, the worst case a filling disk produces (a short write, then the error).
type faultyStagingWriter struct {
	s *Store
	f *os.File
}

func (w faultyStagingWriter) Write(p []byte) (int, error) {
	if err := w.s.stagingFault("write", w.f.Name()); err != nil {
		n, _ := w.f.Write(p[:len(p)/2])
		return n, err
	}
	return w.f.Write(p)
}
