package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/kuracache/kura/internal/testsupport"
)

const meminfo16GiB = "MemTotal:       16777216 kB\nMemFree:         1000000 kB\n"

var errNoSysinfo = errors.New("sysinfo disabled in test")

func noSysinfo() (uint64, error) { return 0, errNoSysinfo }

func TestDetectMemory(t *testing.T) {
	tests := []struct {
		name       string
		files      map[string]string
		sysinfo    func() (uint64, error)
		want       int64
		wantSource string
	}{
		{
			name: "cgroup v2 limit",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
				"sys/fs/cgroup/memory.max":         "536870912\n",
				"proc/self/cgroup":                 "0::/\n",
				"proc/meminfo":                     meminfo16GiB,
			},
			want: 512 * MiB, wantSource: "cgroup v2 /sys/fs/cgroup/memory.max",
		},
		{
			name: "cgroup v2 max means unlimited: physical memory",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers": "memory\n",
				"sys/fs/cgroup/memory.max":         "max\n",
				"proc/meminfo":                     meminfo16GiB,
			},
			want: 16 * GiB, wantSource: "physical (/proc/meminfo)",
		},
		{
			name: "cgroup v2 nested: the smallest limit on the path wins",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers":                           "memory\n",
				"proc/self/cgroup":                                           "0::/system.slice/kura.service\n",
				"sys/fs/cgroup/system.slice/memory.max":                      "2147483648\n",
				"sys/fs/cgroup/system.slice/kura.service/memory.max":         "max\n",
				"sys/fs/cgroup/system.slice/kura.service/cgroup.controllers": "memory\n",
				"proc/meminfo": meminfo16GiB,
			},
			want: 2 * GiB, wantSource: "cgroup v2 /sys/fs/cgroup/system.slice/memory.max",
		},
		{
			name: "cgroup v2 own path not visible (container without cgroupns): mount root",
			files: map[string]string{
				"sys/fs/cgroup/memory.max": "1073741824\n",
				"proc/self/cgroup":         "0::/kubepods/burstable/pod1234/abcdef\n",
				"proc/meminfo":             meminfo16GiB,
			},
			want: 1 * GiB, wantSource: "cgroup v2 /sys/fs/cgroup/memory.max",
		},
		{
			name: "cgroup v2 limit above physical memory: physical wins",
			files: map[string]string{
				"sys/fs/cgroup/memory.max": "68719476736\n",
				"proc/meminfo":             meminfo16GiB,
			},
			want: 16 * GiB, wantSource: "physical (/proc/meminfo) (below the cgroup v2 /sys/fs/cgroup/memory.max limit)",
		},
		{
			name: "cgroup v1 limit",
			files: map[string]string{
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "805306368\n",
				"proc/self/cgroup":                           "12:cpu,cpuacct:/\n11:memory:/\n",
				"proc/meminfo":                               meminfo16GiB,
			},
			want: 768 * MiB, wantSource: "cgroup v1 /sys/fs/cgroup/memory/memory.limit_in_bytes",
		},
		{
			name: "cgroup v1 nested path from /proc/self/cgroup",
			files: map[string]string{
				"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n",
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "314572800\n",
				"proc/self/cgroup": "5:memory:/docker/abc\n",
				"proc/meminfo":     meminfo16GiB,
			},
			want: 300 * MiB, wantSource: "cgroup v1 /sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
		},
		{
			name: "cgroup v1 huge value means unlimited",
			files: map[string]string{
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
				"proc/meminfo": meminfo16GiB,
			},
			want: 16 * GiB, wantSource: "physical (/proc/meminfo)",
		},
		{
			name:  "no cgroup: physical memory",
			files: map[string]string{"proc/meminfo": meminfo16GiB},
			want:  16 * GiB, wantSource: "physical (/proc/meminfo)",
		},
		{
			name:    "no cgroup, no meminfo: sysinfo",
			files:   map[string]string{},
			sysinfo: func() (uint64, error) { return uint64(3 * GiB), nil },
			want:    3 * GiB, wantSource: "physical (sysinfo)",
		},
		{
			name:  "garbage everywhere: fallback",
			files: map[string]string{"proc/meminfo": "MemTotal: lots kB\n", "sys/fs/cgroup/memory.max": "-1\n"},
			want:  FallbackMemoryLimitBytes, wantSource: "fallback",
		},
		{
			name:  "hostile cgroup path cannot climb out of the mount",
			files: map[string]string{"sys/fs/cgroup/memory.max": "max\n", "proc/self/cgroup": "0::/../../../etc\n", "etc/memory.max": "1048576\n", "proc/meminfo": meminfo16GiB},
			want:  16 * GiB, wantSource: "physical (/proc/meminfo)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sysinfo := tt.sysinfo
			if sysinfo == nil {
				sysinfo = noSysinfo
			}
			probe := HostProbe{
				Root:      testsupport.FileTree(t, tt.files),
				Getrlimit: func() (uint64, error) { return 4096, nil },
				Sysinfo:   sysinfo,
				NumCPU:    func() int { return 3 },
			}
			h := probe.Detect()
			if h.MemoryLimitBytes != tt.want {
				t.Errorf("memory = %d (%s), want %s", h.MemoryLimitBytes, formatBytes(h.MemoryLimitBytes), formatBytes(tt.want))
			}
			if !strings.HasPrefix(h.MemorySource, tt.wantSource) {
				t.Errorf("memory source = %q, want prefix %q", h.MemorySource, tt.wantSource)
			}
			if h.CPUCount != 3 || h.FileDescriptorLimit != 4096 || h.FileDescriptorSource != "RLIMIT_NOFILE" {
				t.Errorf("cpu/fd probes not used: %+v", h)
			}
		})
	}
}

func TestDetectFileDescriptors(t *testing.T) {
	tests := []struct {
		name       string
		getrlimit  func() (uint64, error)
		want       int
		wantSource string
	}{
		{"rlimit", func() (uint64, error) { return 65536, nil }, 65536, "RLIMIT_NOFILE"},
		{"unavailable: conservative default", func() (uint64, error) { return 0, errors.New("EPERM") }, FallbackFileDescriptorLimit, "fallback (RLIMIT_NOFILE unavailable: EPERM)"},
		{"zero: conservative default", func() (uint64, error) { return 0, nil }, FallbackFileDescriptorLimit, "fallback"},
		{"RLIM_INFINITY is capped", func() (uint64, error) { return ^uint64(0), nil }, 1 << 30, "RLIMIT_NOFILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := HostProbe{Root: t.TempDir(), Getrlimit: tt.getrlimit, Sysinfo: noSysinfo, NumCPU: func() int { return 1 }}.Detect()
			if h.FileDescriptorLimit != tt.want || !strings.HasPrefix(h.FileDescriptorSource, tt.wantSource) {
				t.Errorf("got %d %q, want %d %q", h.FileDescriptorLimit, h.FileDescriptorSource, tt.want, tt.wantSource)
			}
		})
	}
}

// TestDetectHostReal runs the real probes: this machine must report plausible values.
func TestDetectHostReal(t *testing.T) {
	h := DetectHost()
	if h.FileDescriptorLimit < 1 || h.MemoryLimitBytes < MiB || h.CPUCount < 1 {
		t.Fatalf("implausible host: %+v", h)
	}
	if h.FileDescriptorSource == "" || h.MemorySource == "" {
		t.Fatalf("sources missing: %+v", h)
	}
	t.Logf("detected host: %+v", h)
}

func TestFilesystemSizeReal(t *testing.T) {
	size, err := filesystemSize(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if size < uint64(MiB) {
		t.Fatalf("filesystem size %d is implausible", size)
	}
}

func TestSysinfoReal(t *testing.T) {
	n, err := sysinfoTotalRAM()
	if err != nil {
		t.Fatal(err)
	}
	if n < uint64(MiB) {
		t.Fatalf("sysinfo total RAM %d is implausible", n)
	}
}
