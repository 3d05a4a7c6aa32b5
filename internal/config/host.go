package config

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/kuracache/kura/internal/cgroup"
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

// cgroupMemoryLimit is the cgroup limit under root with its source for the startup log
// ("cgroup v2 /sys/fs/cgroup/memory.max"), the path shown as seen from root.
func cgroupMemoryLimit(root string) (int64, string, bool) {
	l, ok := cgroup.MemoryLimit(root)
	if !ok {
		return 0, "", false
	}
	shown := l.File
	if r, err := filepath.Rel(root, l.File); err == nil {
		shown = "/" + filepath.ToSlash(r)
	}
	return l.Bytes, "cgroup " + string(l.Version) + " " + shown, true
}
