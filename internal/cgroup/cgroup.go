package cgroup

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// v1Unlimited: cgroup v1 reports "no limit" as a page-rounded huge number
// (0x7FFFFFFFFFFFF000 on 64-bit); anything at or above 2^62 bytes cannot be a real limit.
const v1Unlimited = int64(1) << 62

// Version names a cgroup hierarchy.
type Version string

// The hierarchies MemoryLimit understands.
const (
	V1 Version = "v1"
	V2 Version = "v2"
)

// Limit is the memory limit that binds this process: the smallest finite limit on the path
// from its own cgroup up to the mount root.
type Limit struct {
	Version Version
	Bytes   int64
	// Dir is the cgroup directory holding the limit (root included), whose usage files
	// WorkingSet reads.
	Dir string
	// File is the limit file (root included): Dir/memory.max or Dir/memory.limit_in_bytes.
	File string
}

// MemoryLimit finds the memory limit of this process's cgroup under root ("" means "/").
// The unified (v2) hierarchy is used when /sys/fs/cgroup is a cgroup2 mount (it has
// cgroup.controllers or memory.max); otherwise the v1 memory controller at
// /sys/fs/cgroup/memory. The process's own cgroup path (from /proc/self/cgroup) and each of
// its ancestors are read, because the effective limit is the smallest on the path: a systemd
// unit's MemoryMax sits in its own cgroup while a container's (with a cgroup namespace) is at
// the mount root. ok is false when no level has a finite limit.
func MemoryLimit(root string) (l Limit, ok bool) {
	if root == "" {
		root = "/"
	}
	base := filepath.Join(root, "sys", "fs", "cgroup")
	if exists(filepath.Join(base, "cgroup.controllers")) || exists(filepath.Join(base, "memory.max")) {
		rel := selfPath(root, func(hierarchy, controllers string) bool { return hierarchy == "0" && controllers == "" })
		return smallest(V2, base, rel, "memory.max")
	}
	v1 := filepath.Join(base, "memory")
	if exists(v1) {
		rel := selfPath(root, func(_, controllers string) bool {
			for c := range strings.SplitSeq(controllers, ",") {
				if c == "memory" {
					return true
				}
			}
			return false
		})
		return smallest(V1, v1, rel, "memory.limit_in_bytes")
	}
	return Limit{}, false
}

// selfPath returns the cgroup path of the first /proc/self/cgroup line
// ("hierarchy:controllers:path") accepted by match, or "/" when there is none.
func selfPath(root string, match func(hierarchy, controllers string) bool) string {
	data, err := os.ReadFile(filepath.Join(root, "proc", "self", "cgroup"))
	if err != nil {
		return "/"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) == 3 && match(parts[0], parts[1]) {
			// Clean against "/" so a hostile or odd path can never climb out of the mount.
			return path.Clean("/" + parts[2])
		}
	}
	return "/"
}

// smallest reads file in the cgroup directory rel under mount and in every ancestor up to
// the mount root and returns the smallest finite limit. A missing directory (a host path not
// visible inside a container) is skipped.
func smallest(v Version, mount, rel, file string) (Limit, bool) {
	var best Limit
	for dir := rel; ; dir = path.Dir(dir) {
		full := filepath.Join(mount, filepath.FromSlash(dir))
		f := filepath.Join(full, file)
		if n, ok := ReadLimit(f); ok && (best.File == "" || n < best.Bytes) {
			best = Limit{Version: v, Bytes: n, Dir: full, File: f}
		}
		if dir == "/" {
			break
		}
	}
	return best, best.File != ""
}

// ReadLimit reads a cgroup memory limit file (v2 memory.max or v1 memory.limit_in_bytes):
// the limit, or false when the file is missing, unreadable or says "no limit" ("max" in v2,
// a huge number in v1).
func ReadLimit(file string) (int64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= v1Unlimited {
		return 0, false
	}
	return n, true
}

// WorkingSet reads the memory use of the limit's cgroup as the OOM killer sees it: usage
// (memory.current in v2, memory.usage_in_bytes in v1) minus the inactive file pages of
// memory.stat, never below zero. It is the figure kubelet calls the working set.
func (l Limit) WorkingSet() (int64, error) {
	usageFile, inactiveKey := "memory.current", "inactive_file"
	if l.Version == V1 {
		usageFile, inactiveKey = "memory.usage_in_bytes", "total_inactive_file"
	}
	file := filepath.Join(l.Dir, usageFile)
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("read cgroup memory use: %w", err)
	}
	usage, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil || usage < 0 {
		return 0, fmt.Errorf("read cgroup memory use: bad value %q in %s", bytes.TrimSpace(data), file)
	}
	inactive, err := statField(filepath.Join(l.Dir, "memory.stat"), inactiveKey)
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
