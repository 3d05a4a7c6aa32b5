package local

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sys/unix"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/fdpool"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
)

// Defaults for Options left at zero.
const (
	// DefaultEvictInterval: how often the background evictor checks the budget even without a
	// write kicking it (reads do not grow segments, so this only bounds staleness).
	DefaultEvictInterval = 10 * time.Second
	// DefaultJanitorInterval: expired multipart uploads are found within this delay; uploads
	// live 24 h, so minutes of slack cost nothing.
	DefaultJanitorInterval = 5 * time.Minute
	// DefaultRecentReads bounds the in-memory set of recently used records (read, or vouched
	// for by Refresh) that eviction moves forward: 8-byte hashes, some 4–8 MiB at the bound,
	// and room for the present digests of several large FindMissingBlobs calls.
	DefaultRecentReads = 1 << 18
	// DefaultMaxInlineBytes caps a keyvalue document kept inline in Pebble whatever the
	// caller's limit: Pebble handles values of a few MiB well, not hundreds.
	DefaultMaxInlineBytes = 16 << 20
)

// Options configure a Store.
type Options struct {
	// DataDir holds LOCK, meta/ (Pebble) and segments/. Created if missing.
	DataDir string
	// TmpDir holds staging files and multipart parts; default DataDir/tmp. It should be on the
	// same filesystem as DataDir so large records are renamed, not copied, into place.
	TmpDir string
	// DiskBudgetBytes bounds the segment bytes kept; eviction retires the oldest data beyond
	// it. Zero means no budget (only the filesystem limits growth).
	DiskBudgetBytes int64
	// Metadata configures Pebble; Dir and Logger are filled in by Open.
	Metadata meta.Options
	// TargetSegmentBytes and SpillThreshold tune storage/segment (zero: its defaults).
	TargetSegmentBytes int64
	SpillThreshold     int64
	// Clock stamps writes; nil means a new clock reading Now.
	Clock *storage.Clock
	// Now is the wall clock for upload expiry (nil: time.Now). Tests move it forward.
	Now func() time.Time
	// Logger receives lifecycle events and corruption reports (nil: discarded).
	Logger *slog.Logger
	// Registerer receives the store's metrics (nil: a private registry).
	Registerer prometheus.Registerer
	// TracerProvider traces every commit (span storage.commit, see tracing.go); nil: no-op.
	TracerProvider trace.TracerProvider
	// Observer sees every committing write inside its batch (the replication outbox; see
	// CommitObserver). nil: nothing observes the commits (a store without peers, tests).
	Observer CommitObserver
	// Dir is the data directory already opened by OpenDataDir, so that the observer could be
	// built on its metadata database first. The store takes it over: Close, or a failed Open,
	// closes it. nil: Open opens DataDir itself with Metadata. When set, DataDir may be left
	// empty; if given it must name the same directory.
	Dir *DataDir

	// EvictInterval, JanitorInterval: background periods (zero: the defaults above).
	EvictInterval   time.Duration
	JanitorInterval time.Duration
	// RecentReads caps the recently-read set used by eviction (zero: DefaultRecentReads).
	RecentReads int
	// Retention removes objects not used (read or written here) for longer than their
	// namespace's maximum age (see retention.go); nil: objects are kept however old.
	Retention *RetentionOptions
	// MaxInlineBytes caps inline keyvalue documents (zero: DefaultMaxInlineBytes).
	MaxInlineBytes int64
	// MaxUploadBytes overrides storage.MaxUploadBytes (zero: the protocol's 2 GiB). Tests
	// lower it to exercise the limit without writing gigabytes.
	MaxUploadBytes int64

	// FileDescriptorPoolSize is KURA_FILE_DESCRIPTOR_POOL_SIZE: the descriptors the store may
	// hold at once for segment files, staging files, multipart parts and directory syncs
	// (Pebble has its own budget). Zero: fdpool.DefaultSize.
	FileDescriptorPoolSize int
	// FileDescriptorAcquireTimeout is KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS: how long an
	// operation waits for a descriptor before failing with storage.ErrBusy. Zero:
	// fdpool.DefaultAcquireTimeout.
	FileDescriptorAcquireTimeout time.Duration
	// SegmentHandleCacheSize is KURA_SEGMENT_HANDLE_CACHE_SIZE: segment read handles kept open
	// between reads; it must stay below the pool. Zero: derived from the pool (see
	// segment.Options.HandleCacheSize); negative: no cache.
	SegmentHandleCacheSize int
	// ManifestCacheMaxBytes is KURA_MANIFEST_CACHE_MAX_BYTES: the bound of the in-memory
	// manifest cache in front of Pebble. Zero: DefaultManifestCacheBytes; negative: no cache.
	ManifestCacheMaxBytes int64
	// ReservedDiskBytes is the free space writes leave on the data filesystem for the metadata
	// store, which must never meet a full disk (Pebble treats a failed WAL write as fatal):
	// once free space would drop below it, writes fail with storage.ErrInsufficientStorage
	// after eviction tried to make room, while deletions, eviction and reads go on. Zero:
	// DefaultReservedDiskBytes or a twentieth of the filesystem, whichever is smaller;
	// negative: no reserve.
	ReservedDiskBytes int64

	// segmentFaults is segment.Options.FaultHook: tests fail the segment store's disk
	// operations through it.
	segmentFaults func(op, path string) error
	// stagingFaults is consulted before each disk operation of the multipart and resumable
	// staging (multipart.go, resumable.go): op is "mkdir", "create", "write", "sync",
	// "syncDir", "truncate" or "remove". A non-nil error fails the operation with it (a
	// refused write lands half its bytes first, as a short write does). Tests only.
	stagingFaults func(op, path string) error
}

// DefaultReservedDiskBytes is the free-space reserve on a large filesystem: room for several
// WAL files and memtable flushes of the metadata store at the largest derived write-buffer
// budget (128 MiB), plus compaction headroom.
const DefaultReservedDiskBytes = 256 << 20

// Store is the node's disk store. It is safe for concurrent use.
type Store struct {
	opts    Options
	log     *slog.Logger
	tracer  trace.Tracer
	clock   *storage.Clock
	now     func() time.Time
	dir     *DataDir // the lock and Pebble
	db      *meta.DB // dir.DB()
	segs    *segment.Manager
	partDir string
	metrics *metrics
	pool    *fdpool.Pool
	mcache  *manifestCache
	// uses records last uses for retention; nil when retention is off.
	uses *useTracker

	seed     maphash.Seed
	keyLocks [1024]sync.Mutex
	nsLocks  [64]sync.RWMutex
	// keyGen and nsGen count critical sections: every change of a manifest happens under its
	// key lock (which bumps keyGen[keyHash%len] after the Pebble commit, before unlocking) or
	// under its namespace stripe held exclusively (which bumps nsGen). A look-up that found
	// no manifest while the counts were g stays true as long as they are still g, so a batch
	// that saw its key absent before appending need not ask Pebble again under the lock
	// (commitBatch). keyGen is much finer than the lock stripes so that concurrent batches
	// rarely bump each other's counts (512 KiB).
	keyGen      [1 << 16]atomic.Uint64
	nsGen       [64]atomic.Uint64
	uploadLocks [64]sync.Mutex
	resumable   resumables // ByteStream uploads held by a writer (resumable.go)

	recent  *recentSet
	commits commitTracker
	digests digestState
	exists  existenceIndex // FindMissing's answers; built by the first digest walk
	evictMu sync.Mutex
	kick    chan struct{}
	// sweepKick asks for a retention sweep now (tests, a full use tracker).
	sweepKick chan struct{}
	// corrupted carries dropped corrupt keys to the anti-entropy sweeper (Corrupted).
	corrupted chan storage.Key
	bgCtx     context.Context // cancelled by Close: stops the evictor and the janitor
	bgCancel  context.CancelFunc
	bg        sync.WaitGroup
	ops       gate
	closed    atomic.Bool
}

var (
	_ storage.Store           = (*Store)(nil)
	_ storage.Multipart       = (*Store)(nil)
	_ storage.ResumableWrites = (*Store)(nil)
)

// Open locks opts.DataDir and opens Pebble (or takes over opts.Dir, already open), opens the
// segment files, removes garbage left by a crash (unreferenced segments, orphaned multipart
// files) and starts the evictor, the upload janitor and the first build of the anti-entropy
// digests. Close stops them.
func Open(opts Options) (_ *Store, err error) {
	// A given data directory belongs to the store from here on, also when Open fails.
	defer func() {
		if err != nil && opts.Dir != nil {
			_ = opts.Dir.Close()
		}
	}()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	if err := opts.prepareDirs(); err != nil {
		return nil, err
	}
	pool, err := fdpool.New(opts.FileDescriptorPoolSize, opts.FileDescriptorAcquireTimeout)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := newStore(opts, pool)
	defer func() {
		if err != nil {
			s.bgCancel()
			_ = s.closeResources()
		}
	}()
	if err := s.openFiles(); err != nil {
		return nil, err
	}
	if err := s.recoverFromCrash(context.Background()); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if s.metrics, err = newMetrics(opts.Registerer, s); err != nil {
		return nil, fmt.Errorf("open store: register metrics: %w", err)
	}
	if err := s.segs.CheckRoom(0); errors.Is(err, storage.ErrInsufficientStorage) {
		s.log.Warn("the data filesystem is at its free-space reserve: writes are refused (507) until room exists", "error", err)
	}
	s.startBackground()
	s.log.Info("store opened", "data_dir", opts.DataDir, "tmp_dir", opts.TmpDir,
		"segment_bytes", s.segs.TotalBytes(), "disk_budget_bytes", opts.DiskBudgetBytes,
		"fd_pool_size", pool.Capacity(), "fd_acquire_timeout", pool.AcquireTimeout(),
		"segment_handle_cache_size", s.segs.HandleStats().Capacity,
		"manifest_cache_max_bytes", max(opts.ManifestCacheMaxBytes, 0), "reserved_disk_bytes", max(opts.ReservedDiskBytes, 0))
	return s, nil
}

// validate rejects what no default can mend, after taking DataDir from Dir when it is given.
func (opts *Options) validate() error {
	if opts.Dir != nil {
		if opts.DataDir != "" && filepath.Clean(opts.DataDir) != filepath.Clean(opts.Dir.Path()) {
			return fmt.Errorf("open store: data directory %s differs from the opened %s", opts.DataDir, opts.Dir.Path())
		}
		opts.DataDir = opts.Dir.Path()
	}
	if opts.DataDir == "" {
		return errors.New("open store: no data directory given")
	}
	if opts.DiskBudgetBytes < 0 {
		return fmt.Errorf("open store: negative disk budget %d", opts.DiskBudgetBytes)
	}
	if opts.FileDescriptorPoolSize < 0 || opts.FileDescriptorAcquireTimeout < 0 {
		return fmt.Errorf("open store: negative file descriptor pool size %d or acquire timeout %v",
			opts.FileDescriptorPoolSize, opts.FileDescriptorAcquireTimeout)
	}
	return nil
}

// setDefaults fills in every field left at zero.
func (opts *Options) setDefaults() {
	if opts.TmpDir == "" {
		opts.TmpDir = filepath.Join(opts.DataDir, "tmp")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	if opts.Clock == nil {
		opts.Clock = storage.NewClock(opts.Now)
	}
	if opts.TracerProvider == nil {
		opts.TracerProvider = noop.NewTracerProvider()
	}
	if opts.EvictInterval <= 0 {
		opts.EvictInterval = DefaultEvictInterval
	}
	if opts.JanitorInterval <= 0 {
		opts.JanitorInterval = DefaultJanitorInterval
	}
	if opts.RecentReads <= 0 {
		opts.RecentReads = DefaultRecentReads
	}
	if opts.MaxInlineBytes <= 0 {
		opts.MaxInlineBytes = DefaultMaxInlineBytes
	}
	if opts.MaxUploadBytes <= 0 {
		opts.MaxUploadBytes = storage.MaxUploadBytes
	}
	if opts.FileDescriptorPoolSize == 0 {
		opts.FileDescriptorPoolSize = fdpool.DefaultSize
	}
	if opts.FileDescriptorAcquireTimeout == 0 {
		opts.FileDescriptorAcquireTimeout = fdpool.DefaultAcquireTimeout
	}
	if opts.ManifestCacheMaxBytes == 0 {
		opts.ManifestCacheMaxBytes = DefaultManifestCacheBytes
	}
}

// prepareDirs creates the data and temporary directories and sizes the free-space reserve,
// which depends on the data filesystem.
func (opts *Options) prepareDirs() error {
	for _, d := range []string{opts.DataDir, opts.TmpDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return fmt.Errorf("open store: create directory %s: %w", d, err)
		}
	}
	if opts.ReservedDiskBytes == 0 {
		size, err := filesystemSize(opts.DataDir)
		if err != nil {
			return fmt.Errorf("open store: %w", err)
		}
		opts.ReservedDiskBytes = min(DefaultReservedDiskBytes, size/20)
	}
	return nil
}

// newStore builds the Store's in-memory state; nothing on disk is touched yet.
func newStore(opts Options, pool *fdpool.Pool) *Store {
	s := &Store{
		opts:      opts,
		log:       opts.Logger,
		tracer:    opts.TracerProvider.Tracer(tracerName),
		clock:     opts.Clock,
		now:       opts.Now,
		dir:       opts.Dir,
		partDir:   filepath.Join(opts.TmpDir, "multipart"),
		seed:      maphash.MakeSeed(),
		recent:    newRecentSet(opts.RecentReads),
		uses:      opts.Retention.tracker(),
		sweepKick: make(chan struct{}, 1),
		kick:      make(chan struct{}, 1),
		corrupted: make(chan storage.Key, DefaultCorruptQueue),
		pool:      pool,
		mcache:    newManifestCache(opts.ManifestCacheMaxBytes),
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.commits.init()
	s.ops.init()
	s.digests.init()
	s.exists.init()
	s.mcache.exists = &s.exists
	return s
}

// openFiles locks the data directory and opens Pebble, unless Options.Dir already did, then
// opens the segment files and the multipart directory.
func (s *Store) openFiles() error {
	opts := s.opts
	if s.dir == nil {
		mo := opts.Metadata
		mo.Logger = opts.Logger
		dir, err := OpenDataDir(opts.DataDir, mo)
		if err != nil {
			return err // it names the directory, and its lock error reads as it must
		}
		s.dir = dir
	}
	s.db = s.dir.DB()
	var err error
	s.segs, err = segment.Open(segment.Options{
		Dir:                filepath.Join(opts.DataDir, "segments"),
		TmpDir:             filepath.Join(opts.TmpDir, "staging"),
		TargetSegmentBytes: opts.TargetSegmentBytes,
		SpillThreshold:     opts.SpillThreshold,
		Logger:             opts.Logger.With("subcomponent", "segments"),
		Pool:               s.pool,
		HandleCacheSize:    opts.SegmentHandleCacheSize,
		ReserveBytes:       max(opts.ReservedDiskBytes, 0),
		FaultHook:          opts.segmentFaults,
	})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	if err := os.MkdirAll(s.partDir, 0o750); err != nil {
		return fmt.Errorf("open store: create directory %s: %w", s.partDir, err)
	}
	return nil
}

// recoverFromCrash removes what a crash can leave behind: segments no record references and
// multipart files of no upload.
func (s *Store) recoverFromCrash(ctx context.Context) error {
	if err := s.removeUnreferencedSegments(ctx); err != nil {
		return err
	}
	if err := s.removeOrphanResumable(ctx); err != nil {
		return err
	}
	return s.removeOrphanParts(ctx)
}

// startBackground starts the evictor, the upload janitor and the digest build; Close stops
// them.
func (s *Store) startBackground() {
	s.bg.Add(4)
	go s.retentionLoop()
	go s.evictLoop()
	go s.janitorLoop()
	go s.digestLoop()
}

// Close stops the background work, waits for in-flight operations, and closes the segment
// files and Pebble. Readers already handed out keep working until closed. Further calls fail.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return errors.New("close store: already closed")
	}
	s.bgCancel()
	s.bg.Wait()
	s.ops.close()
	s.metrics.unregister()
	return s.closeResources()
}

func (s *Store) closeResources() error {
	var errs []error
	if s.segs != nil {
		if err := s.segs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close segments: %w", err))
		}
	}
	if s.dir != nil {
		if err := s.dir.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DiskStats is the disk budget's state, for the status page.
type DiskStats struct {
	SegmentBytes    int64  // bytes held in segment files (what the budget counts)
	BudgetBytes     int64  // KURA_DISK_BUDGET_BYTES; 0 = no budget
	EvictedRecords  uint64 // records whose body eviction removed since the store opened
	EvictedSegments uint64 // segment files retired since the store opened
}

// DiskStats returns the disk budget's state now. The eviction counts are read from the
// store's metrics, their only source.
func (s *Store) DiskStats() DiskStats {
	return DiskStats{
		SegmentBytes:    s.segs.TotalBytes(),
		BudgetBytes:     s.opts.DiskBudgetBytes,
		EvictedRecords:  counterTotal(s.metrics.dropped),
		EvictedSegments: counterTotal(s.metrics.retired),
	}
}

// FDPool is the store's file-descriptor pool, for callers that open files on its behalf and
// for tests that watch its occupancy.
func (s *Store) FDPool() *fdpool.Pool { return s.pool }

// SetCacheAdmission switches admission to the manifest cache on or off. The memory controller
// turns it off above the soft memory watermark: entries already cached keep serving (and stay
// coherent), but reads stop adding new ones until it is switched back on.
func (s *Store) SetCacheAdmission(on bool) {
	if s.mcache.admission.Swap(on) != on {
		s.log.Info("manifest cache admission switched", "on", on)
	}
}

// TrimCaches empties the manifest cache and closes every idle cached segment read handle.
// The memory controller calls it above the hard memory watermark; the caches refill from
// Pebble and the segment files as reads come in.
func (s *Store) TrimCaches() {
	freed := s.mcache.trim()
	handles := s.segs.TrimHandles()
	s.log.Info("caches trimmed", "manifest_cache_bytes_freed", freed, "segment_handles_closed", handles)
}

// MetadataMetrics samples Pebble's memory gauges for the telemetry layer.
func (s *Store) MetadataMetrics() meta.Metrics { return s.db.Metrics() }

// metadataSample is MetadataMetrics for a scrape that may race Close: it reports false instead
// of touching a closed Pebble.
func (s *Store) metadataSample() (meta.Metrics, bool) {
	if err := s.ops.enter(); err != nil {
		return meta.Metrics{}, false
	}
	defer s.ops.leave()
	return s.db.Metrics(), true
}

// filesystemSize is the total size of path's filesystem.
func filesystemSize(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("inspect filesystem of %s: %w", path, err)
	}
	return int64(st.Blocks) * int64(st.Bsize), nil //nolint:unconvert // field types differ between architectures
}

// removeUnreferencedSegments deletes segment files that no record in the index points at.
// Every segment is sealed at this point (segment.Open never reuses one), so such a file can
// only hold bytes whose write was never acknowledged (a crash between the segment commit and
// the metadata commit) or records that all moved on.
func (s *Store) removeUnreferencedSegments(ctx context.Context) error {
	for _, si := range s.segs.Segments() {
		if si.Active {
			continue
		}
		has, err := s.db.SegmentHasRecords(ctx, uint64(si.ID))
		if err != nil {
			return err
		}
		if has {
			continue
		}
		if err := s.segs.Remove(si.ID); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove unreferenced segment %s: %w", si.ID, err)
		}
		s.log.Info("removed unreferenced segment", "segment", si.ID.String(), "bytes", si.Size)
	}
	return nil
}

func (s *Store) hash(parts ...string) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seed)
	for _, p := range parts {
		h.WriteString(p)
		h.WriteByte(0)
	}
	return h.Sum64()
}

// keyHash picks the key's lock stripe (keyLocks) and change count (keyGen).
func (s *Store) keyHash(key storage.Key) uint64 {
	return s.hash(key.Tenant, key.Namespace, string(key.Kind), key.Name)
}

// keyGenSlot is the keyGen count of the key whose keyHash is h.
func (s *Store) keyGenSlot(h uint64) *atomic.Uint64 { return &s.keyGen[h%uint64(len(s.keyGen))] }

// nsLock returns the stripe ordering writes of a namespace against its deletion: writers and
// eviction hold it shared, DeleteNamespace exclusively. Always taken before a key lock.
func (s *Store) nsLock(tenant, namespace string) *sync.RWMutex {
	return &s.nsLocks[s.nsStripe(tenant, namespace)]
}

func (s *Store) nsStripe(tenant, namespace string) int {
	return int(s.hash(tenant, namespace) % uint64(len(s.nsLocks)))
}

func (s *Store) uploadLock(id string) *sync.Mutex {
	return &s.uploadLocks[s.hash(id)%uint64(len(s.uploadLocks))]
}

// lockKey takes the namespace stripe (shared) and the key stripe; the result unlocks both.
func (s *Store) lockKey(key storage.Key) func() {
	ns := s.nsLock(key.Tenant, key.Namespace)
	ns.RLock()
	h := s.keyHash(key)
	kl := &s.keyLocks[h%uint64(len(s.keyLocks))]
	kl.Lock()
	return func() {
		s.keyGenSlot(h).Add(1)
		kl.Unlock()
		ns.RUnlock()
	}
}

// gate counts in-flight operations so Close can wait for them and refuse new ones.
type gate struct {
	mu     sync.Mutex
	zero   *sync.Cond
	n      int
	closed bool
}

func (g *gate) init() { g.zero = sync.NewCond(&g.mu) }

func (g *gate) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return fmt.Errorf("%w: the store is closed", storage.ErrUnavailable)
	}
	g.n++
	return nil
}

func (g *gate) leave() {
	g.mu.Lock()
	g.n--
	if g.n == 0 {
		g.zero.Broadcast()
	}
	g.mu.Unlock()
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	for g.n > 0 {
		g.zero.Wait()
	}
	g.mu.Unlock()
}

// commitTracker lets eviction wait until every write that may have appended to a sealed
// segment has committed (or abandoned) its manifest: between a segment commit and the Pebble
// commit a record is referenced by nothing yet, and retiring its segment then would leave the
// manifest pointing at a removed file.
type commitTracker struct {
	mu     sync.Mutex
	done   *sync.Cond
	next   uint64
	active map[uint64]struct{}
}

func (c *commitTracker) init() {
	c.done = sync.NewCond(&c.mu)
	c.active = map[uint64]struct{}{}
}

// begin registers a write about to commit a segment record; call end when its manifest is
// committed or abandoned.
func (c *commitTracker) begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.next
	c.next++
	c.active[id] = struct{}{}
	return id
}

func (c *commitTracker) end(id uint64) {
	c.mu.Lock()
	delete(c.active, id)
	c.done.Broadcast()
	c.mu.Unlock()
}

// waitForEarlier blocks until every write registered before this call has ended. Writes that
// begin later are not waited for (they cannot append to an already sealed segment).
func (c *commitTracker) waitForEarlier() {
	c.mu.Lock()
	defer c.mu.Unlock()
	mark := c.next
	for {
		pending := false
		for id := range c.active {
			if id < mark {
				pending = true
				break
			}
		}
		if !pending {
			return
		}
		c.done.Wait()
	}
}
