package outbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
)

// BatchSender is a Sender that also pushes many small objects in one call (*peer.Client
// does). The outbox uses it for objects of at most maxBatchItemBytes when Config.Sender has
// it.
type BatchSender interface {
	Sender
	// PushBatch sends objs (each a replicated write: the origin's Version, ExpectedSHA256,
	// ContentType and Size, and the whole Body) to the peer, which applies them in one
	// durable commit, and returns one result per object in order: no Err when delivered
	// (Created: applied, as PushObject reports it), else that object's own error, permanent
	// when it wraps storage.ErrInvalidKey, ErrDigestMismatch or ErrTooLarge. An error fails
	// the call as a whole (nothing known to be applied); one wrapping errors.ErrUnsupported
	// means the peer has no batched lane.
	PushBatch(ctx context.Context, addr string, objs []storage.PutItem) ([]storage.PutItemResult, error)
}

// The batched lane's bounds: the internal plane's PushBatch limits (cluster/peer
// MaxBatchItems, MaxBatchBytes, MaxBatchItemBytes; a test checks they agree).
const (
	maxBatchItems     = 512
	maxBatchBytes     = 8 << 20
	maxBatchItemBytes = 256 << 10
)

// Defaults of the batched lane.
const (
	// DefaultBatchesInFlight: PushBatch calls in flight per peer. One commits on the peer
	// while the next is read from the local store and sent; more only add batches that wait
	// for the peer's disk. Each holds at most maxBatchBytes of bodies.
	DefaultBatchesInFlight = 4
	// batchRetryAfter is how long a peer that answered UNIMPLEMENTED (an older version) gets
	// per-object pushes before the lane is tried again: a rolling upgrade brings it back.
	batchRetryAfter = 10 * time.Minute
)

// unit is one push in flight: a batch of small objects, or a single entry.
type unit struct {
	batch    bool
	items    []*item
	outcomes []outcome // per item, written by the unit before it is handed back
	failed   bool      // a transient failure: the worker backs off
	// unsupported: the peer has no PushBatch; the items go back to be pushed alone.
	unsupported bool
	attempt     int // the peer's consecutive failed attempts when the unit was launched
}

// outcome is what a unit did with one of its items.
type outcome uint8

const (
	unresolved outcome = iota // failed, interrupted or not attempted: retried
	resolved                  // delivered or dropped for good
	pushAlone                 // not for a batch (too large, or refused as part of one): push it alone
)

// deliveryWindow bounds the entries a worker holds (delivered or not) while it reads ahead:
// enough to fill every batch in flight. Entries are a few dozen bytes; bodies are read only
// by the unit that pushes them.
func (o *Outbox) deliveryWindow() int {
	return max(o.cfg.Batch, maxBatchItems*o.cfg.BatchesInFlight)
}

// batching reports whether p gets the batched lane now.
func (o *Outbox) batching(p *peer) bool {
	return o.batcher != nil && !o.now().Before(p.noBatchUntil)
}

// launchable counts the entries waiting for a unit.
func (o *Outbox) launchable(p *peer) int {
	n := 0
	for _, it := range p.work {
		if !it.done && !it.inFlight {
			n++
		}
	}
	return n
}

// units runs one deliver call's units and hands each back on done when it ends. Single
// pushes run on at most InFlight long-lived goroutines that take them in turn, not one
// goroutine per push: a push goes deep into Pebble and gRPC, and a fresh goroutine grows its
// stack on every push (that copying was 13% of a per-object 1 KiB drain's CPU). A batch runs
// on a goroutine of its own, which its hundreds of objects amortise.
type units struct {
	done    chan *unit
	singles chan *unit
	running map[bool]int // units launched and not yet settled, by batch
	pushers int          // single-push goroutines started
	wg      sync.WaitGroup
}

func (o *Outbox) newUnits() *units {
	return &units{
		done:    make(chan *unit, o.cfg.InFlight+o.cfg.BatchesInFlight),
		singles: make(chan *unit, o.cfg.InFlight),
		running: map[bool]int{},
	}
}

// close stops the single-push goroutines once every unit has been settled.
func (us *units) close() {
	close(us.singles)
	us.wg.Wait()
}

// launch starts units for the waiting entries of p.work, in sequence order, as far as the
// slots allow: small object entries in batches (at most BatchesInFlight), the rest alone (at
// most InFlight).
func (o *Outbox) launch(ctx context.Context, p *peer, us *units) {
	o.mu.Lock()
	addr := p.addr
	o.mu.Unlock()
	batching := o.batching(p)
	var batch []*item
	flush := func() {
		if len(batch) == 0 {
			return
		}
		u := &unit{batch: true, items: batch}
		batch = nil
		us.running[true]++
		attempt := p.attempt
		us.wg.Go(func() { // owned: deliver receives every unit it launched before it returns
			o.pushBatch(ctx, p, addr, u, attempt)
			us.done <- u
		})
	}
	for _, it := range p.work {
		if it.done || it.inFlight {
			continue
		}
		if batching && it.bad == nil && it.entry.Op == OpObject && !it.alone {
			if us.running[true] >= o.cfg.BatchesInFlight {
				continue
			}
			it.inFlight = true
			if batch = append(batch, it); len(batch) == maxBatchItems {
				flush()
			}
			continue
		}
		if us.running[false] >= o.cfg.InFlight {
			continue
		}
		it.inFlight = true
		us.running[false]++
		if us.pushers < us.running[false] {
			us.pushers++
			us.wg.Go(func() { // owned: ends when close closes singles
				for u := range us.singles {
					ok, failed := o.push(ctx, p, u.items[0], addr, u.attempt)
					if ok {
						u.outcomes[0] = resolved
					}
					u.failed = failed
					us.done <- u
				}
			})
		}
		// Never blocks: at most InFlight singles are unsettled, and singles holds as many.
		us.singles <- &unit{items: []*item{it}, outcomes: make([]outcome, 1), attempt: p.attempt}
	}
	flush()
}

// settle applies a finished unit to the page: resolved entries are done, entries a batch
// handed back wait for their next unit. It reports how many entries were resolved and
// whether the unit failed transiently.
func (o *Outbox) settle(p *peer, u *unit) (n int, failed bool) {
	if u.unsupported && o.now().After(p.noBatchUntil) {
		p.noBatchUntil = o.now().Add(batchRetryAfter)
		o.metrics.batchUnsupported.WithLabelValues(p.name).Inc()
		o.log.Info("peer has no batched replication lane (an older version); pushing objects one by one",
			"peer", p.name, "retry_after", batchRetryAfter)
	}
	for i, it := range u.items {
		it.inFlight = false
		switch u.outcomes[i] {
		case resolved:
			it.done = true
			p.depth.Add(-1)
			n++
		case pushAlone:
			it.alone = true
		}
	}
	return n, u.failed
}

// pushBatch pushes u's object entries in one PushBatch: each entry's current local copy is
// read whole (a gone or superseded object is dropped as pushObject drops it), and what does
// not fit a batch is handed back to be pushed alone (larger than maxBatchItemBytes) or in the
// next batch (beyond maxBatchBytes). It fills u.outcomes and u.failed.
func (o *Outbox) pushBatch(ctx context.Context, p *peer, addr string, u *unit, attempt int) {
	u.outcomes = make([]outcome, len(u.items))
	var (
		objs  = make([]storage.PutItem, 0, len(u.items))
		of    = make([]int, 0, len(u.items)) // objs[j] is u.items[of[j]]
		spans = make([]trace.Span, 0, len(u.items))
		links = make([]trace.Link, 0, len(u.items))
		first context.Context // the first carried item's push span: the batch span's parent
		total int64
	)
	for i, it := range u.items {
		body, info, out, err := o.readSmall(ctx, it.entry, maxBatchBytes-total)
		switch {
		case err != nil:
			_, span := o.startPush(ctx, p, it, attempt)
			ok, failed := o.conclude(ctx, span, p, it, addr, attempt, "", err)
			u.failed = u.failed || failed
			if ok {
				u.outcomes[i] = resolved
			}
			continue
		case out == resolved:
			_, span := o.startPush(ctx, p, it, attempt)
			o.conclude(ctx, span, p, it, addr, attempt, resultDropped, nil)
			u.outcomes[i] = resolved
			continue
		case out != 0 || body == nil:
			u.outcomes[i] = out
			continue
		}
		total += info.Size
		ictx, span := o.startPush(ctx, p, it, attempt)
		if first == nil {
			first = ictx
		}
		spans = append(spans, span)
		links = append(links, trace.Link{SpanContext: span.SpanContext()})
		of = append(of, i)
		objs = append(objs, storage.PutItem{Key: info.Key, Body: body, Opts: storage.PutOptions{
			ContentType: info.ContentType, Attributes: info.Attributes, Size: info.Size, Limit: info.Size, ExpectedSHA256: &info.SHA256,
			Version: info.Version,
		}})
	}
	if len(objs) == 0 {
		return
	}
	// Items the call gives no result for end their spans with the call's outcome.
	endAll := func(result string, err error) {
		for _, span := range spans {
			endPush(span, result, err)
		}
	}
	bctx, batchSpan := o.startBatch(first, p, links)
	pctx, cancel := context.WithTimeout(bctx, o.cfg.PushTimeout)
	start := time.Now()
	results, err := o.batcher.PushBatch(pctx, addr, objs)
	cancel()
	endBatch(batchSpan, err)
	o.metrics.duration.WithLabelValues(p.name).Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		o.metrics.batchItems.WithLabelValues(p.name).Observe(float64(len(objs)))
		for j, r := range results {
			it := u.items[of[j]]
			result := resultApplied
			if !r.Created {
				result = resultSkipped
			}
			ok, failed := o.conclude(ctx, spans[j], p, it, addr, attempt, result, r.Err)
			u.failed = u.failed || failed
			if ok {
				u.outcomes[of[j]] = resolved
			}
		}
	case errors.Is(err, errors.ErrUnsupported):
		u.unsupported = true // every item goes back, to be pushed alone
		endAll("", err)
		for _, i := range of {
			u.outcomes[i] = pushAlone
		}
	case errors.Is(err, storage.ErrInvalidKey), errors.Is(err, storage.ErrDigestMismatch),
		errors.Is(err, storage.ErrTooLarge):
		// The peer refused the batch as a whole (its bounds differ, or a bug): each item is
		// judged alone through PushObject instead of being dropped with the others.
		o.log.Warn("peer refused a replication batch; pushing its objects one by one", "peer", p.name, "items", len(objs), "error", err)
		endAll("", err)
		for _, i := range of {
			u.outcomes[i] = pushAlone
		}
	case ctx.Err() != nil:
		// The worker is stopping: neither a result nor a failure of the peer.
		endAll(resultInterrupted, err)
	default:
		u.failed = true
		level := slog.LevelWarn
		if attempt > 0 {
			level = slog.LevelDebug // the first failure of a run is enough at warn
		}
		o.log.Log(ctx, level, "replication batch failed; backing off", "peer", p.name, "addr", addr,
			"items", len(objs), "attempt", attempt+1, "error", err)
		endAll(resultError, err)
		o.metrics.pushes.WithLabelValues(p.name, OpObject.String(), resultError).Add(float64(len(objs)))
	}
}

// readSmall reads the current local copy of an object entry for a batch, at most room bytes.
// out is resolved (with no error) when the entry is to be dropped, pushAlone when the object
// is too large for a batch, unresolved (no body, no error) when it does not fit in room;
// otherwise body and info are the copy. A local record found corrupt is dropped (the store
// reports it for repair).
func (o *Outbox) readSmall(ctx context.Context, e Entry, room int64) (body []byte, info storage.Info, out outcome, err error) {
	r, err := o.openCurrent(ctx, e)
	if err != nil {
		return nil, info, 0, err
	}
	if r == nil {
		return nil, info, resolved, nil
	}
	defer func() { _ = r.Close() }()
	info = r.Info()
	switch {
	case info.Size > maxBatchItemBytes:
		return nil, info, pushAlone, nil
	case info.Size > room:
		return nil, info, unresolved, nil
	}
	body = make([]byte, info.Size)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, storage.ErrCorrupt) {
			o.log.Warn("local record corrupt while replicating; dropping the entry", "key", e.Key.String(), "error", err)
			return nil, info, resolved, nil
		}
		return nil, info, 0, fmt.Errorf("read local %s: %w", e.Key, err)
	}
	return body, info, 0, nil
}
