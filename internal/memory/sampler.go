package memory

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"

	"github.com/kuracache/kura/internal/config"
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
	if dir, version, ok := limitedCgroup(root); ok {
		s := &SystemSampler{source: fmt.Sprintf("cgroup %s working set (%s)", version, dir)}
		if version == "v2" {
			s.read = func() (int64, error) { return cgroupWorkingSet(dir, "memory.current", "inactive_file") }
		} else {
			s.read = func() (int64, error) { return cgroupWorkingSet(dir, "memory.usage_in_bytes", "total_inactive_file") }
		}
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

// limitedCgroup returns the directory of the cgroup whose memory limit binds this process: its
// own or the ancestor with the smallest finite limit (a systemd unit's MemoryMax sits in its
// own cgroup, a container's at the root of its namespaced mount). ok is false when there is no
// limit anywhere on the path.
func limitedCgroup(root string) (dir, version string, ok bool) {
	base := filepath.Join(root, "sys", "fs", "cgroup")
	if exists(filepath.Join(base, "cgroup.controllers")) {
		rel := selfCgroupPath(root, func(hierarchy, controllers string) bool { return hierarchy == "0" && controllers == "" })
		dir, ok = smallestLimit(base, rel, "memory.max")
		return dir, "v2", ok
	}
	v1 := filepath.Join(base, "memory")
	if exists(v1) {
		rel := selfCgroupPath(root, func(_, controllers string) bool {
			for c := range strings.SplitSeq(controllers, ",") {
				if c == "memory" {
					return true
				}
			}
			return false
		})
		dir, ok = smallestLimit(v1, rel, "memory.limit_in_bytes")
		return dir, "v1", ok
	}
	return "", "", false
}

// selfCgroupPath returns the path of the first /proc/self/cgroup line
// ("hierarchy:controllers:path") accepted by match, or "/".
func selfCgroupPath(root string, match func(hierarchy, controllers string) bool) string {
	data, err := os.ReadFile(filepath.Join(root, "proc", "self", "cgroup"))
	if err != nil {
		return "/"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) == 3 && match(parts[0], parts[1]) {
			// Cleaned against "/" so an odd path cannot climb out of the mount.
			return path.Clean("/" + parts[2])
		}
	}
	return "/"
}

// smallestLimit walks from rel up to the mount root and returns the directory holding the
// smallest finite limit in file. Directories not visible in this mount are skipped.
func smallestLimit(mount, rel, file string) (string, bool) {
	var (
		best  int64
		found string
	)
	for dir := rel; ; dir = path.Dir(dir) {
		full := filepath.Join(mount, filepath.FromSlash(dir))
		if n, ok := config.ReadCgroupLimit(filepath.Join(full, file)); ok && (found == "" || n < best) {
			best, found = n, full
		}
		if dir == "/" {
			break
		}
	}
	return found, found != ""
}

// cgroupWorkingSet is usage minus the inactive file pages, never below zero.
func cgroupWorkingSet(dir, usageFile, inactiveKey string) (int64, error) {
	data, err := os.ReadFile(filepath.Join(dir, usageFile))
	if err != nil {
		return 0, fmt.Errorf("read cgroup memory use: %w", err)
	}
	usage, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil || usage < 0 {
		return 0, fmt.Errorf("read cgroup memory use: bad value %q in %s", bytes.TrimSpace(data), filepath.Join(dir, usageFile))
	}
	inactive, err := statField(filepath.Join(dir, "memory.stat"), inactiveKey)
	if err != nil {
		return 0, fmt.Errorf("read cgroup memory use: %w", err)
	}
	return max(usage-inactive, 0), nil
}

// statField returns the value of key in a cgroup memory.stat file ("key value" lines).
func statField(file, key string) (int64, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || name != key {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad %s value %q in %s", key, value, file)
		}
		return n, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", file, err)
	}
	return 0, fmt.Errorf("no %s line in %s", key, file)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
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
