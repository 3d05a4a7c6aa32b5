package antientropy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/storage"
)

// Source is what anti-entropy, repair and read-through need from the internal plane. It is
// satisfied by the peer client (cluster/peer); addr is the peer's internal-plane host:port.
// Implementations are safe for concurrent use. A missing object or an unknown key is an error
// wrapping storage.ErrNotFound.
type Source interface {
	// BucketDigests returns the peer's 2^bits bucket digests (32 bytes each, in bucket order)
	// and its object count (storage.Index.BucketDigests).
	BucketDigests(ctx context.Context, addr string, bits uint32) ([]byte, uint64, error)
	// ListObjects pages through the peer's objects of the given buckets in key order
	// (storage.Index.ListObjects); the token is opaque and nil when done.
	ListObjects(ctx context.Context, addr string, bits uint32, buckets []uint32, after []byte, limit int) ([]storage.ObjectSummary, []byte, error)
	// ListTombstones returns every namespace tombstone the peer holds.
	ListTombstones(ctx context.Context, addr string) ([]storage.Tombstone, error)
	// FetchObject streams one object. The reader verifies the body's SHA-256 against Info at
	// EOF and fails instead of returning io.EOF when it differs. The caller closes it; the
	// stream lives as long as ctx.
	FetchObject(ctx context.Context, addr string, key storage.Key) (storage.Reader, error)
}

// Local is the node's RAW store: the disk store itself, never the read-through decorator
// (a sweep reading through would ask peers for what it is comparing against them).
type Local interface {
	storage.Store
	storage.Index
}

// Peer is one live member as anti-entropy sees it.
type Peer struct {
	Name   string // memberlist node name (KURA_NODE_NAME)
	Region string
	Addr   string // internal-plane host:port
}

// Peers lists the live peers, excluding this node. It is called often and must be cheap and
// safe for concurrent use.
type Peers interface {
	Peers() []Peer
}

// Defaults for Config fields left at zero, with the reason for each.
const (
	// DefaultInterval between sweeps: a lost push is repaired within about half a minute,
	// while an idle sweep costs one 32 KiB digest exchange per peer.
	DefaultInterval = 30 * time.Second
	// DefaultPullConcurrency objects fetched at once from one peer: enough to hide one
	// round trip per object, few enough not to starve client traffic on small machines.
	DefaultPullConcurrency = 8
	// DefaultPageSize summaries per listing page: bounds memory (a few hundred KiB per
	// page) while keeping the number of round trips low.
	DefaultPageSize = 500
	// DefaultPeerTimeout bounds a listing call and the silence of a fetch (no byte for that
	// long): a stalled peer is skipped instead of holding the sweep.
	DefaultPeerTimeout = 30 * time.Second
	// DefaultPeerPoll is how often Run looks for the first peer; bootstrap begins within it.
	DefaultPeerPoll = time.Second
	// DefaultRetryInterval spaces bootstrap attempts until one sweep reached a peer, so a
	// new node does not wait a whole Interval because its first peer was still starting.
	DefaultRetryInterval = 5 * time.Second
	// DefaultRepairQueue bounds corrupt-record repairs waiting for the repair worker;
	// Repair drops (and counts) keys beyond it rather than block a reader.
	DefaultRepairQueue = 1024
	// jitter spreads sweeps of many nodes (±20 %) so they do not hit a peer together.
	jitter = 0.2
)

// Config configures a Sweeper. Local, Source and Peers are required.
type Config struct {
	Local      Local
	Source     Source
	Peers      Peers
	SelfRegion string // peers of this region are swept and asked first
	// Interval between sweeps (default DefaultInterval), applied with ±20 % jitter.
	Interval time.Duration
	// PullConcurrency objects fetched at once during one peer's sweep (default 8).
	PullConcurrency int
	// PageSize summaries per listing page, remote and local (default 500).
	PageSize int
	// PeerTimeout bounds each listing call and each fetch's silence (default 30 s).
	PeerTimeout time.Duration
	// PeerPoll is how often Run checks for a first peer (default 1 s).
	PeerPoll time.Duration
	// RetryInterval spaces sweeps until one reached a peer (default 5 s).
	RetryInterval time.Duration
	// RepairQueue bounds pending corrupt-record repairs (default 1024).
	RepairQueue int
	// Corrupted delivers the keys of corrupt records the local store dropped (the disk
	// store's Corrupted); each is queued for a repair from a peer. nil: only Repair queues.
	Corrupted <-chan storage.Key
	// MaxKeyValueBytes caps pulled keyvalue documents (KURA_MAX_KEYVALUE_BYTES; 0: no cap
	// beyond the store's own).
	MaxKeyValueBytes int64
	Logger           *slog.Logger          // nil: discarded
	Registerer       prometheus.Registerer // nil: a private registry
	Now              func() time.Time      // nil: time.Now; measures sweep durations
}

// Result sums up one SweepNow.
type Result struct {
	Peers             int // peers swept (including those that failed)
	PeersFailed       int // peers skipped after an error; the next sweep retries them
	BucketsCompared   int
	BucketsDiffering  int
	ObjectsPulled     int // objects fetched and stored (created or replaced)
	ObjectsFailed     int // objects whose fetch failed verification or was refused; retried next sweep
	StubsApplied      int // evicted-object stubs recorded
	TombstonesApplied int
	Conflicts         int // immutable objects whose body here lost to the peer's earlier write (pulled to replace ours)
}

func (r *Result) add(o Result) {
	r.Peers += o.Peers
	r.PeersFailed += o.PeersFailed
	r.BucketsCompared += o.BucketsCompared
	r.BucketsDiffering += o.BucketsDiffering
	r.ObjectsPulled += o.ObjectsPulled
	r.ObjectsFailed += o.ObjectsFailed
	r.StubsApplied += o.StubsApplied
	r.TombstonesApplied += o.TombstonesApplied
	r.Conflicts += o.Conflicts
}

// Sweeper runs anti-entropy sweeps and corrupt-record repairs. It is safe for concurrent use;
// sweeps are serialised (a SweepNow waits for a running one).
type Sweeper struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	sweepMu      sync.Mutex // one sweep at a time
	running      atomic.Bool
	bootstrapped atomic.Bool
	bootDone     chan struct{} // closed by whoever sets bootstrapped: the first sweep completed against a peer

	pauseMu sync.Mutex
	paused  bool
	resume  chan struct{} // closed when the pause ends
	waiting atomic.Int32  // goroutines blocked by the pause (observed by tests)

	repairs   chan storage.Key
	pendingMu sync.Mutex
	pending   map[storage.Key]struct{} // queued or being repaired: a key is queued once
}

// New checks cfg, fills in defaults and registers the metrics.
func New(cfg Config) (*Sweeper, error) {
	var problems []error
	if cfg.Local == nil {
		problems = append(problems, errors.New("no local store"))
	}
	if cfg.Source == nil {
		problems = append(problems, errors.New("no peer source"))
	}
	if cfg.Peers == nil {
		problems = append(problems, errors.New("no peer list"))
	}
	for _, c := range []struct {
		name string
		v    int64
	}{
		{"interval", int64(cfg.Interval)}, {"pull concurrency", int64(cfg.PullConcurrency)},
		{"page size", int64(cfg.PageSize)}, {"peer timeout", int64(cfg.PeerTimeout)},
		{"peer poll", int64(cfg.PeerPoll)}, {"retry interval", int64(cfg.RetryInterval)},
		{"repair queue", int64(cfg.RepairQueue)}, {"keyvalue limit", cfg.MaxKeyValueBytes},
	} {
		if c.v < 0 {
			problems = append(problems, fmt.Errorf("negative %s %d", c.name, c.v))
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("create anti-entropy sweeper: %w", errors.Join(problems...))
	}
	cfg.Interval = orDefault(cfg.Interval, DefaultInterval)
	cfg.PullConcurrency = orDefault(cfg.PullConcurrency, DefaultPullConcurrency)
	cfg.PageSize = orDefault(cfg.PageSize, DefaultPageSize)
	cfg.PeerTimeout = orDefault(cfg.PeerTimeout, DefaultPeerTimeout)
	cfg.PeerPoll = orDefault(cfg.PeerPoll, DefaultPeerPoll)
	cfg.RetryInterval = orDefault(cfg.RetryInterval, DefaultRetryInterval)
	cfg.RepairQueue = orDefault(cfg.RepairQueue, DefaultRepairQueue)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sweeper{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "antientropy"),
		repairs:  make(chan storage.Key, cfg.RepairQueue),
		pending:  map[storage.Key]struct{}{},
		bootDone: make(chan struct{}),
	}
	m, err := newMetrics(cfg.Registerer, s)
	if err != nil {
		return nil, fmt.Errorf("create anti-entropy sweeper: register metrics: %w", err)
	}
	s.metrics = m
	return s, nil
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Run sweeps every Interval (with jitter) and works the repair queue until ctx ends, then
// returns nil once its goroutines have stopped. The first sweep — the bootstrap of a new node
// — starts as soon as Peers() is non-empty; until a sweep has reached a peer, failed attempts
// are retried every RetryInterval. Run may be called only once at a time.
func (s *Sweeper) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("run anti-entropy: already running")
	}
	defer s.running.Store(false)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.repairLoop(ctx)
	}()
	defer wg.Wait()

	for len(s.cfg.Peers.Peers()) == 0 {
		if !sleep(ctx, s.cfg.PeerPoll) {
			return nil
		}
	}
	for {
		if err := s.waitUnpaused(ctx); err != nil {
			return nil
		}
		wait := s.jittered(s.cfg.Interval)
		if len(s.cfg.Peers.Peers()) > 0 {
			res, err := s.SweepNow(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				s.log.Warn("anti-entropy sweep incomplete", "error", err, "peers", res.Peers, "peers_failed", res.PeersFailed)
			}
		}
		if !s.bootstrapped.Load() {
			wait = min(wait, s.jittered(s.cfg.RetryInterval))
		}
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// Bootstrapped reports whether a sweep has completed against at least one peer since start:
// until then a new node may still be missing most of the cluster's data.
func (s *Sweeper) Bootstrapped() bool { return s.bootstrapped.Load() }

// WaitBootstrapped waits until Bootstrapped is true, or ctx ends (its error is returned).
func (s *Sweeper) WaitBootstrapped(ctx context.Context) error {
	select {
	case <-s.bootDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Sweeper) markBootstrapped() {
	if s.bootstrapped.CompareAndSwap(false, true) {
		close(s.bootDone)
	}
}

// SetPaused pauses (true) or resumes (false) sweeps and repairs, for the hard memory
// watermark. A sweep in progress stops at its next page or pull and continues on resume.
func (s *Sweeper) SetPaused(paused bool) {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	if paused == s.paused {
		return
	}
	s.paused = paused
	if paused {
		s.resume = make(chan struct{})
		s.metrics.paused.Set(1)
	} else {
		close(s.resume)
		s.metrics.paused.Set(0)
	}
}

// waitUnpaused blocks while the sweeper is paused.
func (s *Sweeper) waitUnpaused(ctx context.Context) error {
	for {
		s.pauseMu.Lock()
		paused, resume := s.paused, s.resume
		s.pauseMu.Unlock()
		if !paused {
			return ctx.Err()
		}
		s.waiting.Add(1)
		select {
		case <-resume:
			s.waiting.Add(-1)
		case <-ctx.Done():
			s.waiting.Add(-1)
			return ctx.Err()
		}
	}
}

func (s *Sweeper) jittered(d time.Duration) time.Duration {
	f := 1 - jitter + 2*jitter*rand.Float64()
	return time.Duration(float64(d) * f)
}

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
