package antientropy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/storage"
)

// DefaultFindTimeout bounds the peers' answer to one batched existence question
// (FindMissing): FindMissingBlobs and GetActionResult's completeness check wait for it, so it
// is short. A peer that has not answered by then is ignored for that call and the local
// answer stands (the client uploads again or runs the action: correct, only slower). 300 ms
// covers a cross-region round trip and a batched index look-up with a wide margin.
const DefaultFindTimeout = 300 * time.Millisecond

// DefaultMaxPendingPulls bounds the objects queued for a background pull (peers vouched
// for them in FindMissing) at once; beyond it, a vouched-for object is read through on
// demand when it is read. DefaultPullSlots bounds the pulls running at once, so a large
// FindMissingBlobs does not crowd the internal plane; a reader waiting for a queued object
// starts its pull at once.
const (
	DefaultMaxPendingPulls = 2048
	DefaultPullSlots       = 8
)

// DefaultReadThroughTimeout bounds how long one peer may stay silent during a read-through
// (before its answer, or between body chunks): a client is waiting, so a slow peer is
// abandoned for the next one quickly.
const DefaultReadThroughTimeout = 2 * time.Second

// ReadThroughOptions configure NewReadThrough.
type ReadThroughOptions struct {
	// PeerTimeout bounds each peer's silence (default DefaultReadThroughTimeout).
	PeerTimeout time.Duration
	// MaxKeyValueBytes caps keyvalue documents read through (0: the store's own cap).
	MaxKeyValueBytes int64
	// FindTimeout bounds the peers' answers in FindMissing (default DefaultFindTimeout).
	FindTimeout time.Duration
	// MaxPendingPulls and PullSlots bound background pulls (defaults DefaultMaxPendingPulls
	// and DefaultPullSlots).
	MaxPendingPulls int
	PullSlots       int
	Logger          *slog.Logger          // nil: discarded
	Registerer      prometheus.Registerer // nil: a private registry
}

// PeerSource is what the read-through asks peers (cluster/peer's Client satisfies it).
type PeerSource interface {
	// FetchObject streams one object, as Source.FetchObject.
	FetchObject(ctx context.Context, addr string, key storage.Key) (storage.Reader, error)
	// FindObjects returns the Info of those keys the peer stores, in any order, in as few
	// calls as the protocol allows; ctx bounds them.
	FindObjects(ctx context.Context, addr string, keys []storage.Key) ([]storage.Info, error)
}

// ReadThrough is the decorator; see NewReadThrough. Close it before the local store.
type ReadThrough struct {
	local   storage.Store
	src     PeerSource
	peers   Peers
	region  string
	opts    ReadThroughOptions
	log     *slog.Logger
	results *prometheus.CounterVec
	vouched *prometheus.CounterVec

	// Every flight runs under ctx, which Close cancels, and is counted in wg, which Close
	// waits for: no fetch outlives the decorator (and the store and client under it).
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	slots chan struct{} // background pulls running

	mu      sync.Mutex
	closed  bool
	pending int // background flights not finished
	flights map[storage.Key]*flight
}

// flight is one shared fetch of a key from peers into the local store.
type flight struct {
	done    chan struct{} // closed when err is set
	err     error         // nil: the object is now stored locally
	waiters int
	cancel  context.CancelFunc
	// background flights were started by FindMissing for an object a peer vouched for: they
	// run (in a pull slot) whether or not anyone waits, until stored, failed or Close. The
	// first reader to join closes urgent so the pull skips the queue.
	background bool
	urgent     chan struct{}
}

var (
	_ storage.Store     = (*ReadThrough)(nil)
	_ storage.Refresher = (*ReadThrough)(nil)
)

// NewReadThrough decorates local so that a read missing locally asks the live peers (same
// region first, then the others, each given PeerTimeout of silence), stores the first copy
// found with the origin's version and digest, and serves it from local. Concurrent misses of
// one key share one fetch, which runs until the object is stored or every waiting reader has
// gone. Without peers it behaves exactly like local. A peer or storage failure while reading
// through is logged and the read answers what local answered (not found): a miss is cheaper
// for a build than a failed request. Put and DeleteNamespace pass through: writes, and the
// existence checks of the write path, go to the local store alone (docs/contract.md §5), so a front end
// asks those of the raw store it is given next to this one. FindMissing asks peers about the
// locally missing keys in one batched call each, without fetching (see FindMissing).
// local must be the raw store, not another decorator that replicates reads. Close stops and
// waits for every fetch it started. The only error is a registry that holds a different
// metric under one of the read-through's names.
func NewReadThrough(local storage.Store, src PeerSource, peers Peers, selfRegion string, opts ReadThroughOptions) (*ReadThrough, error) {
	if opts.PeerTimeout <= 0 {
		opts.PeerTimeout = DefaultReadThroughTimeout
	}
	if opts.FindTimeout <= 0 {
		opts.FindTimeout = DefaultFindTimeout
	}
	if opts.MaxPendingPulls <= 0 {
		opts.MaxPendingPulls = DefaultMaxPendingPulls
	}
	if opts.PullSlots <= 0 {
		opts.PullSlots = DefaultPullSlots
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	results, err := readThroughCounter(opts.Registerer)
	if err != nil {
		return nil, err
	}
	vouched, err := peerFindCounter(opts.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	return &ReadThrough{
		local:   local,
		src:     src,
		peers:   peers,
		region:  selfRegion,
		opts:    opts,
		log:     opts.Logger.With("component", "read-through"),
		results: results,
		vouched: vouched,
		ctx:     ctx,
		stop:    stop,
		slots:   make(chan struct{}, opts.PullSlots),
		flights: map[storage.Key]*flight{},
	}, nil
}

// Close cancels every fetch in flight (readers waiting for one get the local answer) and
// returns once all have ended. Later misses are answered locally. It is idempotent.
func (rt *ReadThrough) Close() error {
	rt.mu.Lock()
	rt.closed = true
	rt.mu.Unlock()
	rt.stop()
	rt.wg.Wait()
	return nil
}

// Stat implements storage.Store.
func (rt *ReadThrough) Stat(ctx context.Context, key storage.Key) (storage.Info, error) {
	info, err := rt.local.Stat(ctx, key)
	if !errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrExpired) {
		return info, err // found, failed, or expired here (retention): never fetched back
	}
	if ferr := rt.fetch(ctx, key); ferr != nil {
		if ctx.Err() != nil {
			return storage.Info{}, fmt.Errorf("stat %s: %w", key, ctx.Err())
		}
		return info, err
	}
	return rt.local.Stat(ctx, key)
}

// Open implements storage.Store.
func (rt *ReadThrough) Open(ctx context.Context, key storage.Key, offset, length int64) (storage.Reader, error) {
	r, err := rt.local.Open(ctx, key, offset, length)
	if !errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrExpired) {
		return r, err // found, failed, or expired here (retention): never fetched back
	}
	if ferr := rt.fetch(ctx, key); ferr != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("open %s: %w", key, ctx.Err())
		}
		return nil, err
	}
	return rt.local.Open(ctx, key, offset, length)
}

// Put implements storage.Store (pass-through).
func (rt *ReadThrough) Put(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	return rt.local.Put(ctx, key, body, opts)
}

// FindMissing implements storage.Store for the read path's existence questions
// (FindMissingBlobs, the action-cache completeness check): it answers locally first and,
// only for the keys missing here, asks every live peer at once, in one batched FindObjects
// call each, all bounded by FindTimeout. A key some peer stores is reported present and
// pulled into the local store in the background (deduplicated with read-through flights,
// bounded by MaxPendingPulls and PullSlots), so the reads that follow are local. Peers that
// fail or do not answer in time are ignored: the local answer stands. No body is fetched
// while the caller waits. With nothing missing locally, or no peers, it is exactly the
// local call.
func (rt *ReadThrough) FindMissing(ctx context.Context, keys []storage.Key) ([]storage.Key, error) {
	missing, err := rt.local.FindMissing(ctx, keys)
	if err != nil || len(missing) == 0 {
		return missing, err
	}
	peers := rt.peers.Peers()
	if len(peers) == 0 {
		return missing, nil
	}
	ask := rt.notExpired(missing)
	if len(ask) == 0 {
		return missing, nil
	}
	holders := rt.askPeers(ctx, orderPeers(peers, rt.region), ask)
	if len(holders) == 0 {
		rt.vouched.WithLabelValues("missing").Add(float64(len(missing)))
		return missing, nil
	}
	still := missing[:0:0]
	for _, k := range missing {
		holder, ok := holders[k]
		if !ok {
			still = append(still, k)
			continue
		}
		rt.pull(ctx, k, holder, peers)
	}
	rt.vouched.WithLabelValues("present").Add(float64(len(missing) - len(still)))
	rt.vouched.WithLabelValues("missing").Add(float64(len(still)))
	return still, nil
}

// notExpired drops from missing the keys the local store expired by its retention rule: a
// peer's copy must not bring them back (SPEC §5), so peers are not asked about them and
// they stay missing. With a store without retention it is missing itself.
func (rt *ReadThrough) notExpired(missing []storage.Key) []storage.Key {
	er, ok := rt.local.(storage.ExpiryReporter)
	if !ok {
		return missing
	}
	expired := er.Expired(missing)
	out := make([]storage.Key, 0, len(missing))
	for i, e := range expired {
		if !e {
			out = append(out, missing[i])
		}
	}
	return out
}

// Refresh implements storage.Refresher by passing the keys to the local store: the objects
// the client was told exist are the local ones (those a peer vouched for are being pulled
// and arrive as fresh writes).
func (rt *ReadThrough) Refresh(keys []storage.Key) {
	if r, ok := rt.local.(storage.Refresher); ok {
		r.Refresh(keys)
	}
}

// askPeers asks every peer in parallel which of keys it stores, within FindTimeout, and
// returns, for each key some peer stores, the first such peer in peers' order (same region
// first).
func (rt *ReadThrough) askPeers(ctx context.Context, peers []Peer, keys []storage.Key) map[storage.Key]Peer {
	fctx, cancel := context.WithTimeout(ctx, rt.opts.FindTimeout)
	defer cancel()
	answers := make([][]storage.Info, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() {
			found, err := rt.src.FindObjects(fctx, p.Addr, keys)
			if err != nil {
				if ctx.Err() == nil {
					rt.log.Debug("peer did not answer an existence question; the local answer stands for it",
						"peer", p.Name, "keys", len(keys), "error", err)
					rt.vouched.WithLabelValues("peer_failed").Inc()
				}
				return
			}
			answers[i] = found
		})
	}
	wg.Wait() // every call ends by fctx's deadline: the calls honour their context
	asked := make(map[storage.Key]bool, len(keys))
	for _, k := range keys {
		asked[k] = true
	}
	holders := map[storage.Key]Peer{}
	for i, found := range answers {
		for _, info := range found {
			if _, ok := holders[info.Key]; !ok && asked[info.Key] {
				holders[info.Key] = peers[i]
			}
		}
	}
	return holders
}

// pull starts a background flight for key, asking holder first, unless one is already on
// its way, the queue is full or the decorator is closed.
func (rt *ReadThrough) pull(ctx context.Context, key storage.Key, holder Peer, peers []Peer) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		return
	}
	if _, ok := rt.flights[key]; ok {
		return
	}
	if rt.pending >= rt.opts.MaxPendingPulls {
		rt.vouched.WithLabelValues("pull_dropped").Inc()
		return
	}
	order := []Peer{holder}
	for _, p := range orderPeers(peers, rt.region) {
		if p.Addr != holder.Addr {
			order = append(order, p)
		}
	}
	rt.pending++
	rt.startLocked(ctx, key, order, true)
}

// startLocked registers and starts a flight; rt.mu is held and rt is not closed. The flight
// keeps ctx's values (trace, request id) but not its cancellation: it is cancelled by its
// waiters leaving (foreground flights) or by Close.
func (rt *ReadThrough) startLocked(ctx context.Context, key storage.Key, peers []Peer, background bool) *flight {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	unlink := context.AfterFunc(rt.ctx, cancel)
	f := &flight{done: make(chan struct{}), cancel: cancel, background: background}
	if background {
		f.urgent = make(chan struct{})
	}
	rt.flights[key] = f
	rt.wg.Go(func() {
		defer unlink()
		rt.fly(fctx, key, peers, f)
	})
	return f
}

// DeleteNamespace implements storage.Store (pass-through).
func (rt *ReadThrough) DeleteNamespace(ctx context.Context, tenant, namespace string, version storage.Version) error {
	return rt.local.DeleteNamespace(ctx, tenant, namespace, version)
}

// errNoCopy means no live peer could provide the object.
var errNoCopy = errors.New("no peer has a copy")

// fetch joins (or starts) the flight for key and waits for it or for ctx. nil means the
// object is now stored locally.
func (rt *ReadThrough) fetch(ctx context.Context, key storage.Key) error {
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		return errNoCopy
	}
	f, ok := rt.flights[key]
	if !ok {
		peers := orderPeers(rt.peers.Peers(), rt.region)
		if len(peers) == 0 {
			rt.mu.Unlock()
			return errNoCopy
		}
		// The fetch outlives the caller that started it: other readers may be waiting.
		f = rt.startLocked(ctx, key, peers, false)
	}
	f.waiters++
	if f.background {
		select {
		case <-f.urgent:
		default:
			close(f.urgent) // a reader waits: the pull skips the queue
		}
	}
	rt.mu.Unlock()

	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		rt.mu.Lock()
		f.waiters--
		if f.waiters == 0 && !f.background {
			// Nobody waits any more: stop the transfer, and let the next reader start afresh.
			f.cancel()
			if rt.flights[key] == f {
				delete(rt.flights, key)
			}
		}
		rt.mu.Unlock()
		return ctx.Err()
	}
}

// fly runs one flight: each peer in order until one copy is stored.
func (rt *ReadThrough) fly(ctx context.Context, key storage.Key, peers []Peer, f *flight) {
	var err error
	if f.background {
		err = rt.pullInSlot(ctx, key, peers, f)
	} else {
		err = rt.fetchAndStore(ctx, key, peers)
	}
	f.cancel()
	rt.mu.Lock()
	f.err = err
	if rt.flights[key] == f {
		delete(rt.flights, key)
	}
	if f.background {
		rt.pending--
	}
	close(f.done)
	rt.mu.Unlock()
}

// pullInSlot runs a background flight once a pull slot is free, or at once when a reader
// waits for it.
func (rt *ReadThrough) pullInSlot(ctx context.Context, key storage.Key, peers []Peer, f *flight) error {
	select {
	case rt.slots <- struct{}{}:
		defer func() { <-rt.slots }()
	case <-f.urgent:
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, err := rt.local.Stat(ctx, key); err == nil {
		return nil // replication or a reader got it here first
	}
	return rt.fetchAndStore(ctx, key, peers)
}

func (rt *ReadThrough) fetchAndStore(ctx context.Context, key storage.Key, peers []Peer) error {
	var lastErr error
	for _, p := range peers {
		pr, err := fetchFrom(ctx, rt.src, p, key, rt.opts.PeerTimeout)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // every reader left; nothing to count
			}
			if !errors.Is(err, storage.ErrNotFound) {
				lastErr = err
				rt.log.Debug("peer failed during read-through; trying the next", "peer", p.Name, "key", key.String(), "error", err)
			}
			continue
		}
		_, err = storeFetched(ctx, rt.local, key, pr, rt.opts.MaxKeyValueBytes)
		peerErr := pr.peerFailed()
		_ = pr.Close()
		if ctx.Err() != nil {
			return ctx.Err() // every reader left; nothing to count
		}
		switch classifyStore(err, peerErr) {
		case stored:
			rt.results.WithLabelValues("hit").Inc()
			return nil
		case stale:
			// A newer namespace clean here covers the peer's copy: it is deleted for us.
			rt.results.WithLabelValues("miss").Inc()
			return fmt.Errorf("read through %s: %w", key, err)
		case badObject, peerBroken:
			lastErr = err
			rt.log.Debug("peer's copy failed during read-through; trying the next", "peer", p.Name, "key", key.String(), "error", err)
		default:
			rt.results.WithLabelValues("error").Inc()
			rt.log.Warn("could not store an object read through from a peer", "peer", p.Name, "key", key.String(), "error", err)
			return fmt.Errorf("read through %s: store: %w", key, err)
		}
	}
	if lastErr != nil {
		rt.results.WithLabelValues("error").Inc()
		rt.log.Warn("read-through failed on every peer that was asked", "key", key.String(), "last_error", lastErr)
		return fmt.Errorf("read through %s: %w", key, lastErr)
	}
	rt.results.WithLabelValues("miss").Inc()
	return errNoCopy
}
