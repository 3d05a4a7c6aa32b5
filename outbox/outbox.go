package outbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// Sender pushes to one peer's internal plane (addr is its host:port). *peer.Client satisfies
// it. Implementations are safe for concurrent use.
type Sender interface {
	// PushObject streams body (exactly info.Size bytes) to the peer, which applies it with
	// info.Version and verifies info.SHA256. applied=false means the peer already held the
	// object or something newer and is not an error. The caller closes body. Errors wrapping
	// storage.ErrInvalidKey or storage.ErrDigestMismatch are permanent; any other error is
	// retried.
	PushObject(ctx context.Context, addr string, info storage.Info, body io.Reader) (applied bool, err error)
	// PushTombstone applies t on the peer (DeleteNamespace with t.Version).
	PushTombstone(ctx context.Context, addr string, t storage.Tombstone) error
}

// Target is a live peer: its memberlist node name (the queue's identity) and its
// internal-plane address.
type Target struct{ Name, Addr string }

// Defaults for Config fields left at zero.
const (
	// DefaultBatch: entries read per page. 256 entries of ~60 bytes keep a page far below a
	// megabyte while amortising each Pebble scan and each range deletion.
	DefaultBatch = 256
	// DefaultInFlight: concurrent pushes per peer. Each push of a small object waits mostly on
	// the receiver's durable commit (an fdatasync), so pushes in flight are what lets the
	// receiver's group commit share one sync among many of them: 4 replicated ~1,000 1 KiB
	// objects/s, 16 several times that. Still bounded, so one peer cannot monopolise the
	// node's disk reads or the receiver's handlers.
	DefaultInFlight = 16
	// DefaultLargeInFlight: of those, how many may carry a large object (above
	// largeObjectBytes). Large pushes are bound by bandwidth and the receiver's disk, not by
	// round trips: 4 at once drained 64 MiB blobs at 264–341 MB/s where 16 made 226–240.
	DefaultLargeInFlight = 4
	// DefaultMinBackoff, DefaultMaxBackoff bound the retry delay of a failing peer: quick
	// enough to ride out a restart, slow enough not to spin against a peer that is down.
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	// DefaultDropAfter: a peer absent this long loses its queue. Longer than a rolling
	// restart, short enough that a node that left for good does not pin disk; anti-entropy
	// repairs whatever the dropped entries would have carried.
	DefaultDropAfter = time.Hour
	// DefaultPushTimeout bounds one push so a peer that accepts a connection and then hangs
	// cannot stall its queue forever: at 10 MB/s it still fits the largest (2 GiB) object.
	DefaultPushTimeout = 5 * time.Minute
)

// idlePoll is how often an idle worker looks at its queue without a Notify, and how often the
// supervisor reconsiders departed peers. It bounds the delay of a commit whose Notify was
// missed (Notify is a hint, not a guarantee).
const idlePoll = 250 * time.Millisecond

// Config configures an Outbox.
type Config struct {
	// DB holds the queues: the local store's metadata database (local.DataDir.DB), opened
	// before the store so that the outbox can be the store's commit observer. Required.
	DB *meta.DB
	// Sender delivers to peers. Required. When it is also a BatchSender, small objects go in
	// batches (batch.go).
	Sender Sender
	// Batch is the number of entries read per page (default DefaultBatch). A backlog is never
	// loaded whole: a worker holds at most one page.
	Batch int
	// InFlight is the number of concurrent pushes per peer (default DefaultInFlight).
	InFlight int
	// BatchesInFlight is the number of concurrent PushBatch calls per peer when Sender is a
	// BatchSender (default DefaultBatchesInFlight); they are in addition to InFlight.
	BatchesInFlight int
	// LargeInFlight caps how many of them carry an object larger than largeObjectBytes
	// (default DefaultLargeInFlight, at most InFlight).
	LargeInFlight int
	// MinBackoff and MaxBackoff bound a failing peer's retry delay, which doubles per failed
	// attempt with full jitter (defaults DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// DropAfter is how long a peer may stay absent before its queue is deleted (default
	// DefaultDropAfter).
	DropAfter time.Duration
	// PushTimeout bounds one push (default DefaultPushTimeout).
	PushTimeout time.Duration
	// Logger receives delivery problems (nil: discarded).
	Logger *slog.Logger
	// Registerer receives the metrics (nil: a private registry).
	Registerer prometheus.Registerer
	// TracerProvider traces every push (span outbox.push, see tracing.go) as a child of the
	// write's commit when the entry carries its trace context (nil: no-op).
	TracerProvider trace.TracerProvider
	// Now is the wall clock for enqueue times, peer departures and hole expiry (nil:
	// time.Now). Tests move it forward.
	Now func() time.Time
	// Rand jitters the backoff (nil: seeded from the clock). Tests pass a seeded source.
	Rand *rand.Rand
}

// queueStore is the part of *meta.DB the outbox uses; tests wrap it to observe the scans.
type queueStore interface {
	ScanOutbox(ctx context.Context, peer string, afterSeq uint64, limit int) ([]meta.OutboxEntry, error)
	OutboxPeers(ctx context.Context) ([]string, error)
	NewBatch() *meta.Batch
}

// Outbox is the durable replication queue of one node. Its methods are safe for concurrent
// use; Run owns every goroutine it starts.
type Outbox struct {
	cfg     Config
	db      queueStore
	log     *slog.Logger
	tracer  trace.Tracer
	now     func() time.Time
	rnd     *lockedRand
	metrics *metrics
	batcher BatchSender // cfg.Sender when it has the batched lane, else nil

	// local is the store Run pushes from (object entries are resolved against it at dispatch
	// time); written by Run before it starts any worker.
	local storage.Store

	paused  atomic.Bool
	running atomic.Bool
	changed chan struct{} // SetTargets wakes the supervisor

	mu    sync.Mutex
	peers map[string]*peer

	// Test hooks, set before Run: every backoff a worker decides, every time a worker goes
	// idle, every pass of the supervisor.
	onBackoff   func(peer string, attempt int, d time.Duration)
	onIdle      func(peer string)
	onSupervise func()
}

// New builds an Outbox over cfg.DB. It walks every queue once (page by page) to restore each
// peer's depth and next sequence number; peers found there count as departed until SetTargets
// names them, so a queue whose peer never returns is dropped after DropAfter.
func New(cfg Config) (*Outbox, error) {
	if cfg.DB == nil {
		return nil, errors.New("new outbox: no metadata database")
	}
	return newOutbox(cfg, cfg.DB)
}

func newOutbox(cfg Config, db queueStore) (*Outbox, error) {
	if cfg.Sender == nil {
		return nil, errors.New("new outbox: no sender")
	}
	for name, v := range map[string]int64{
		"batch": int64(cfg.Batch), "in-flight": int64(cfg.InFlight), "large in-flight": int64(cfg.LargeInFlight), "batches in flight": int64(cfg.BatchesInFlight), "min backoff": int64(cfg.MinBackoff),
		"max backoff": int64(cfg.MaxBackoff), "drop delay": int64(cfg.DropAfter), "push timeout": int64(cfg.PushTimeout),
	} {
		if v < 0 {
			return nil, fmt.Errorf("new outbox: %s must not be negative (got %d)", name, v)
		}
	}
	if cfg.Batch == 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.InFlight == 0 {
		cfg.InFlight = DefaultInFlight
	}
	if cfg.BatchesInFlight == 0 {
		cfg.BatchesInFlight = DefaultBatchesInFlight
	}
	if cfg.LargeInFlight <= 0 {
		cfg.LargeInFlight = DefaultLargeInFlight
	}
	cfg.LargeInFlight = min(cfg.LargeInFlight, cfg.InFlight)
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("new outbox: max backoff %v is below min backoff %v", cfg.MaxBackoff, cfg.MinBackoff)
	}
	if cfg.DropAfter == 0 {
		cfg.DropAfter = DefaultDropAfter
	}
	if cfg.PushTimeout == 0 {
		cfg.PushTimeout = DefaultPushTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = noop.NewTracerProvider()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		seed := uint64(time.Now().UnixNano())
		cfg.Rand = rand.New(rand.NewPCG(seed, seed>>32|1))
	}
	o := &Outbox{
		cfg:     cfg,
		db:      db,
		log:     cfg.Logger,
		tracer:  cfg.TracerProvider.Tracer(tracerName),
		now:     cfg.Now,
		rnd:     &lockedRand{r: cfg.Rand},
		changed: make(chan struct{}, 1),
		peers:   map[string]*peer{},
	}
	o.batcher, _ = cfg.Sender.(BatchSender)
	damaged, err := o.restore(context.Background())
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer, o)
	if err != nil {
		return nil, fmt.Errorf("new outbox: %w", err)
	}
	o.metrics = m
	for name, n := range damaged {
		m.pushes.WithLabelValues(name, "unknown", resultDropped).Add(float64(n))
	}
	return o, nil
}

// restore counts every queue found in the database, page by page. Damaged entries it meets can
// never be delivered: it deletes them (counted as dropped once the metrics exist).
func (o *Outbox) restore(ctx context.Context) (damaged map[string]int, err error) {
	names, err := o.db.OutboxPeers(ctx)
	if err != nil {
		return nil, fmt.Errorf("new outbox: %w", err)
	}
	damaged = map[string]int{}
	now := o.now()
	for _, name := range names {
		p := newPeer(name)
		p.goneSince = now
		var after, last, lastBad uint64
		for {
			page, bad, err := o.scan(ctx, name, after, o.cfg.Batch)
			if err != nil {
				return nil, fmt.Errorf("new outbox: count queue of %s: %w", name, err)
			}
			for _, e := range page {
				if p.depth.Load() == 0 {
					if ent, err := DecodeEntry(e.Value); err == nil {
						p.oldest = ent.EnqueuedAt
					}
				}
				p.depth.Add(1)
				after = e.Seq
			}
			last = max(last, after, bad)
			if bad != 0 {
				if bad == lastBad {
					after = bad // its deletion did not take: step over it
					continue
				}
				lastBad = bad
				if err := o.deleteDamaged(name, bad); err != nil {
					return nil, fmt.Errorf("new outbox: %w", err)
				}
				damaged[name]++
				continue // entries between after and bad are read again
			}
			if len(page) < o.cfg.Batch {
				break
			}
		}
		p.assigned = last
		p.firstLocal = last + 1
		o.peers[name] = p
		o.log.Info("outbox queue restored", "peer", name, "depth", p.depth.Load(), "last_seq", last)
	}
	return damaged, nil
}

func (o *Outbox) deleteDamaged(name string, seq uint64) error {
	o.log.Error("deleting a damaged outbox entry", "peer", name, "seq", seq)
	b := o.db.NewBatch()
	defer b.Close()
	if err := b.DeleteOutbox(name, seq); err != nil {
		return err
	}
	if err := b.CommitNoSync(); err != nil {
		return fmt.Errorf("delete damaged outbox entry %s/%d: %w", name, seq, err)
	}
	return nil
}

// scan wraps ScanOutbox. When a damaged entry stops the page it returns the entries before it
// and the damaged entry's sequence number (bad > 0), so callers can step over it.
func (o *Outbox) scan(ctx context.Context, name string, after uint64, limit int) (page []meta.OutboxEntry, bad uint64, err error) {
	page, err = o.db.ScanOutbox(ctx, name, after, limit)
	if err == nil || !errors.Is(err, storage.ErrCorrupt) {
		return page, 0, err
	}
	from := after
	if len(page) > 0 {
		from = page[len(page)-1].Seq
	}
	bad, err = o.locateDamaged(ctx, name, from)
	return page, bad, err
}

// locateDamaged finds a damaged entry after from, given that the first entry after from fails
// to decode. ScanOutbox reports the damage but not where it is. A one-entry scan after s fails
// exactly when the first entry after s is damaged, so where that flips from failing (at s) to
// not failing (at s+1), s+1 is a damaged entry. Galloping then bisecting finds such a flip in
// O(log distance) seeks. With several damaged entries in a row it may find a later one than
// the first, so callers delete what it finds and scan again from from; they never step over
// the entries in between.
func (o *Outbox) locateDamaged(ctx context.Context, name string, from uint64) (uint64, error) {
	fails := func(s uint64) (bool, error) {
		_, err := o.db.ScanOutbox(ctx, name, s, 1)
		if err != nil && !errors.Is(err, storage.ErrCorrupt) {
			return false, fmt.Errorf("locate damaged outbox entry of %s: %w", name, err)
		}
		return err != nil, nil
	}
	if f, err := fails(from); err != nil || !f {
		if err == nil {
			err = fmt.Errorf("locate damaged outbox entry of %s after %d: it is gone", name, from)
		}
		return 0, err
	}
	lo, step := from, uint64(1)
	var hi uint64
	for {
		if lo > ^uint64(0)-step {
			hi = ^uint64(0) // no entry sorts after the last number: a scan after it never fails
			break
		}
		hi = lo + step
		f, err := fails(hi)
		if err != nil {
			return 0, err
		}
		if !f {
			break
		}
		lo, step = hi, step*2
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		f, err := fails(mid)
		if err != nil {
			return 0, err
		}
		if f {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}

// Enqueue adds one entry per current target to b, the batch that commits the write, so the
// write and its replication become durable together. It is called from OnCommit (the outbox
// as the disk store's commit observer), under the key's lock: it only assigns sequence numbers
// and encodes. Sequence numbers per peer grow monotonically, across restarts too: they continue after the last entry
// found at start-up (a queue that was empty starts again at 1, which reuses nothing, since no
// entry of the old numbering is left). An error aborts the write.
func (o *Outbox) Enqueue(b *meta.Batch, e Entry) error {
	if e.Op == OpTombstone {
		if e.Version == 0 {
			e.Version = e.Tombstone.Version
		}
		if e.Tombstone.Version == 0 {
			e.Tombstone.Version = e.Version
		}
	}
	if e.EnqueuedAt.IsZero() {
		e.EnqueuedAt = o.now()
	}
	value, err := AppendEntry(nil, e)
	if err != nil {
		return fmt.Errorf("enqueue replication of %s: %w", e.describe(), err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.peers {
		if !p.present {
			continue
		}
		seq := p.assigned + 1
		if err := b.PutOutbox(p.name, seq, value); err != nil {
			return fmt.Errorf("enqueue replication of %s for %s: %w", e.describe(), p.name, err)
		}
		p.assigned = seq
		if p.depth.Add(1) == 1 {
			p.oldest = e.EnqueuedAt
		}
	}
	return nil
}

func (e Entry) describe() string {
	if e.Op == OpTombstone {
		return fmt.Sprintf("tombstone %s/%s@%v", e.Tombstone.Tenant, e.Tombstone.Namespace, e.Version)
	}
	return fmt.Sprintf("%s@%v", e.Key, e.Version)
}

// Notify wakes idle workers: call it after a batch that enqueued entries has committed. Without
// it a new entry is still found within idlePoll.
func (o *Outbox) Notify() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range o.peers {
		p.poke()
	}
}

// SetTargets replaces the set of live peers (from membership; never include this node). New
// entries are queued only for live peers. A peer missing from now keeps its queue, undelivered,
// for DropAfter and is then forgotten; a peer that returns in time resumes where it stopped,
// at its new address. Names that cannot key a queue (empty, NUL) are logged and ignored.
func (o *Outbox) SetTargets(now []Target) {
	want := make(map[string]string, len(now))
	for _, t := range now {
		if err := validPeerName(t.Name); err != nil {
			o.log.Error("ignoring replication target", "peer", t.Name, "error", err)
			continue
		}
		want[t.Name] = t.Addr
	}
	at := o.now()
	o.mu.Lock()
	for name, p := range o.peers {
		if _, ok := want[name]; !ok && p.present {
			p.present = false
			p.goneSince = at
			o.log.Info("replication peer departed; keeping its queue", "peer", name, "depth", p.depth.Load(), "drop_after", o.cfg.DropAfter)
		}
	}
	for name, addr := range want {
		p, ok := o.peers[name]
		if !ok {
			p = newPeer(name)
			p.firstLocal = 1
			o.peers[name] = p
		} else if !p.present {
			o.log.Info("replication peer present", "peer", name, "addr", addr, "depth", p.depth.Load())
		}
		p.present = true
		p.goneSince = time.Time{}
		p.addr = addr
	}
	o.mu.Unlock()
	o.kick()
}

func validPeerName(name string) error {
	if name == "" || len(name) > storage.MaxIdentifierBytes {
		return fmt.Errorf("peer name must be 1..%d bytes", storage.MaxIdentifierBytes)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == 0 {
			return errors.New("peer name contains a NUL byte")
		}
	}
	return nil
}

// SetPaused stops (true) or resumes (false) dispatching; Enqueue keeps working. Pushes already
// in flight finish. It is the hard memory watermark's lever.
func (o *Outbox) SetPaused(paused bool) {
	if o.paused.Swap(paused) == paused {
		return
	}
	if paused {
		o.metrics.paused.Set(1)
		o.log.Warn("replication dispatch paused")
	} else {
		o.metrics.paused.Set(0)
		o.log.Info("replication dispatch resumed")
		o.Notify()
	}
}

// Depth is the number of entries queued for peer and not yet delivered (0 for an unknown
// peer). It is an in-memory counter, exact but for entries of writes that were abandoned after
// Enqueue, which it stops counting within a minute.
func (o *Outbox) Depth(peer string) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p, ok := o.peers[peer]; ok {
		return max(p.depth.Load(), 0)
	}
	return 0
}

// flushPoll is how often Flush looks at the queues: a drain waits on it at most this much
// longer than the last delivery takes.
const flushPoll = 20 * time.Millisecond

// Flush waits until the queues of every present peer are empty, or ctx ends (its error is
// returned with the number of entries still queued). Run must be running for anything to be
// delivered; a drain calls it after the front ends stopped taking writes.
func (o *Outbox) Flush(ctx context.Context) error {
	// Wake idle workers once so they push now rather than at their next idlePoll; a busy or
	// backing-off worker goes on by itself. Supervision needs no kick: SetTargets (and Run's
	// idlePoll tick) already has it start a worker for every present peer.
	o.Notify()
	t := time.NewTicker(flushPoll)
	defer t.Stop()
	for {
		pending := o.pendingPresent()
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flush the outbox: %d entries still queued: %w", pending, ctx.Err())
		case <-t.C:
		}
	}
}

// pendingPresent is the number of entries queued for peers that are present.
func (o *Outbox) pendingPresent() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var n int64
	for _, p := range o.peers {
		if p.present {
			n += max(p.depth.Load(), 0)
		}
	}
	return n
}

type queueSnapshot struct {
	name   string
	depth  int64
	oldest time.Time
}

func (o *Outbox) snapshot() []queueSnapshot {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]queueSnapshot, 0, len(o.peers))
	for _, p := range o.peers {
		out = append(out, queueSnapshot{name: p.name, depth: max(p.depth.Load(), 0), oldest: p.oldest})
	}
	slices.SortFunc(out, func(a, b queueSnapshot) int { return strings.Compare(a.name, b.name) })
	return out
}

func (o *Outbox) kick() {
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

// workerHandle is the supervisor's view of one running worker.
type workerHandle struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Run dispatches until ctx is done, pushing the current state of each queued object from
// local, the node's RAW store (the one whose commits the outbox observes, never a read-through
// decorator). It is given here, not to New, because the outbox must exist before that store:
// it is the store's CommitObserver. Run owns one worker goroutine per live peer, stops a
// peer's worker when it departs, deletes the queue of a peer absent for DropAfter, and
// returns (nil) once every worker has stopped. Run may be called once at a time.
func (o *Outbox) Run(ctx context.Context, local storage.Store) error {
	if local == nil {
		return errors.New("run outbox: no local store")
	}
	if !o.running.CompareAndSwap(false, true) {
		return errors.New("run outbox: already running")
	}
	defer o.running.Store(false)
	o.local = local
	workers := map[string]*workerHandle{}
	defer func() {
		for _, w := range workers {
			w.cancel()
		}
		for _, w := range workers {
			<-w.done
		}
	}()
	tick := time.NewTicker(idlePoll)
	defer tick.Stop()
	for {
		o.supervise(ctx, workers)
		select {
		case <-ctx.Done():
			return nil
		case <-o.changed:
		case <-tick.C:
		}
	}
}

// supervise starts workers for live peers, stops those of departed peers and drops queues
// whose peer stayed away too long. A peer has at most one worker at a time: a replacement
// starts only after the previous one has exited, because the worker's cursor state is handed
// over, not shared.
func (o *Outbox) supervise(ctx context.Context, workers map[string]*workerHandle) {
	for name, w := range workers {
		select {
		case <-w.done:
			delete(workers, name)
		default:
		}
	}
	if o.onSupervise != nil {
		defer o.onSupervise()
	}
	now := o.now()
	o.mu.Lock()
	defer o.mu.Unlock()
	for name, p := range o.peers {
		w, running := workers[name]
		switch {
		case p.present && !running:
			wctx, cancel := context.WithCancel(ctx)
			w = &workerHandle{cancel: cancel, done: make(chan struct{})}
			workers[name] = w
			go func() {
				defer close(w.done)
				o.work(wctx, p)
			}()
		case !p.present && running:
			w.cancel()
		case !p.present && !running && !now.Before(p.goneSince.Add(o.cfg.DropAfter)):
			o.dropLocked(p)
		}
	}
}

// dropLocked deletes a departed peer's queue and forgets it. It holds o.mu through the commit
// so that a concurrent SetTargets naming the peer again cannot queue entries that this range
// deletion would then remove.
func (o *Outbox) dropLocked(p *peer) {
	b := o.db.NewBatch()
	defer b.Close()
	err := b.DeleteOutboxPeer(p.name)
	if err == nil {
		// Not synced: if a crash loses the deletion, the queue is found again at start-up and
		// dropped again after DropAfter.
		err = b.CommitNoSync()
	}
	if err != nil {
		o.log.Error("drop queue of departed peer", "peer", p.name, "error", err)
		return
	}
	delete(o.peers, p.name)
	o.metrics.peersDropped.Inc()
	o.log.Warn("dropped the queue of a departed peer; anti-entropy repairs what it missed",
		"peer", p.name, "absent_for", o.now().Sub(p.goneSince).Round(time.Second), "entries", p.depth.Load())
}
