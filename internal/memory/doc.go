// Package memory keeps a node inside its memory watermarks (docs/contract.md §6) by measuring what the
// OOM killer measures (the cgroup working set, else the resident set) rather than the Go heap,
// which misses Pebble's caches and everything else outside Go. Crossing the soft watermark
// sheds optional memory use, crossing the hard one pauses replication and trims caches, and
// each step is undone on the way down. Design notes: docs/memory.md.
package memory
