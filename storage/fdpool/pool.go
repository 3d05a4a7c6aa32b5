package fdpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"

	"github.com/kuracache/kura/storage"
)

// Defaults for a pool built without explicit budgets (tests, tools). The app always passes the
// derived KURA_* budgets.
const (
	// DefaultSize is the upper end of the derivation rule's clamp [64, 256].
	DefaultSize = 256
	// DefaultAcquireTimeout is KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS's default.
	DefaultAcquireTimeout = 5 * time.Second
)

// Pool is a counting semaphore of file-descriptor slots. It is safe for concurrent use. Every
// successful Acquire must be paired with one Release; File does that on Close.
type Pool struct {
	sem     *semaphore.Weighted
	size    int
	timeout time.Duration

	inUse    atomic.Int64
	waiters  atomic.Int64
	timeouts atomic.Uint64

	rmu        sync.Mutex
	reclaimers map[int]func() bool
	nextID     int
}

// New returns a pool of size slots whose checkouts wait at most acquireTimeout. size must be
// at least 1 and acquireTimeout positive.
func New(size int, acquireTimeout time.Duration) (*Pool, error) {
	if size < 1 {
		return nil, fmt.Errorf("file descriptor pool: size must be at least 1 (got %d)", size)
	}
	if acquireTimeout <= 0 {
		return nil, fmt.Errorf("file descriptor pool: acquire timeout must be positive (got %v)", acquireTimeout)
	}
	return &Pool{sem: semaphore.NewWeighted(int64(size)), size: size, timeout: acquireTimeout}, nil
}

// Capacity is the number of slots.
func (p *Pool) Capacity() int { return p.size }

// AcquireTimeout is the longest a checkout waits.
func (p *Pool) AcquireTimeout() time.Duration { return p.timeout }

// InUse is the number of slots checked out.
func (p *Pool) InUse() int { return int(p.inUse.Load()) }

// Waiters is the number of checkouts waiting for a slot right now.
func (p *Pool) Waiters() int { return int(p.waiters.Load()) }

// Timeouts counts checkouts that failed with storage.ErrBusy since the pool was built.
func (p *Pool) Timeouts() uint64 { return p.timeouts.Load() }

// AddReclaimer registers fn, which closes one idle descriptor its owner keeps only as an
// optimisation (a cached read handle) and reports whether it did. Acquire calls reclaimers
// before it waits, so idle caches give way to requests. fn runs on the acquiring goroutine
// with no pool lock held; it must not call Acquire. The returned function unregisters fn (its
// owner closes).
func (p *Pool) AddReclaimer(fn func() bool) (remove func()) {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	if p.reclaimers == nil {
		p.reclaimers = make(map[int]func() bool)
	}
	id := p.nextID
	p.nextID++
	p.reclaimers[id] = fn
	return func() {
		p.rmu.Lock()
		delete(p.reclaimers, id)
		p.rmu.Unlock()
	}
}

func (p *Pool) reclaim() bool {
	p.rmu.Lock()
	rs := make([]func() bool, 0, len(p.reclaimers))
	for _, fn := range p.reclaimers {
		rs = append(rs, fn)
	}
	p.rmu.Unlock()
	for _, fn := range rs {
		if fn() {
			return true
		}
	}
	return false
}

// TryAcquire checks out a slot if one is free right now and nobody is queued before us.
func (p *Pool) TryAcquire() bool {
	if p.sem.TryAcquire(1) {
		p.inUse.Add(1)
		return true
	}
	return false
}

// Acquire checks out one slot, waiting at most the acquire timeout. When that passes it fails
// with an error wrapping storage.ErrBusy; when ctx ends first it returns ctx's cause.
func (p *Pool) Acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("wait for a file descriptor: %w", context.Cause(ctx))
	}
	if p.TryAcquire() {
		return nil
	}
	// Closing an idle cached handle frees a slot; with nobody queued ahead it is ours.
	if p.reclaim() && p.TryAcquire() {
		return nil
	}
	p.waiters.Add(1)
	defer p.waiters.Add(-1)
	wctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if err := p.sem.Acquire(wctx, 1); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("wait for a file descriptor: %w", context.Cause(ctx))
		}
		p.timeouts.Add(1)
		return fmt.Errorf("%w: all %d file descriptors of the pool stayed in use for %v",
			storage.ErrBusy, p.size, p.timeout)
	}
	p.inUse.Add(1)
	return nil
}

// Release returns a slot checked out by Acquire or TryAcquire.
func (p *Pool) Release() {
	if p.inUse.Add(-1) < 0 {
		panic("fdpool: Release without a matching Acquire")
	}
	p.sem.Release(1)
}

// File is an *os.File that holds a pool slot; Close closes the file and returns the slot. It
// must be closed through this type, never through the embedded *os.File.
type File struct {
	*os.File
	pool   *Pool
	closed atomic.Bool
}

// Close closes the file and releases its slot. A second Close returns os.ErrClosed.
func (f *File) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return os.ErrClosed
	}
	err := f.File.Close()
	f.pool.Release()
	return err
}

// OpenFile is os.OpenFile through the pool: it checks out a slot (see Acquire) and returns a
// File holding it. The slot is returned at once if the open fails.
func (p *Pool) OpenFile(ctx context.Context, name string, flag int, perm os.FileMode) (*File, error) {
	return p.open(ctx, func() (*os.File, error) { return os.OpenFile(name, flag, perm) })
}

// Open opens name read-only through the pool.
func (p *Pool) Open(ctx context.Context, name string) (*File, error) {
	return p.OpenFile(ctx, name, os.O_RDONLY, 0)
}

// CreateTemp is os.CreateTemp through the pool.
func (p *Pool) CreateTemp(ctx context.Context, dir, pattern string) (*File, error) {
	return p.open(ctx, func() (*os.File, error) { return os.CreateTemp(dir, pattern) })
}

func (p *Pool) open(ctx context.Context, open func() (*os.File, error)) (*File, error) {
	if err := p.Acquire(ctx); err != nil {
		return nil, err
	}
	f, err := open()
	if err != nil {
		p.Release()
		return nil, Classify(err)
	}
	return &File{File: f, pool: p}, nil
}

// Adopt wraps f, opened by the caller with a slot it already checked out (Acquire or
// TryAcquire), so that closing it returns that slot. It lets a caller take the slot before a
// lock under which it opens the file.
func (p *Pool) Adopt(f *os.File) *File { return &File{File: f, pool: p} }

// Do runs fn, which opens and closes descriptors of its own (a directory walk, os.RemoveAll),
// while holding one slot.
func (p *Pool) Do(ctx context.Context, fn func() error) error {
	if err := p.Acquire(ctx); err != nil {
		return err
	}
	defer p.Release()
	return Classify(fn())
}

// Classify marks running out of descriptors (EMFILE for the process, ENFILE for the system)
// as storage.ErrBusy, so it is answered 503 / RESOURCE_EXHAUSTED like an exhausted pool and
// never as an internal error. Other errors are returned unchanged.
func Classify(err error) error {
	if err != nil && (errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)) && !errors.Is(err, storage.ErrBusy) {
		return fmt.Errorf("%w: %w", storage.ErrBusy, err)
	}
	return err
}

// Collectors are the pool's Prometheus series: kura_fd_pool_in_use, kura_fd_pool_capacity,
// kura_fd_pool_waiters and kura_fd_pool_timeouts_total. The owner registers them.
func (p *Pool) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_fd_pool_in_use",
			Help: "File descriptors checked out of the application-managed pool (KURA_FILE_DESCRIPTOR_POOL_SIZE).",
		}, func() float64 { return float64(p.InUse()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_fd_pool_capacity",
			Help: "Size of the application-managed file-descriptor pool.",
		}, func() float64 { return float64(p.size) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kura_fd_pool_waiters",
			Help: "Requests and background tasks waiting for a file descriptor right now.",
		}, func() float64 { return float64(p.Waiters()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kura_fd_pool_timeouts_total",
			Help: "File-descriptor checkouts that waited longer than KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS and failed (503 / RESOURCE_EXHAUSTED).",
		}, func() float64 { return float64(p.Timeouts()) }),
	}
}
