package config

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// Host is what the budget rules derive from. The Source fields say where each value came
// from so the startup log can show it.
type Host struct {
	FileDescriptorLimit  int   // RLIMIT_NOFILE (soft), or FallbackFileDescriptorLimit
	MemoryLimitBytes     int64 // the smaller of the cgroup limit and physical memory
	CPUCount             int   // runtime.NumCPU()
	FileDescriptorSource string
	MemorySource         string
}

// cgroupV1Unlimited: cgroup v1 reports "no limit" as a page-rounded huge number
// (0x7FFFFFFFFFFFF000 on 64-bit); anything at or above 2^62 bytes cannot be a real limit.
const cgroupV1Unlimited = int64(1) << 62

// HostProbe detects the Host. Every input is injectable so tests feed a fake filesystem
// root and fake system calls; the zero value probes the real machine.
type HostProbe struct {
	// Root is prepended to /sys/fs/cgroup/... and /proc/...; "" means "/".
	Root string
	// Getrlimit returns the soft RLIMIT_NOFILE; nil uses the system call.
	Getrlimit func() (uint64, error)
	// Sysinfo returns total RAM in bytes, used when /proc/meminfo cannot be read; nil uses
	// sysinfo(2).
	Sysinfo func() (uint64, error)
	// NumCPU returns the CPU count; nil uses runtime.NumCPU.
	NumCPU func() int
}

// DetectHost probes the real machine.
func DetectHost() Host { return HostProbe{}.Detect() }

// Detect probes the descriptor limit, memory limit and CPU count. It never fails: a value
// it cannot read falls back to a conservative default named in the Source fields.
func (p HostProbe) Detect() Host {
	var h Host
	getrlimit := p.Getrlimit
	if getrlimit == nil {
		getrlimit = getrlimitNOFILE
	}
	if n, err := getrlimit(); err == nil && n > 0 {
		// RLIM_INFINITY and absurd values are capped: no budget needs more, and int must hold it.
		h.FileDescriptorLimit = int(min(n, 1<<30))
		h.FileDescriptorSource = "RLIMIT_NOFILE"
	} else {
		h.FileDescriptorLimit = FallbackFileDescriptorLimit
		if err == nil {
			err = fmt.Errorf("limit is 0")
		}
		h.FileDescriptorSource = fmt.Sprintf("fallback (RLIMIT_NOFILE unavailable: %v)", err)
	}

	h.MemoryLimitBytes, h.MemorySource = p.memory()

	numCPU := p.NumCPU
	if numCPU == nil {
		numCPU = runtime.NumCPU
	}
	h.CPUCount = numCPU()
	return h
}

func (p HostProbe) root() string {
	if p.Root == "" {
		return "/"
	}
	return p.Root
}

// memory returns the smaller of the cgroup limit and physical memory: a cgroup limit above
// the machine's RAM (common for v1's page-rounded values or a generous pod limit) would
// otherwise let the budgets overcommit.
func (p HostProbe) memory() (int64, string) {
	physical, physSource, physOK := p.physicalMemory()
	cgroup, cgSource, cgOK := cgroupMemoryLimit(p.root())
	switch {
	case cgOK && physOK:
		if cgroup <= physical {
			return cgroup, cgSource
		}
		return physical, physSource + " (below the " + cgSource + " limit)"
	case cgOK:
		return cgroup, cgSource
	case physOK:
		return physical, physSource
	default:
		return FallbackMemoryLimitBytes, "fallback (no cgroup limit, physical memory unreadable)"
	}
}

func (p HostProbe) physicalMemory() (int64, string, bool) {
	if n, err := readMemTotal(filepath.Join(p.root(), "proc", "meminfo")); err == nil {
		return n, "physical (/proc/meminfo)", true
	}
	sysinfo := p.Sysinfo
	if sysinfo == nil {
		sysinfo = sysinfoTotalRAM
	}
	if n, err := sysinfo(); err == nil && n > 0 {
		return int64(min(n, math.MaxInt64)), "physical (sysinfo)", true
	}
	return 0, "", false
}

// readMemTotal parses the "MemTotal:  16316412 kB" line of /proc/meminfo.
func readMemTotal(file string) (int64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", file, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "MemTotal:" {
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || kb <= 0 || kb > math.MaxInt64/1024 {
			return 0, fmt.Errorf("parse MemTotal %q in %s", fields[1], file)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no MemTotal line in %s", file)
}

// cgroupMemoryLimit finds the memory limit of this process's cgroup. The unified (v2)
// hierarchy is used when /sys/fs/cgroup is a cgroup2 mount (it has cgroup.controllers or
// memory.max); otherwise the v1 memory controller at /sys/fs/cgroup/memory. The process's
// own cgroup path (from /proc/self/cgroup) and each of its ancestors are read, because the
// effective limit is the smallest on the path: a systemd unit's MemoryMax sits in its own
// cgroup while a container's (with a cgroup namespace) is at the mount root.
func cgroupMemoryLimit(root string) (int64, string, bool) {
	base := filepath.Join(root, "sys", "fs", "cgroup")
	if exists(filepath.Join(base, "cgroup.controllers")) || exists(filepath.Join(base, "memory.max")) {
		rel := selfCgroupPath(root, func(hierarchy, controllers string) bool { return hierarchy == "0" && controllers == "" })
		return smallestLimit(root, base, rel, "memory.max", "cgroup v2")
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
		return smallestLimit(root, v1, rel, "memory.limit_in_bytes", "cgroup v1")
	}
	return 0, "", false
}

// selfCgroupPath returns the cgroup path of the first /proc/self/cgroup line
// ("hierarchy:controllers:path") accepted by match, or "/" when there is none.
func selfCgroupPath(root string, match func(hierarchy, controllers string) bool) string {
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

// smallestLimit reads file in the cgroup directory rel under mount and in every ancestor up
// to the mount root, returning the smallest finite limit. "max" (v2) and huge values (v1)
// mean no limit at that level; a missing directory (a host path not visible inside a
// container) is skipped.
func smallestLimit(root, mount, rel, file, label string) (int64, string, bool) {
	var (
		best   int64
		source string
		found  bool
	)
	for dir := rel; ; dir = path.Dir(dir) {
		full := filepath.Join(mount, filepath.FromSlash(dir), file)
		if n, ok := ReadCgroupLimit(full); ok && (!found || n < best) {
			best, found = n, true
			shown := full
			if r, err := filepath.Rel(root, full); err == nil {
				shown = "/" + filepath.ToSlash(r)
			}
			source = label + " " + shown
		}
		if dir == "/" {
			break
		}
	}
	return best, source, found
}

// ReadCgroupLimit reads a cgroup memory limit file (v2 memory.max or v1
// memory.limit_in_bytes): the limit, or false when the file is missing, unreadable or says
// "no limit" ("max" in v2, a huge number in v1). The memory controller reads limits the same way.
func ReadCgroupLimit(file string) (int64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= cgroupV1Unlimited {
		return 0, false
	}
	return n, true
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
