// Package segment stores blob bodies in append-only segment files and hands back a Location
// for each record; storage/local keeps those locations in Pebble, which is the single source
// of truth for what is live. A segment is never scanned to recover: bytes that no manifest
// points at (a record whose commit was not acknowledged, a torn tail after a crash) are
// garbage that eviction eventually removes with the whole file.
//
// # Record format
//
// Every record is
//
//	body | CRC table | footer
//
// The CRC table holds one CRC-32C (Castagnoli, 4 bytes little endian) per 64 KiB block of the
// body, so a reader verifies each block before handing out any of its bytes, and a range read
// only checks the blocks it touches. The footer is
//
//	"KSEG" | version u8 | 3 zero bytes | name length u32 | body size u64 | SHA-256 [32] |
//	name | CRC-32C of everything before it in the footer u32 | footer length u32
//
// The name is the caller's opaque identifier (storage/local passes the encoded object key) and
// is compared on every read, so a manifest that points at the wrong bytes is detected rather
// than served.
//
// The format is footer-based because a body can stream in before its length is known
// (chunked uploads of up to gigabytes): the body is written first, the checksums accumulate
// while it arrives, and everything that depends on the whole body is written once it ends.
// A header would need the length up front or a seek back to patch it. The fixed-size tail
// (footer CRC and length) lets the footer be located from the record's end.
//
// # Writing
//
// Stage hashes and checksums the body in one pass while keeping up to SpillThreshold bytes in
// memory. A small record is appended to the shared active segment with one pwrite under a
// short lock, then waits for an fdatasync covering its end offset: whichever committer finds
// no sync in flight performs one for everybody appended so far (group commit), so N concurrent
// commits cost about one sync instead of N. A large record spills to a staging file in TmpDir
// and becomes a segment of its own by rename (or copy across filesystems), followed by a
// directory fsync. A new segment's directory entry is made durable by its first sync round.
// Segments roll at TargetSegmentBytes; Open never appends to an existing file, so a crash
// tail is never extended.
//
// Crash safety rests on the ordering "data synced before the Location is returned" and on the
// caller committing metadata only after that. kill -9 is tested by re-executing the test
// binary; power loss additionally relies on fdatasync honouring its contract on the device.
// A full disk (ENOSPC, EDQUOT) is reported as storage.ErrInsufficientStorage and leaves the
// active segment consistent (cut back or rolled), so writes succeed again once room exists.
// Tests inject such failures through an unexported file-operations seam (fileOps) and also
// fill a real, deliberately tiny tmpfs when the test may mount one. With Options.ReserveBytes
// set, appends, spills and copies first check (statfs) that the write leaves that much free,
// and fail with storage.ErrInsufficientStorage before writing anything otherwise.
//
// # Descriptors
//
// Every descriptor the Manager holds is checked out of an fdpool.Pool: the directory handle,
// the active segment's write handle, staging files, and read handles. Reads go through a
// reference-counted LRU of read-only handles, one per segment (pread needs no shared offset,
// so concurrent readers share it): a cached read costs one pread instead of open, pread and
// close. An evicted or removed segment's handle closes when its last reader finishes, and an
// idle cached handle gives its slot up to anybody waiting for one.
package segment
