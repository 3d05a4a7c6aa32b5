package antientropy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/kuracache/kura/storage"
)

// errStalled is the cause recorded when a peer stops making progress.
var errStalled = errors.New("peer made no progress")

// orderPeers returns peers with those of region first, keeping the given order within each
// group: same-region transfers are cheaper and faster.
func orderPeers(peers []Peer, region string) []Peer {
	out := make([]Peer, 0, len(peers))
	for _, p := range peers {
		if p.Region == region {
			out = append(out, p)
		}
	}
	for _, p := range peers {
		if p.Region != region {
			out = append(out, p)
		}
	}
	return out
}

// withPeerTimeout bounds one unary call to a peer.
func withPeerTimeout(ctx context.Context, p Peer, timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, timeout, fmt.Errorf("peer %s (%s): no answer within %v: %w", p.Name, p.Addr, timeout, errStalled))
}

// explain replaces a bare cancellation error with the cause recorded on ctx (a stall), so
// logs say what happened rather than "context canceled".
func explain(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && errors.Is(cause, errStalled) {
		return fmt.Errorf("%w (%v)", cause, err)
	}
	return err
}

// peerReader is a fetched body guarded by an idle watchdog: every read that makes progress
// re-arms it, and a peer silent for longer than the timeout has its stream cancelled. It
// remembers whether the peer side failed, to tell a bad peer from a failing local store.
type peerReader struct {
	r       storage.Reader
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timer   *time.Timer
	timeout time.Duration

	mu      sync.Mutex
	readErr error // first non-EOF error from the peer stream
}

// fetcher is the part of Source and PeerSource that fetchFrom uses.
type fetcher interface {
	FetchObject(ctx context.Context, addr string, key storage.Key) (storage.Reader, error)
}

// fetchFrom asks one peer for key. The returned reader must be closed.
func fetchFrom(ctx context.Context, src fetcher, p Peer, key storage.Key, timeout time.Duration) (*peerReader, error) {
	fctx, cancel := context.WithCancelCause(ctx)
	stall := fmt.Errorf("peer %s (%s): no data for %v while fetching %s: %w", p.Name, p.Addr, timeout, key, errStalled)
	timer := time.AfterFunc(timeout, func() { cancel(stall) })
	r, err := src.FetchObject(fctx, p.Addr, key)
	if err != nil {
		timer.Stop()
		err = explain(fctx, err)
		cancel(nil)
		return nil, fmt.Errorf("fetch %s from %s: %w", key, p.Name, err)
	}
	if info := r.Info(); info.Key != key {
		timer.Stop()
		cancel(nil)
		_ = r.Close()
		return nil, fmt.Errorf("fetch %s from %s: %w: peer answered with %s", key, p.Name, storage.ErrDigestMismatch, info.Key)
	}
	timer.Reset(timeout)
	return &peerReader{r: r, ctx: fctx, cancel: cancel, timer: timer, timeout: timeout}, nil
}

func (pr *peerReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	if n > 0 {
		pr.timer.Reset(pr.timeout)
	}
	if err != nil && err != io.EOF {
		err = explain(pr.ctx, err)
		pr.mu.Lock()
		if pr.readErr == nil {
			pr.readErr = err
		}
		pr.mu.Unlock()
	}
	return n, err
}

func (pr *peerReader) Info() storage.Info { return pr.r.Info() }

// peerFailed reports the error the peer stream returned, if any.
func (pr *peerReader) peerFailed() error {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.readErr
}

func (pr *peerReader) Close() error {
	pr.timer.Stop()
	err := pr.r.Close()
	pr.cancel(nil)
	return err
}

// storeFetched writes a fetched object into local with the origin's version and digest, so
// every node orders it the same way and a damaged transfer stores nothing.
func storeFetched(ctx context.Context, local storage.Store, key storage.Key, r *peerReader, maxKeyValue int64) (storage.PutResult, error) {
	info := r.Info()
	sum := info.SHA256
	opts := storage.PutOptions{
		ContentType:    info.ContentType,
		Attributes:     info.Attributes,
		Size:           info.Size,
		ExpectedSHA256: &sum,
		Version:        info.Version,
	}
	if key.Kind == storage.KindKeyValue {
		opts.Limit = maxKeyValue
	}
	return local.Put(ctx, key, r, opts)
}

// storeOutcome classifies what storing a fetched object did.
type storeOutcome int

const (
	stored      storeOutcome = iota // created, replaced, or kept (storage.Replaces said ours stays)
	stale                           // a newer tombstone or version is here: nothing to do
	badObject                       // this copy is bad (digest, size, limit): skip it
	peerBroken                      // the peer's stream failed: the peer is the problem
	localBroken                     // the local store failed: other peers will not help
)

// classifyStore sorts the error of storeFetched, given what the peer stream reported.
func classifyStore(err, peerErr error) storeOutcome {
	switch {
	case err == nil:
		return stored
	case errors.Is(err, storage.ErrStale):
		return stale
	case peerErr != nil && objectFault(peerErr):
		return badObject
	case peerErr != nil:
		return peerBroken
	case objectFault(err):
		return badObject
	default:
		return localBroken
	}
}

// objectFault reports errors that condemn one object (a bad body, a refused key) rather than
// the peer or the local store: the caller moves on to the next object or peer.
func objectFault(err error) bool {
	return errors.Is(err, storage.ErrDigestMismatch) || errors.Is(err, storage.ErrCorrupt) ||
		errors.Is(err, storage.ErrTooLarge) || errors.Is(err, storage.ErrInvalidKey)
}
