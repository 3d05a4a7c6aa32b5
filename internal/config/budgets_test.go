package config

import (
	"fmt"
	"testing"
	"time"
)

// host builds a Host with enough memory and CPUs that only the field under test matters.
func host(fds int, mem int64, cpus int) Host {
	return Host{FileDescriptorLimit: fds, MemoryLimitBytes: mem, CPUCount: cpus}
}

func TestDeriveFileDescriptorBudgets(t *testing.T) {
	// usable_fds = limit − 128. Pool = usable/8 in [64, 256]; handle cache = pool/4 in
	// [16, 64] below the pool; metadata store = usable/2 in [128, 1024].
	tests := []struct {
		limit                      int
		pool, handles, metaOpenFds int
	}{
		{limit: 0, pool: 64, handles: 16, metaOpenFds: 128},         // usable saturates at 0
		{limit: 100, pool: 64, handles: 16, metaOpenFds: 128},       // below the reserve
		{limit: 384, pool: 64, handles: 16, metaOpenFds: 128},       // usable 256: meta exactly at its floor
		{limit: 600, pool: 64, handles: 16, metaOpenFds: 236},       // usable/8 = 59 → pool floor 64
		{limit: 640, pool: 64, handles: 16, metaOpenFds: 256},       // usable/8 = 64 exactly
		{limit: 648, pool: 65, handles: 16, metaOpenFds: 260},       // just above the pool floor
		{limit: 1024, pool: 112, handles: 28, metaOpenFds: 448},     // between every clamp
		{limit: 2176, pool: 256, handles: 64, metaOpenFds: 1024},    // usable 2048: both at their ceilings exactly
		{limit: 2184, pool: 256, handles: 64, metaOpenFds: 1024},    // usable/8 = 257 → ceiling
		{limit: 1 << 20, pool: 256, handles: 64, metaOpenFds: 1024}, // a container's 1M limit
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.limit), func(t *testing.T) {
			b := DeriveBudgets(host(tt.limit, 4*GiB, 4))
			if b.FileDescriptorPoolSize != tt.pool {
				t.Errorf("FD pool = %d, want %d", b.FileDescriptorPoolSize, tt.pool)
			}
			if b.SegmentHandleCacheSize != tt.handles {
				t.Errorf("segment handle cache = %d, want %d", b.SegmentHandleCacheSize, tt.handles)
			}
			if b.MetadataStoreMaxOpenFiles != tt.metaOpenFds {
				t.Errorf("metadata store max open files = %d, want %d", b.MetadataStoreMaxOpenFiles, tt.metaOpenFds)
			}
			if b.FileDescriptorAcquireTimeout != 5*time.Second {
				t.Errorf("acquire timeout = %v, want 5s", b.FileDescriptorAcquireTimeout)
			}
		})
	}
}

func TestSegmentHandleCacheFollowsOverriddenPool(t *testing.T) {
	// With the pool set by its variable, the handle cache is derived from that value and
	// capped below it.
	tests := []struct{ pool, handles int }{
		{pool: 2, handles: 1},     // cap pool−1 = 1
		{pool: 10, handles: 9},    // clamp gives 16, cap pool−1 = 9
		{pool: 16, handles: 15},   // clamp gives 16, cap 15
		{pool: 17, handles: 16},   // clamp 16 just fits below the pool
		{pool: 40, handles: 16},   // pool/4 = 10 → floor 16
		{pool: 64, handles: 16},   // pool/4 = 16 exactly
		{pool: 252, handles: 63},  // between
		{pool: 256, handles: 64},  // pool/4 = 64 exactly
		{pool: 260, handles: 64},  // pool/4 = 65 → ceiling 64
		{pool: 1000, handles: 64}, // far above
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.pool), func(t *testing.T) {
			b := deriveBudgets(host(1024, 4*GiB, 4), Budgets{FileDescriptorPoolSize: tt.pool})
			if b.FileDescriptorPoolSize != tt.pool {
				t.Fatalf("override lost: pool = %d", b.FileDescriptorPoolSize)
			}
			if b.SegmentHandleCacheSize != tt.handles {
				t.Errorf("segment handle cache = %d, want %d", b.SegmentHandleCacheSize, tt.handles)
			}
			if b.SegmentHandleCacheSize >= b.FileDescriptorPoolSize {
				t.Errorf("handle cache %d not below pool %d", b.SegmentHandleCacheSize, b.FileDescriptorPoolSize)
			}
		})
	}
}

func TestDeriveMemoryBudgets(t *testing.T) {
	// Values in MiB. soft = 70% (MiB-rounded) ≥ 128; hard = 85% (MiB-rounded) ≥ soft+64;
	// manifest = soft/16 in [8, 64]; read cache = write buffer pool = mem/32 in [16, 128];
	// write buffer = pool/4 in [4, 32]; max write buffers = pool/buffer in [2, 8].
	tests := []struct {
		name                                  string
		mem                                   int64
		soft, hard, manifest, readCache, wbuf int64
		maxBuffers                            int
	}{
		{"tiny: every floor", 100 * MiB, 128, 192, 8, 16, 4, 4},
		{"70% just below 128 MiB", 182 * MiB, 128, 192, 8, 16, 4, 4},
		{"70% rounds down to exactly 128 MiB", 183 * MiB, 128, 192, 8, 16, 4, 4},
		{"70% just above the floor", 185 * MiB, 129, 193, 8, 16, 4, 4},
		{"hard lifted to soft+64", 400 * MiB, 280, 344, 17, 16, 4, 4},
		{"85% above soft+64", 440 * MiB, 308, 374, 19, 16, 4, 4},
		{"read cache exactly at its floor", 512 * MiB, 358, 435, 22, 16, 4, 4},
		{"between every clamp", 1000 * MiB, 700, 850, 43, 31, 7, 4},
		{"not MiB-aligned", 1*GiB + 12345, 716, 870, 44, 32, 8, 4},
		{"read cache exactly at its ceiling", 4 * GiB, 2867, 3481, 64, 128, 32, 4},
		{"large host: ceilings", 16 * GiB, 11468, 13926, 64, 128, 32, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := DeriveBudgets(host(1024, tt.mem, 4))
			check := func(what string, got, wantMiB int64) {
				t.Helper()
				if got != wantMiB*MiB {
					t.Errorf("%s = %d (%s), want %d MiB", what, got, formatBytes(got), wantMiB)
				}
			}
			check("soft limit", b.MemorySoftLimitBytes, tt.soft)
			check("hard limit", b.MemoryHardLimitBytes, tt.hard)
			check("manifest cache", b.ManifestCacheMaxBytes, tt.manifest)
			check("read cache", b.MetadataStoreReadCacheBytes, tt.readCache)
			check("write buffer pool", b.MetadataStoreWriteBufferPoolBytes, tt.readCache)
			check("write buffer", b.MetadataStoreWriteBufferBytes, tt.wbuf)
			if b.MetadataStoreMaxWriteBuffers != tt.maxBuffers {
				t.Errorf("max write buffers = %d, want %d", b.MetadataStoreMaxWriteBuffers, tt.maxBuffers)
			}
		})
	}
}

func TestDeriveBackgroundJobs(t *testing.T) {
	for _, tt := range []struct{ cpus, jobs int }{{0, 1}, {1, 1}, {2, 2}, {8, 8}, {9, 8}, {64, 8}} {
		if got := DeriveBudgets(host(1024, GiB, tt.cpus)).MetadataStoreMaxBackgroundJobs; got != tt.jobs {
			t.Errorf("cpus %d: background jobs = %d, want %d", tt.cpus, got, tt.jobs)
		}
	}
}

func TestDerivedBudgetsFollowOverrides(t *testing.T) {
	h := host(1024, 1*GiB, 4)
	tests := []struct {
		name  string
		set   Budgets
		check func(t *testing.T, b Budgets)
	}{
		{
			name: "soft limit moves hard limit and manifest cache",
			set:  Budgets{MemorySoftLimitBytes: 1 * GiB},
			check: func(t *testing.T, b Budgets) {
				// 85% of 1 GiB = 870 MiB < soft+64 MiB.
				if b.MemoryHardLimitBytes != 1088*MiB {
					t.Errorf("hard = %s, want 1088 MiB", formatBytes(b.MemoryHardLimitBytes))
				}
				if b.ManifestCacheMaxBytes != 64*MiB {
					t.Errorf("manifest = %s, want 64 MiB (1 GiB / 16)", formatBytes(b.ManifestCacheMaxBytes))
				}
			},
		},
		{
			name: "small soft limit: manifest floor",
			set:  Budgets{MemorySoftLimitBytes: 100 * MiB},
			check: func(t *testing.T, b Budgets) {
				if b.ManifestCacheMaxBytes != 8*MiB {
					t.Errorf("manifest = %s, want 8 MiB", formatBytes(b.ManifestCacheMaxBytes))
				}
				if b.MemoryHardLimitBytes != 870*MiB {
					t.Errorf("hard = %s, want 870 MiB (85%% of 1 GiB)", formatBytes(b.MemoryHardLimitBytes))
				}
			},
		},
		{
			name: "soft limit 200 MiB: manifest between clamps",
			set:  Budgets{MemorySoftLimitBytes: 200 * MiB},
			check: func(t *testing.T, b Budgets) {
				if b.ManifestCacheMaxBytes != 12*MiB {
					t.Errorf("manifest = %s, want 12 MiB", formatBytes(b.ManifestCacheMaxBytes))
				}
			},
		},
		{
			name: "write buffer pool moves buffer size and count",
			set:  Budgets{MetadataStoreWriteBufferPoolBytes: 512 * MiB},
			check: func(t *testing.T, b Budgets) {
				if b.MetadataStoreWriteBufferBytes != 32*MiB || b.MetadataStoreMaxWriteBuffers != 8 {
					t.Errorf("buffer %s ×%d, want 32 MiB ×8", formatBytes(b.MetadataStoreWriteBufferBytes), b.MetadataStoreMaxWriteBuffers)
				}
				if b.MetadataStoreReadCacheBytes != 32*MiB {
					t.Errorf("read cache = %s, want 32 MiB (unaffected)", formatBytes(b.MetadataStoreReadCacheBytes))
				}
			},
		},
		{
			name: "small write buffer pool: buffer floor, count floor",
			set:  Budgets{MetadataStoreWriteBufferPoolBytes: 6 * MiB},
			check: func(t *testing.T, b Budgets) {
				if b.MetadataStoreWriteBufferBytes != 4*MiB || b.MetadataStoreMaxWriteBuffers != 2 {
					t.Errorf("buffer %s ×%d, want 4 MiB ×2", formatBytes(b.MetadataStoreWriteBufferBytes), b.MetadataStoreMaxWriteBuffers)
				}
			},
		},
		{
			name: "write buffer set: count from pool/buffer",
			set:  Budgets{MetadataStoreWriteBufferBytes: 16 * MiB},
			check: func(t *testing.T, b Budgets) {
				// pool = 1 GiB/32 = 32 MiB → 2 buffers.
				if b.MetadataStoreMaxWriteBuffers != 2 {
					t.Errorf("max write buffers = %d, want 2", b.MetadataStoreMaxWriteBuffers)
				}
			},
		},
		{
			name: "every budget set: nothing derived",
			set: Budgets{
				FileDescriptorPoolSize: 100, FileDescriptorAcquireTimeout: time.Second, SegmentHandleCacheSize: 10,
				MemorySoftLimitBytes: 300 * MiB, MemoryHardLimitBytes: 400 * MiB, ManifestCacheMaxBytes: 20 * MiB,
				MetadataStoreMaxOpenFiles: 50, MetadataStoreMaxBackgroundJobs: 3, MetadataStoreReadCacheBytes: 10 * MiB,
				MetadataStoreWriteBufferPoolBytes: 40 * MiB, MetadataStoreWriteBufferBytes: 5 * MiB, MetadataStoreMaxWriteBuffers: 7,
			},
			check: func(t *testing.T, b Budgets) {
				want := Budgets{
					FileDescriptorPoolSize: 100, FileDescriptorAcquireTimeout: time.Second, SegmentHandleCacheSize: 10,
					MemorySoftLimitBytes: 300 * MiB, MemoryHardLimitBytes: 400 * MiB, ManifestCacheMaxBytes: 20 * MiB,
					MetadataStoreMaxOpenFiles: 50, MetadataStoreMaxBackgroundJobs: 3, MetadataStoreReadCacheBytes: 10 * MiB,
					MetadataStoreWriteBufferPoolBytes: 40 * MiB, MetadataStoreWriteBufferBytes: 5 * MiB, MetadataStoreMaxWriteBuffers: 7,
				}
				if b != want {
					t.Errorf("got %+v\nwant %+v", b, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, deriveBudgets(h, tt.set)) })
	}
}

func TestPercentDoesNotOverflow(t *testing.T) {
	huge := int64(1) << 62
	b := DeriveBudgets(host(1024, huge, 4))
	if b.MemorySoftLimitBytes <= 0 || b.MemorySoftLimitBytes >= b.MemoryHardLimitBytes || b.MemoryHardLimitBytes >= huge {
		t.Errorf("soft %d, hard %d for memory %d", b.MemorySoftLimitBytes, b.MemoryHardLimitBytes, huge)
	}
	for _, n := range []int64{0, 1, 99, 100, 101, 12345678901, huge, 1<<63 - 1} {
		for _, p := range []int64{70, 85} {
			got := percent(n, p)
			if n < 1<<40 && got != n*p/100 {
				t.Errorf("percent(%d, %d) = %d, want %d", n, p, got, n*p/100)
			}
			if got < 0 || got > n {
				t.Errorf("percent(%d, %d) = %d overflowed", n, p, got)
			}
		}
	}
}
