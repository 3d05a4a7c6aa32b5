// Package memory keeps a node inside its memory budget (docs/contract.md §6). A Controller samples the
// process's real memory use every Interval and classifies it against the soft and hard
// watermarks (KURA_MEMORY_SOFT_LIMIT_BYTES, KURA_MEMORY_HARD_LIMIT_BYTES) with hysteresis:
// above soft it sheds optional memory use (callbacks registered with OnSoft, such as turning
// cache admission off), above hard it also pauses replication work (PauseOnHard: the outbox
// dispatcher, anti-entropy) and trims caches (OnTrim, plus debug.FreeOSMemory at most every
// TrimInterval), and it undoes each step when use falls back.
//
// What is measured (SystemSampler): when the process sits in a cgroup with a memory limit, the
// cgroup's working set, memory.current (v2) or memory.usage_in_bytes (v1) minus the inactive
// file pages of memory.stat, because that limit is what the OOM killer enforces, and inactive
// page cache (the segment files this node reads and writes) is reclaimed before it kills
// anything: counting it would push a healthy node with a warm disk cache over its watermarks.
// It is the figure kubelet calls the working set. Without a cgroup limit it is the resident set
// size from /proc/self/statm: everything the process holds, Go heap or not (Pebble's caches,
// goroutine stacks, the race detector's shadow memory). The Go runtime's own figures
// (runtime/metrics) count only Go-managed memory, so they are not the measure; they are the
// fallback where neither file can be read (another OS) and are logged with each transition so
// an operator can tell whether the Go heap or something else is growing.
//
// The Go runtime's memory limit is set to the hard watermark while Run runs (unless GOMEMLIMIT
// is set; see Config.GoMemoryLimit): the collector then works harder exactly when the node
// approaches the point where it pauses work, and the heap's doubling (GOGC) can no longer carry
// it past the hard watermark towards the cgroup limit. The soft watermark would be too early:
// a busy node may sit there for hours, and shedding there is cheaper than constant collection.
package memory
