package config

import "time"

// Byte units used by sizes and the derivation rules.
const (
	KiB int64 = 1 << 10
	MiB int64 = 1 << 20
	GiB int64 = 1 << 30
	TiB int64 = 1 << 40
)

const (
	// ReservedFileDescriptors is the headroom subtracted from RLIMIT_NOFILE before the FD
	// pool and the metadata store take their shares (usable_fds = limit − 128). It covers
	// descriptors no budget accounts for: stdio, the HTTP, gRPC, internal and gossip
	// listeners plus gossip's UDP socket, the data-dir lock, DNS lookups, the OTLP exporter
	// and idle keep-alive client and peer connections. 128 keeps a 1024-descriptor host
	// (the common default) usable: pool 112 + metadata store 448 + 128 reserved leaves
	// about 330 descriptors for network connections.
	ReservedFileDescriptors = 128

	// FallbackFileDescriptorLimit is the conservative host default assumed when
	// RLIMIT_NOFILE cannot be read: the usual Linux soft limit, so budgets never assume
	// more descriptors than a stock host grants.
	FallbackFileDescriptorLimit = 1024

	// FallbackMemoryLimitBytes is assumed when neither a cgroup limit nor the physical
	// memory size can be read. 1 GiB is small enough not to overcommit any real host.
	FallbackMemoryLimitBytes = 1 * GiB

	// DefaultFileDescriptorAcquireTimeout is KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS's default.
	DefaultFileDescriptorAcquireTimeout = 5 * time.Second
)

// Budgets are the runtime resource budgets of docs/contract.md §6. Each is either set by its variable
// or derived from the Host by DeriveBudgets' rules.
type Budgets struct {
	FileDescriptorPoolSize            int           // KURA_FILE_DESCRIPTOR_POOL_SIZE
	FileDescriptorAcquireTimeout      time.Duration // KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS
	SegmentHandleCacheSize            int           // KURA_SEGMENT_HANDLE_CACHE_SIZE
	MemorySoftLimitBytes              int64         // KURA_MEMORY_SOFT_LIMIT_BYTES
	MemoryHardLimitBytes              int64         // KURA_MEMORY_HARD_LIMIT_BYTES
	ManifestCacheMaxBytes             int64         // KURA_MANIFEST_CACHE_MAX_BYTES
	MetadataStoreMaxOpenFiles         int           // KURA_METADATA_STORE_MAX_OPEN_FILES
	MetadataStoreMaxBackgroundJobs    int           // KURA_METADATA_STORE_MAX_BACKGROUND_JOBS
	MetadataStoreReadCacheBytes       int64         // KURA_METADATA_STORE_READ_CACHE_BYTES (Pebble block cache)
	MetadataStoreWriteBufferPoolBytes int64         // KURA_METADATA_STORE_WRITE_BUFFER_POOL_BYTES
	MetadataStoreWriteBufferBytes     int64         // KURA_METADATA_STORE_WRITE_BUFFER_BYTES (Pebble memtable size)
	MetadataStoreMaxWriteBuffers      int           // KURA_METADATA_STORE_MAX_WRITE_BUFFERS (Pebble memtable stop-writes threshold)
}

// UsableFileDescriptors is usable_fds of the derivation rules: the descriptor limit minus
// ReservedFileDescriptors, never negative.
func (h Host) UsableFileDescriptors() int {
	return max(h.FileDescriptorLimit-ReservedFileDescriptors, 0)
}

// DeriveBudgets applies the original README's rules ("Runtime Model And Limits") to h with
// no variable set.
func DeriveBudgets(h Host) Budgets { return deriveBudgets(h, Budgets{}) }

// deriveBudgets fills every zero field of set from h. A budget that depends on another
// (handle cache on the FD pool, hard limit and manifest cache on the soft limit, write
// buffers on the pool) is derived from the effective value, so overriding one input moves
// its dependants with it.
func deriveBudgets(h Host, set Budgets) Budgets {
	b := set
	usable := h.UsableFileDescriptors()
	mem := h.MemoryLimitBytes

	if b.FileDescriptorPoolSize == 0 {
		b.FileDescriptorPoolSize = clamp(usable/8, 64, 256)
	}
	if b.FileDescriptorAcquireTimeout == 0 {
		b.FileDescriptorAcquireTimeout = DefaultFileDescriptorAcquireTimeout
	}
	if b.SegmentHandleCacheSize == 0 {
		// Capped below the pool so transient file work always finds a descriptor; at least
		// one so a tiny overridden pool still caches a handle.
		b.SegmentHandleCacheSize = max(min(clamp(b.FileDescriptorPoolSize/4, 16, 64), b.FileDescriptorPoolSize-1), 1)
	}
	if b.MemorySoftLimitBytes == 0 {
		b.MemorySoftLimitBytes = max(floorMiB(percent(mem, 70)), 128*MiB)
	}
	if b.MemoryHardLimitBytes == 0 {
		b.MemoryHardLimitBytes = max(floorMiB(percent(mem, 85)), b.MemorySoftLimitBytes+64*MiB)
	}
	if b.ManifestCacheMaxBytes == 0 {
		b.ManifestCacheMaxBytes = clamp(floorMiB(b.MemorySoftLimitBytes/16), 8*MiB, 64*MiB)
	}
	if b.MetadataStoreMaxOpenFiles == 0 {
		b.MetadataStoreMaxOpenFiles = clamp(usable/2, 128, 1024)
	}
	if b.MetadataStoreMaxBackgroundJobs == 0 {
		b.MetadataStoreMaxBackgroundJobs = clamp(h.CPUCount, 1, 8)
	}
	if b.MetadataStoreReadCacheBytes == 0 {
		b.MetadataStoreReadCacheBytes = clamp(floorMiB(mem/32), 16*MiB, 128*MiB)
	}
	if b.MetadataStoreWriteBufferPoolBytes == 0 {
		b.MetadataStoreWriteBufferPoolBytes = clamp(floorMiB(mem/32), 16*MiB, 128*MiB)
	}
	if b.MetadataStoreWriteBufferBytes == 0 {
		b.MetadataStoreWriteBufferBytes = clamp(floorMiB(b.MetadataStoreWriteBufferPoolBytes/4), 4*MiB, 32*MiB)
	}
	if b.MetadataStoreMaxWriteBuffers == 0 {
		b.MetadataStoreMaxWriteBuffers = int(clamp(b.MetadataStoreWriteBufferPoolBytes/b.MetadataStoreWriteBufferBytes, 2, 8))
	}
	return b
}

func clamp[T int | int64](v, lo, hi T) T { return min(max(v, lo), hi) }

// floorMiB rounds n down to a whole number of MiB.
func floorMiB(n int64) int64 { return n / MiB * MiB }

// percent returns floor(n·p/100) without overflowing for any int64 n.
func percent(n, p int64) int64 { return n/100*p + n%100*p/100 }
