package segment

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kuracache/kura/storage/fdpool"
)

// ID names a segment. IDs only grow (a new segment always gets a larger ID than every existing
// one), so ID order is age order. The file is fmt.Sprintf("%016x.seg", id) in Options.Dir.
type ID uint64

// String renders the ID as it appears in the file name.
func (id ID) String() string {
	// Every read names its segment file: hand-rolled, this costs one small allocation
	// instead of fmt's machinery.
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = digits[id&0xf]
		id >>= 4
	}
	return string(b[:])
}

// fileName is the segment's file name inside Options.Dir.
func (id ID) fileName() string { return id.String() + segSuffix }

const (
	segSuffix     = ".seg"
	partialSuffix = ".seg.partial" // a cross-device copy in progress; never referenced
	stagePrefix   = "kseg-stage-"  // staging files this package owns in TmpDir
	stageSuffix   = ".tmp"
)

// Location says where a record lives. storage/local stores it in the manifest.
type Location struct {
	Segment    ID
	Offset     int64 // first byte of the record in the segment file
	BodySize   int64
	RecordSize int64 // body + CRC table + footer
}

// Default option values.
const (
	// DefaultTargetSegmentBytes keeps segments large enough that the per-file cost (an inode,
	// a directory fsync per roll) is negligible, and small enough that retiring the oldest one
	// frees space in useful steps without moving much live data forward.
	DefaultTargetSegmentBytes = 64 << 20
	// DefaultSpillThreshold keeps typical build artifacts (mostly well under 1 MiB) in memory
	// so they go to the shared segment in one write, while bounding memory per upload.
	DefaultSpillThreshold = 1 << 20
	// DefaultHandleCacheSize is the upper end of KURA_SEGMENT_HANDLE_CACHE_SIZE's derivation
	// clamp [16, 64]: enough to keep every segment of a hot working set open.
	DefaultHandleCacheSize = 64
)

// Options configure a Manager.
type Options struct {
	// Dir holds the segment files; created if missing.
	Dir string
	// TmpDir holds staging files for bodies larger than SpillThreshold; created if missing.
	// On the same filesystem as Dir a staged record becomes a segment by rename; otherwise it
	// is copied. Empty means Dir/staging.
	TmpDir string
	// TargetSegmentBytes: the shared active segment is rolled once it reaches this size.
	TargetSegmentBytes int64
	// SpillThreshold: a staged body up to this many bytes stays in memory; beyond, it spills
	// to a staging file in TmpDir.
	SpillThreshold int64
	// Logger receives segment lifecycle events (rolls, removals, failures). Optional.
	Logger *slog.Logger
	// Pool is the file-descriptor budget every descriptor of the Manager is checked out of:
	// the directory handle, the active segment's write handle, cached read handles, staging
	// files and cross-filesystem copies. Nil means a private pool of fdpool.DefaultSize slots.
	Pool *fdpool.Pool
	// HandleCacheSize is how many segment read handles stay open between reads. Zero derives
	// it from the pool (a quarter, between 1 and DefaultHandleCacheSize); negative disables
	// the cache (every read opens and closes its own handle). It must stay below the pool's
	// capacity so transient work always finds a descriptor.
	HandleCacheSize int
	// NoVerifiedSet makes every read check every block it serves, however recently the record
	// was checked (no trusted reads, no sendfile); see verified.go for what the set trusts.
	NoVerifiedSet bool
	// ReserveBytes is free space every append, spill and copy leaves on the filesystems of Dir
	// and TmpDir: a write that would eat into it fails with storage.ErrInsufficientStorage
	// before anything is written. storage/local keeps it for the metadata store, which must
	// never meet a full disk. Zero: no reserve (only a real ENOSPC stops a write).
	ReserveBytes int64

	// FaultHook, when set, is called before every operation the Manager makes on the disk
	// through its file-operation seam: op is "writeAt", "write", "truncate", "datasync",
	// "syncDir", "rename" or "remove", path the file or directory it acts on. A non-nil error
	// fails the operation with that error, and the operation does not happen. It exists for
	// the fault-injection tests of the packages built on the Manager (storage/local);
	// production code leaves it nil.
	FaultHook func(op, path string) error

	// ops replaces the file operations in tests (fault injection, sync counting).
	ops *fileOps
}

// ErrActive is returned by Remove for the segment that is still taking appends.
var ErrActive = errors.New("segment is active")

// SegmentInfo describes one segment file.
type SegmentInfo struct {
	ID     ID
	Size   int64
	Active bool
}

// Stats are cumulative counters since Open, for metrics and tests.
type Stats struct {
	// Appends counts records committed to the shared active segment.
	Appends uint64
	// Spills counts large records committed as segments of their own.
	Spills uint64
	// Syncs counts fdatasync calls on shared active segments (group commits). Appends/Syncs
	// is the average group size.
	Syncs uint64
}

// Manager owns the segment files of one data directory. It is safe for concurrent use by many
// goroutines. It starts no goroutines: group commit is led by whichever committer arrives
// while no sync is running.
type Manager struct {
	opts Options
	// fullBufs recycles in-memory record buffers of the largest size (SpillThreshold and its
	// tail), which is no power of two and so not in bufPools: a body at the threshold (a
	// 1 MiB HTTP PUT) allocated and cleared one per Put.
	fullBufs sync.Pool
	ops      fileOps
	log      *slog.Logger
	pool     *fdpool.Pool
	handles  *handleCache
	// verified holds the records whose every block this process has checked (verified.go).
	verified *verifiedSet
	// trustedReads and sendfiles count stream reads served from the verified set and the
	// part of them handed to sendfile (tests look at them).
	trustedReads, sendfiles atomic.Uint64
	dir                     *fdpool.File // Options.Dir, kept open for directory fsyncs
	// dirPrefix is Options.Dir, cleaned, with a trailing separator: segPath's prefix.
	dirPrefix string

	// roomPaths are the directories whose filesystems CheckRoom inspects: Dir, plus TmpDir
	// when it lives on another filesystem.
	roomPaths []string
	// room is CheckRoom's last statfs reading (room.go).
	room roomReading

	closed   atomic.Bool
	inflight sync.WaitGroup // Commits and Removes in progress; Close waits for them

	// mu is the append lock. It guards the active segment's tail and reference counts, the
	// segment list and ID allocation. It is held for one pwrite of a small record at most,
	// never across an fsync.
	mu     sync.Mutex
	active *activeSegment // nil until the first append after Open or a roll
	segs   []*segEntry    // every segment file, sorted by ID
	nextID ID

	total   atomic.Int64
	appends atomic.Uint64
	spills  atomic.Uint64
	syncs   atomic.Uint64
}

type segEntry struct {
	id   ID
	size int64
}

// Open lists the existing segments, removes leftovers that can never be referenced (staging
// files with this package's prefix in TmpDir, interrupted cross-device copies and empty
// segment files in Dir) and returns a Manager whose next append starts a NEW segment: an
// existing file is never appended to, so a torn tail left by a crash stays unreferenced
// garbage rather than becoming the prefix of new records.
func Open(opts Options) (*Manager, error) {
	if opts.Dir == "" {
		return nil, errors.New("open segments: Options.Dir is empty")
	}
	if opts.TmpDir == "" {
		opts.TmpDir = filepath.Join(opts.Dir, "staging")
	}
	if opts.TargetSegmentBytes <= 0 {
		opts.TargetSegmentBytes = DefaultTargetSegmentBytes
	}
	if opts.SpillThreshold <= 0 {
		opts.SpillThreshold = DefaultSpillThreshold
	}
	if opts.ReserveBytes < 0 {
		return nil, fmt.Errorf("open segments: negative ReserveBytes %d", opts.ReserveBytes)
	}
	pool := opts.Pool
	if pool == nil {
		var err error
		if pool, err = fdpool.New(fdpool.DefaultSize, fdpool.DefaultAcquireTimeout); err != nil {
			return nil, fmt.Errorf("open segments: %w", err)
		}
	}
	cacheSize := opts.HandleCacheSize
	switch {
	case cacheSize == 0:
		cacheSize = min(max(pool.Capacity()/4, 1), DefaultHandleCacheSize, pool.Capacity()-1)
	case cacheSize < 0:
		cacheSize = 0
	case cacheSize >= pool.Capacity():
		return nil, fmt.Errorf("open segments: the handle cache (%d) must stay below the file descriptor pool (%d)",
			cacheSize, pool.Capacity())
	}
	m := &Manager{opts: opts, ops: osFileOps, log: opts.Logger, pool: pool}
	// filepath.Join(Dir, name) for a plain file name, without cleaning Dir on every read.
	m.dirPrefix = filepath.Clean(opts.Dir)
	if !strings.HasSuffix(m.dirPrefix, string(filepath.Separator)) {
		m.dirPrefix += string(filepath.Separator)
	}
	if opts.ops != nil {
		m.ops = opts.ops.withDefaults()
	}
	if opts.FaultHook != nil {
		m.ops = m.ops.withHook(opts.FaultHook)
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{opts.Dir, opts.TmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, ioError("create directory", d, err)
		}
	}
	var err error
	if m.roomPaths, err = distinctFilesystems(opts.Dir, opts.TmpDir); err != nil {
		return nil, err
	}
	dir, err := pool.Open(context.Background(), opts.Dir)
	if err != nil {
		return nil, ioError("open segment directory", opts.Dir, err)
	}
	m.dir = dir
	if err := m.scan(); err != nil {
		_ = dir.Close()
		return nil, err
	}
	if err := m.removeStaleStaging(); err != nil {
		_ = dir.Close()
		return nil, err
	}
	m.handles = newHandleCache(pool, cacheSize)
	m.verified = newVerifiedSet(verifiedEntries, VerifiedTTL)
	if opts.NoVerifiedSet {
		m.verified = newVerifiedSet(0, 0)
	}
	m.log.Info("segments opened", "dir", opts.Dir, "segments", len(m.segs), "bytes", m.total.Load(),
		"handle_cache_size", cacheSize)
	return m, nil
}

func (m *Manager) scan() error {
	entries, err := os.ReadDir(m.opts.Dir)
	if err != nil {
		return ioError("list segment directory", m.opts.Dir, err)
	}
	var maxID ID
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(m.opts.Dir, name)
		if strings.HasSuffix(name, partialSuffix) {
			if err := m.removeFile(path); err != nil {
				return ioError("remove interrupted copy", path, err)
			}
			m.log.Info("removed interrupted segment copy", "path", path)
			continue
		}
		id, ok := parseSegmentName(name)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		maxID = max(maxID, id)
		info, err := e.Info()
		if err != nil {
			return ioError("stat segment", path, err)
		}
		if info.Size() == 0 {
			// Created just before a crash and never written: it holds no record.
			if err := m.removeFile(path); err != nil {
				return ioError("remove empty segment", path, err)
			}
			continue
		}
		m.segs = append(m.segs, &segEntry{id: id, size: info.Size()})
		m.total.Add(info.Size())
	}
	slices.SortFunc(m.segs, func(a, b *segEntry) int { return cmp.Compare(a.id, b.id) })
	m.nextID = maxID + 1
	return nil
}

func (m *Manager) removeStaleStaging() error {
	entries, err := os.ReadDir(m.opts.TmpDir)
	if err != nil {
		return ioError("list staging directory", m.opts.TmpDir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, stagePrefix) || !strings.HasSuffix(name, stageSuffix) {
			continue
		}
		path := filepath.Join(m.opts.TmpDir, name)
		if err := m.removeFile(path); err != nil {
			return ioError("remove stale staging file", path, err)
		}
		m.log.Info("removed stale staging file", "path", path)
	}
	return nil
}

// parseSegmentName accepts exactly the names this package writes: 16 lower-case hex digits
// and ".seg".
func parseSegmentName(name string) (ID, bool) {
	hex, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(hex) != 16 || strings.ToLower(hex) != hex {
		return 0, false
	}
	v, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		return 0, false
	}
	return ID(v), true
}

func (m *Manager) segPath(id ID) string { return m.dirPrefix + id.fileName() }

// enter registers an operation that Close must wait for.
func (m *Manager) enter() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return ErrClosed
	}
	m.inflight.Add(1)
	return nil
}

// insertLocked adds a segment to the sorted list. Most inserts land at the end; a large record
// whose ID was allocated before the current active segment's may land just before it.
func (m *Manager) insertLocked(e *segEntry) {
	i, _ := slices.BinarySearchFunc(m.segs, e.id, func(s *segEntry, id ID) int { return cmp.Compare(s.id, id) })
	m.segs = slices.Insert(m.segs, i, e)
	m.total.Add(e.size)
}

// Close waits for in-flight commits, syncs and closes the active segment, releases the
// directory handle and the cached read handles. Further calls to any method fail with
// ErrClosed; readers returned by OpenRecord stay usable until closed (their handles close
// with the last of them).
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed.Load() {
		m.mu.Unlock()
		return ErrClosed
	}
	m.closed.Store(true)
	m.mu.Unlock()
	m.inflight.Wait()

	m.mu.Lock()
	seg := m.active
	m.active = nil
	if seg != nil {
		seg.sealed = true
	}
	m.mu.Unlock()
	var errs []error
	if seg != nil {
		// Only records whose Commit was cancelled can be unsynced here; syncing them anyway
		// keeps the file consistent with its size for the next Open.
		if err := m.ops.datasync(seg.f.File); err != nil {
			errs = append(errs, ioError("sync segment", seg.path, err))
		} else if !seg.dirSynced {
			errs = append(errs, m.syncDir())
		}
		if err := seg.f.Close(); err != nil {
			errs = append(errs, ioError("close segment", seg.path, err))
		}
	}
	if err := m.dir.Close(); err != nil {
		errs = append(errs, ioError("close segment directory", m.opts.Dir, err))
	}
	m.handles.close()
	return errors.Join(errs...)
}

// Segments lists every segment file, oldest first.
func (m *Manager) Segments() []SegmentInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]SegmentInfo, len(m.segs))
	for i, e := range m.segs {
		out[i] = SegmentInfo{ID: e.id, Size: e.size, Active: m.active != nil && m.active.id == e.id}
	}
	return out
}

// TotalBytes is the sum of the segment file sizes, kept in memory.
func (m *Manager) TotalBytes() int64 { return m.total.Load() }

// Stats returns the cumulative counters.
func (m *Manager) Stats() Stats {
	return Stats{Appends: m.appends.Load(), Spills: m.spills.Load(), Syncs: m.syncs.Load()}
}

// Seal closes the active segment for appends; the next append starts a new segment. Commits
// already appended to the sealed segment still complete (its write handle is closed after the
// last of them). Seal without an active segment does nothing.
func (m *Manager) Seal() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.active != nil {
		m.sealLocked(m.active, "sealed on request")
	}
}

// sealLocked takes seg out of service for appends. Its write handle is closed now if no commit
// is waiting on it, else by the last waiter (release).
func (m *Manager) sealLocked(seg *activeSegment, reason string) {
	if seg.sealed {
		return
	}
	seg.sealed = true
	if m.active == seg {
		m.active = nil
	}
	m.log.Info("segment sealed", "segment", seg.id.String(), "size", seg.size, "reason", reason)
	if seg.refs == 0 {
		m.closeWriteHandleLocked(seg)
	}
}

// closeWriteHandleLocked closes the write handle, which returns its pool slot.
func (m *Manager) closeWriteHandleLocked(seg *activeSegment) {
	if err := seg.f.Close(); err != nil {
		m.log.Warn("close sealed segment", "segment", seg.id.String(), "error", err)
	}
}

// Remove deletes a sealed segment file and fsyncs the directory. The caller (eviction) must
// have stopped referencing its records first. Readers that already opened a record in it keep
// reading through their open descriptor, whose pool slot (and the file's space) is released
// when the last of them closes. Removing the active segment fails with ErrActive; an
// unknown ID fails with fs.ErrNotExist.
func (m *Manager) Remove(id ID) error {
	if err := m.enter(); err != nil {
		return fmt.Errorf("remove segment %s: %w", id, err)
	}
	defer m.inflight.Done()
	m.mu.Lock()
	if m.active != nil && m.active.id == id {
		m.mu.Unlock()
		return fmt.Errorf("remove segment %s: %w", id, ErrActive)
	}
	i, found := slices.BinarySearchFunc(m.segs, id, func(s *segEntry, id ID) int { return cmp.Compare(s.id, id) })
	if !found {
		m.mu.Unlock()
		return fmt.Errorf("remove segment %s: %w", id, fs.ErrNotExist)
	}
	e := m.segs[i]
	m.segs = slices.Delete(m.segs, i, i+1)
	m.total.Add(-e.size)
	m.mu.Unlock()

	// Unlinking a large file frees its extents, which can take a while: do it without the
	// append lock, and put the entry back if it fails so the list matches the directory.
	path := m.segPath(id)
	if err := m.removeFile(path); err != nil {
		m.mu.Lock()
		m.insertLocked(e)
		m.mu.Unlock()
		return ioError("remove segment", path, err)
	}
	// The cached read handle goes too, so the space is freed once the last reader finishes
	// rather than when the handle would have aged out of the cache.
	m.handles.remove(id)
	m.verified.forget(id)
	m.log.Info("segment removed", "segment", id.String(), "size", e.size)
	return m.syncDir()
}
