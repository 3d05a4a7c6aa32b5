package cgroup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kuracache/kura/internal/testsupport"
)

func TestMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name    string
		files   map[string]string
		ok      bool
		version Version
		bytes   int64
		dir     string // relative to the root
	}{
		{
			name: "v2 limit at the root",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
				"sys/fs/cgroup/memory.max":         "536870912\n",
				"proc/self/cgroup":                 "0::/\n",
			},
			ok: true, version: V2, bytes: 512 * mib, dir: "sys/fs/cgroup",
		},
		{
			name: "v2 max means no limit",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers": "memory\n",
				"sys/fs/cgroup/memory.max":         "max\n",
			},
		},
		{
			name: "v2 recognised by memory.max alone",
			files: map[string]string{
				"sys/fs/cgroup/memory.max": "1073741824\n",
			},
			ok: true, version: V2, bytes: 1024 * mib, dir: "sys/fs/cgroup",
		},
		{
			name: "v2 nested: the smallest limit on the path wins",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers":                   "memory\n",
				"proc/self/cgroup":                                   "0::/system.slice/kura.service\n",
				"sys/fs/cgroup/system.slice/memory.max":              "2147483648\n",
				"sys/fs/cgroup/system.slice/kura.service/memory.max": "max\n",
			},
			ok: true, version: V2, bytes: 2048 * mib, dir: "sys/fs/cgroup/system.slice",
		},
		{
			name: "v2 own limit below the parent's",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers":                   "memory\n",
				"proc/self/cgroup":                                   "0::/system.slice/kura.service\n",
				"sys/fs/cgroup/system.slice/memory.max":              "2147483648\n",
				"sys/fs/cgroup/system.slice/kura.service/memory.max": "268435456\n",
			},
			ok: true, version: V2, bytes: 256 * mib, dir: "sys/fs/cgroup/system.slice/kura.service",
		},
		{
			name: "v2 own path not visible (container without cgroupns): mount root",
			files: map[string]string{
				"sys/fs/cgroup/memory.max": "1073741824\n",
				"proc/self/cgroup":         "0::/kubepods/burstable/pod1234/abcdef\n",
			},
			ok: true, version: V2, bytes: 1024 * mib, dir: "sys/fs/cgroup",
		},
		{
			name: "v2 ignores v1 lines of a hybrid /proc/self/cgroup",
			files: map[string]string{
				"sys/fs/cgroup/cgroup.controllers": "memory\n",
				"proc/self/cgroup":                 "4:memory:/elsewhere\n0::/app\n",
				"sys/fs/cgroup/app/memory.max":     "104857600\n",
			},
			ok: true, version: V2, bytes: 100 * mib, dir: "sys/fs/cgroup/app",
		},
		{
			name: "v1 limit",
			files: map[string]string{
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "805306368\n",
				"proc/self/cgroup":                           "12:cpu,cpuacct:/\n11:memory:/\n",
			},
			ok: true, version: V1, bytes: 768 * mib, dir: "sys/fs/cgroup/memory",
		},
		{
			name: "v1 nested path from a combined controller line",
			files: map[string]string{
				"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n",
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "314572800\n",
				"proc/self/cgroup": "7:cpuset:/other\n5:blkio,memory:/docker/abc\n",
			},
			ok: true, version: V1, bytes: 300 * mib, dir: "sys/fs/cgroup/memory/docker/abc",
		},
		{
			name: "v1 huge value means no limit",
			files: map[string]string{
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
			},
		},
		{
			name:  "no cgroup mount",
			files: map[string]string{"proc/self/cgroup": "0::/\n"},
		},
		{
			name:  "garbage and negative values are no limit",
			files: map[string]string{"sys/fs/cgroup/memory.max": "-1\n", "proc/self/cgroup": "0::/a\n", "sys/fs/cgroup/a/memory.max": "lots\n"},
		},
		{
			name:  "hostile cgroup path cannot climb out of the mount",
			files: map[string]string{"sys/fs/cgroup/memory.max": "max\n", "proc/self/cgroup": "0::/../../../etc\n", "etc/memory.max": "1048576\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := testsupport.FileTree(t, tt.files)
			l, ok := MemoryLimit(root)
			if ok != tt.ok {
				t.Fatalf("MemoryLimit ok = %v (%+v), want %v", ok, l, tt.ok)
			}
			if !ok {
				return
			}
			wantDir := filepath.Join(root, filepath.FromSlash(tt.dir))
			wantFile := filepath.Join(wantDir, "memory.max")
			if tt.version == V1 {
				wantFile = filepath.Join(wantDir, "memory.limit_in_bytes")
			}
			want := Limit{Version: tt.version, Bytes: tt.bytes, Dir: wantDir, File: wantFile}
			if l != want {
				t.Fatalf("MemoryLimit = %+v, want %+v", l, want)
			}
		})
	}
}

func TestReadLimit(t *testing.T) {
	tests := []struct {
		content string
		want    int64
		ok      bool
	}{
		{"536870912\n", 536870912, true},
		{"  4096  ", 4096, true},
		{"max\n", 0, false},
		{"9223372036854771712\n", 0, false}, // v1's "unlimited"
		{"4611686018427387904", 0, false},   // 2^62, the cut-off
		{"4611686018427387903", 4611686018427387903, true},
		{"0\n", 0, false},
		{"-1\n", 0, false},
		{"12k\n", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		file := filepath.Join(t.TempDir(), "memory.max")
		if err := os.WriteFile(file, []byte(tt.content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, ok := ReadLimit(file); got != tt.want || ok != tt.ok {
			t.Errorf("ReadLimit(%q) = %d, %v; want %d, %v", tt.content, got, ok, tt.want, tt.ok)
		}
	}
	if _, ok := ReadLimit(filepath.Join(t.TempDir(), "missing")); ok {
		t.Error("ReadLimit of a missing file reported a limit")
	}
}

func TestWorkingSet(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		want    int64
		wantErr string
	}{
		{
			name: "v2 usage minus inactive file pages",
			files: map[string]string{
				"sys/fs/cgroup/memory.max":     "1073741824\n",
				"sys/fs/cgroup/memory.current": "500000000\n",
				"sys/fs/cgroup/memory.stat":    "anon 100\nactive_file 7\ninactive_file 200000000\n",
			},
			want: 300000000,
		},
		{
			name: "v1 usage minus total_inactive_file",
			files: map[string]string{
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "1073741824\n",
				"sys/fs/cgroup/memory/memory.usage_in_bytes": "400000000\n",
				"sys/fs/cgroup/memory/memory.stat":           "inactive_file 1\ntotal_inactive_file 150000000\n",
			},
			want: 250000000,
		},
		{
			name: "never below zero",
			files: map[string]string{
				"sys/fs/cgroup/memory.max":     "1073741824\n",
				"sys/fs/cgroup/memory.current": "100\n",
				"sys/fs/cgroup/memory.stat":    "inactive_file 200\n",
			},
			want: 0,
		},
		{
			name: "usage unreadable",
			files: map[string]string{
				"sys/fs/cgroup/memory.max":  "1073741824\n",
				"sys/fs/cgroup/memory.stat": "inactive_file 200\n",
			},
			wantErr: "read cgroup memory use",
		},
		{
			name: "no inactive_file line",
			files: map[string]string{
				"sys/fs/cgroup/memory.max":     "1073741824\n",
				"sys/fs/cgroup/memory.current": "100\n",
				"sys/fs/cgroup/memory.stat":    "anon 100\n",
			},
			wantErr: "no inactive_file line",
		},
		{
			name: "bad usage value",
			files: map[string]string{
				"sys/fs/cgroup/memory.max":     "1073741824\n",
				"sys/fs/cgroup/memory.current": "much\n",
				"sys/fs/cgroup/memory.stat":    "inactive_file 1\n",
			},
			wantErr: "bad value",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, ok := MemoryLimit(testsupport.FileTree(t, tt.files))
			if !ok {
				t.Fatal("no limit found in the fake tree")
			}
			got, err := l.WorkingSet()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WorkingSet = %d, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("WorkingSet = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}
