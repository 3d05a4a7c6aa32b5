package memory

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"

	"github.com/kuracache/kura/internal/cgroup"
)

// SystemSampler reads the process's memory use from the operating system. The source is chosen
// once, in NewSystemSampler; see docs/memory.md for why each. It is safe for
// concurrent use.
type SystemSampler struct {
	source string
	read   func() (int64, error)
}

// NewSystemSampler picks the measure of memory use: the working set of the cgroup whose limit
// binds this process (cgroup v2, then v1), else the resident set size, else the Go runtime's
// own figure. root is prepended to /sys/fs/cgroup and /proc ("" means the real ones; tests pass
// a fake tree). A source is only chosen after one successful read.
func NewSystemSampler(root string) *SystemSampler {
	if root == "" {
		root = "/"
	}
	if l, ok := cgroup.MemoryLimit(root); ok {
		s := &SystemSampler{source: fmt.Sprintf("cgroup %s working set (%s)", l.Version, l.Dir), read: l.WorkingSet}
		if _, err := s.read(); err == nil {
			return s
		}
	}
	statm := filepath.Join(root, "proc", "self", "statm")
	rss := &SystemSampler{source: "resident set size (" + statm + ")", read: func() (int64, error) { return readRSS(statm) }}
	if _, err := rss.read(); err == nil {
		return rss
	}
	return &SystemSampler{source: "Go runtime (runtime/metrics; no cgroup or /proc figure readable)", read: goMapped}
}

// Sample returns the current memory use in bytes.
func (s *SystemSampler) Sample() (int64, error) { return s.read() }

// Source describes what Sample measures, for the startup log.
func (s *SystemSampler) Source() string { return s.source }

// ProcessRSS returns this process's resident set size from /proc/self/statm.
func ProcessRSS() (int64, error) { return readRSS("/proc/self/statm") }

// readRSS reads the second field of statm (resident pages) and converts it to bytes.
func readRSS(file string) (int64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("read resident set size: %w", err)
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return 0, fmt.Errorf("read resident set size: %s has %d fields, want at least 2", file, len(fields))
	}
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil || pages < 0 {
		return 0, fmt.Errorf("read resident set size: bad resident page count %q in %s", fields[1], file)
	}
	return pages * int64(os.Getpagesize()), nil
}

// GoFigures are the Go runtime's own view of its memory, from runtime/metrics.
type GoFigures struct {
	// HeapLive is the heap still reachable at the end of the last collection.
	HeapLive int64
	// Mapped is all memory the runtime has mapped and not returned to the OS: heap, stacks,
	// runtime metadata. It excludes memory the process holds outside the Go runtime.
	Mapped int64
}

var goSampleNames = []string{"/gc/heap/live:bytes", "/memory/classes/total:bytes", "/memory/classes/heap/released:bytes"}

// ReadGoFigures reads GoFigures (a few microseconds; no stop-the-world).
func ReadGoFigures() GoFigures {
	samples := make([]metrics.Sample, len(goSampleNames))
	for i, n := range goSampleNames {
		samples[i].Name = n
	}
	metrics.Read(samples)
	v := func(i int) int64 {
		if samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return int64(samples[i].Value.Uint64())
	}
	return GoFigures{HeapLive: v(0), Mapped: max(v(1)-v(2), 0)}
}

func goMapped() (int64, error) {
	f := ReadGoFigures()
	if f.Mapped == 0 {
		return 0, errors.New("read Go runtime memory: runtime/metrics reported nothing")
	}
	return f.Mapped, nil
}
