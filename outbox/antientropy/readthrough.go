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
	Logger           *slog.Logger          // nil: discarded
	Registerer       prometheus.Registerer // nil: a private registry
}

// readThrough is the decorator; see NewReadThrough.
type readThrough struct {
	local   storage.Store
	src     Source
	peers   Peers
	region  string
	opts    ReadThroughOptions
	log     *slog.Logger
	results *prometheus.CounterVec

	mu      sync.Mutex
	flights map[storage.Key]*flight
}

// flight is one shared fetch of a key from peers into the local store.
type flight struct {
	done    chan struct{} // closed when err is set
	err     error         // nil: the object is now stored locally
	waiters int
	cancel  context.CancelFunc
}

var _ storage.Store = (*readThrough)(nil)

// NewReadThrough decorates local so that a read missing locally asks the live peers (same
// region first, then the others, each given PeerTimeout of silence), stores the first copy
// found with the origin's version and digest, and serves it from local. Concurrent misses of
// one key share one fetch, which runs until the object is stored or every waiting reader has
// gone. Without peers it behaves exactly like local. A peer or storage failure while reading
// through is logged and the read answers what local answered (not found): a miss is cheaper
// for a build than a failed request. Put, FindMissing and DeleteNamespace pass through.
// local must be the raw store, not another decorator that replicates reads. The only error is
// a registry that holds a different metric under kura_read_through_total.
func NewReadThrough(local storage.Store, src Source, peers Peers, selfRegion string, opts ReadThroughOptions) (storage.Store, error) {
	if opts.PeerTimeout <= 0 {
		opts.PeerTimeout = DefaultReadThroughTimeout
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
	return &readThrough{
		local:   local,
		src:     src,
		peers:   peers,
		region:  selfRegion,
		opts:    opts,
		log:     opts.Logger.With("component", "read-through"),
		results: results,
		flights: map[storage.Key]*flight{},
	}, nil
}

// Stat implements storage.Store.
func (rt *readThrough) Stat(ctx context.Context, key storage.Key) (storage.Info, error) {
	info, err := rt.local.Stat(ctx, key)
	if !errors.Is(err, storage.ErrNotFound) {
		return info, err
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
func (rt *readThrough) Open(ctx context.Context, key storage.Key, offset, length int64) (storage.Reader, error) {
	r, err := rt.local.Open(ctx, key, offset, length)
	if !errors.Is(err, storage.ErrNotFound) {
		return r, err
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
func (rt *readThrough) Put(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	return rt.local.Put(ctx, key, body, opts)
}

// FindMissing implements storage.Store (pass-through: existence checks never read through).
func (rt *readThrough) FindMissing(ctx context.Context, keys []storage.Key) ([]storage.Key, error) {
	return rt.local.FindMissing(ctx, keys)
}

// DeleteNamespace implements storage.Store (pass-through).
func (rt *readThrough) DeleteNamespace(ctx context.Context, tenant, namespace string, version storage.Version) error {
	return rt.local.DeleteNamespace(ctx, tenant, namespace, version)
}

// errNoCopy means no live peer could provide the object.
var errNoCopy = errors.New("no peer has a copy")

// fetch joins (or starts) the flight for key and waits for it or for ctx. nil means the
// object is now stored locally.
func (rt *readThrough) fetch(ctx context.Context, key storage.Key) error {
	rt.mu.Lock()
	f, ok := rt.flights[key]
	if !ok {
		peers := orderPeers(rt.peers.Peers(), rt.region)
		if len(peers) == 0 {
			rt.mu.Unlock()
			return errNoCopy
		}
		// The fetch outlives the caller that started it: other readers may be waiting.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		rt.flights[key] = f
		go rt.fly(fctx, key, peers, f)
	}
	f.waiters++
	rt.mu.Unlock()

	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		rt.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
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
func (rt *readThrough) fly(ctx context.Context, key storage.Key, peers []Peer, f *flight) {
	err := rt.fetchAndStore(ctx, key, peers)
	f.cancel()
	rt.mu.Lock()
	f.err = err
	if rt.flights[key] == f {
		delete(rt.flights, key)
	}
	close(f.done)
	rt.mu.Unlock()
}

func (rt *readThrough) fetchAndStore(ctx context.Context, key storage.Key, peers []Peer) error {
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
