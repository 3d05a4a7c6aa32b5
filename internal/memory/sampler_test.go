package memory

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree writes files (path relative to root → content) under a fresh root.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const fakeStatm = "50000 3000 400 100 0 2000 0\n" // 3000 resident pages

func TestSystemSamplerSources(t *testing.T) {
	page := int64(os.Getpagesize())
	for _, tc := range []struct {
		name       string
		files      map[string]string
		wantSource string
		want       int64
	}{
		{
			name: "cgroup v2 limit on the process's own cgroup: working set",
			files: map[string]string{
				"proc/self/cgroup":                                "0::/kubepods/pod1/kura\n",
				"proc/self/statm":                                 fakeStatm,
				"sys/fs/cgroup/cgroup.controllers":                "cpu memory\n",
				"sys/fs/cgroup/kubepods/pod1/kura/memory.max":     "1073741824\n",
				"sys/fs/cgroup/kubepods/pod1/kura/memory.current": "500000000\n",
				"sys/fs/cgroup/kubepods/pod1/kura/memory.stat":    "anon 300000000\nfile 200000000\ninactive_file 150000000\nactive_file 50000000\n",
			},
			wantSource: "cgroup v2 working set",
			want:       350000000,
		},
		{
			name: "cgroup v2 limit on an ancestor (a systemd slice): that cgroup is sampled",
			files: map[string]string{
				"proc/self/cgroup":                                   "0::/system.slice/kura.service\n",
				"proc/self/statm":                                    fakeStatm,
				"sys/fs/cgroup/cgroup.controllers":                   "memory\n",
				"sys/fs/cgroup/system.slice/memory.max":              "2000000000\n",
				"sys/fs/cgroup/system.slice/memory.current":          "800000000\n",
				"sys/fs/cgroup/system.slice/memory.stat":             "inactive_file 100000000\n",
				"sys/fs/cgroup/system.slice/kura.service/memory.max": "max\n",
			},
			wantSource: "system.slice)",
			want:       700000000,
		},
		{
			name: "cgroup v2 without a limit: resident set size",
			files: map[string]string{
				"proc/self/cgroup":                 "0::/\n",
				"proc/self/statm":                  fakeStatm,
				"sys/fs/cgroup/cgroup.controllers": "memory\n",
				"sys/fs/cgroup/memory.current":     "999\n",
				"sys/fs/cgroup/memory.stat":        "inactive_file 0\n",
			},
			wantSource: "resident set size",
			want:       3000 * page,
		},
		{
			name: "cgroup v1 with a limit",
			files: map[string]string{
				"proc/self/cgroup": "4:memory:/docker/abc\n3:cpu:/docker/abc\n",
				"proc/self/statm":  fakeStatm,
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "536870912\n",
				"sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": "400000000\n",
				"sys/fs/cgroup/memory/docker/abc/memory.stat":           "cache 1\ninactive_file 5\ntotal_inactive_file 100000000\n",
			},
			wantSource: "cgroup v1 working set",
			want:       300000000,
		},
		{
			name: "cgroup v1 unlimited (the huge page-rounded value): resident set size",
			files: map[string]string{
				"proc/self/cgroup": "4:memory:/\n",
				"proc/self/statm":  fakeStatm,
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
				"sys/fs/cgroup/memory/memory.usage_in_bytes": "1\n",
			},
			wantSource: "resident set size",
			want:       3000 * page,
		},
		{
			name: "a cgroup limit whose usage cannot be read: resident set size",
			files: map[string]string{
				"proc/self/cgroup":                 "0::/\n",
				"proc/self/statm":                  fakeStatm,
				"sys/fs/cgroup/cgroup.controllers": "memory\n",
				"sys/fs/cgroup/memory.max":         "1000000\n",
			},
			wantSource: "resident set size",
			want:       3000 * page,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSystemSampler(tree(t, tc.files))
			if !strings.Contains(s.Source(), tc.wantSource) {
				t.Fatalf("source %q, want it to contain %q", s.Source(), tc.wantSource)
			}
			got, err := s.Sample()
			if err != nil || got != tc.want {
				t.Fatalf("Sample = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestSystemSamplerFallsBackToTheGoRuntime(t *testing.T) {
	s := NewSystemSampler(t.TempDir()) // neither cgroup files nor /proc
	if !strings.Contains(s.Source(), "Go runtime") {
		t.Fatalf("source %q", s.Source())
	}
	got, err := s.Sample()
	if err != nil || got <= 0 {
		t.Fatalf("Sample = %d, %v", got, err)
	}
}

// A sampler whose files disappear reports an error instead of a made-up figure.
func TestSystemSamplerReportsReadErrors(t *testing.T) {
	root := tree(t, map[string]string{"proc/self/statm": fakeStatm})
	s := NewSystemSampler(root)
	if err := os.Remove(filepath.Join(root, "proc", "self", "statm")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sample(); err == nil || !strings.Contains(err.Error(), "resident set size") {
		t.Fatalf("Sample after statm vanished: %v", err)
	}
	for _, bad := range []string{"", "1 x 2", "1 -5 2"} {
		if err := os.WriteFile(filepath.Join(root, "proc", "self", "statm"), []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sample(); err == nil {
			t.Fatalf("statm %q accepted", bad)
		}
	}
}

func TestRealSystemSampler(t *testing.T) {
	s := NewSystemSampler("")
	got, err := s.Sample()
	if err != nil || got <= 0 {
		t.Fatalf("Sample = %d, %v (source %s)", got, err, s.Source())
	}
	g := ReadGoFigures()
	if g.HeapLive < 0 || g.Mapped <= 0 {
		t.Fatalf("Go figures %+v", g)
	}
	t.Logf("source %s: %.1f MiB; Go runtime: live heap %.1f MiB, mapped %.1f MiB",
		s.Source(), float64(got)/(1<<20), float64(g.HeapLive)/(1<<20), float64(g.Mapped)/(1<<20))
}
