package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// holeGrace is how long a sequence number may stay invisible before it is taken for an
// abandoned write and no longer counted in the depth. Enqueue runs immediately before the
// write's synced commit, so a number not visible a minute later belongs to a batch whose hook
// or commit failed.
const holeGrace = time.Minute

// lateWatch is how long an expired hole is still probed (once per holeGrace), in case its
// batch was only extraordinarily slow. Later than that, the entry is found at the next start.
const lateWatch = time.Hour

// maxHoleProbeDelay caps the spacing of probes of a young hole, which grows with its age: a
// batch still committing is found within milliseconds, an abandoned one costs a few probes.
const maxHoleProbeDelay = 5 * time.Second

// largeObjectBytes: a push of a larger body takes one of the peer's LargeInFlight slots as
// well as its InFlight slot.
const largeObjectBytes = 1 << 20

// maxHoles bounds the in-memory hole set. Holes come from batches committing concurrently, so
// there are about as many as concurrent writers; beyond the bound a late entry is found at the
// next start.
const maxHoles = 1 << 16

// prefixDeleteEvery: once the resolved prefix of a queue has grown by this many numbers, it is
// also covered by one range deletion, so that scans from the start of the queue (at start-up)
// and compactions skip the per-entry tombstones in bulk. Acknowledgements themselves are point
// deletions: range deletions that all start at the queue's first key overlap, and Pebble's
// memtable fragments N overlapping ranges into O(N²) pieces, so they must stay rare.
const prefixDeleteEvery = 1 << 16

// peer is one replication target and its queue.
type peer struct {
	name  string
	wake  chan struct{}
	large chan struct{} // LargeInFlight slots, set by the worker before its first push
	depth atomic.Int64

	// Guarded by Outbox.mu.
	addr       string
	present    bool
	goneSince  time.Time
	assigned   uint64 // last sequence number handed out (or seen)
	firstLocal uint64 // first number this process hands out: lower gaps are past deletions
	oldest     time.Time

	// Owned by the peer's worker. The supervisor runs one worker per peer at a time, so a
	// peer that departs and returns resumes exactly where its previous worker stopped.
	cursor        uint64           // highest number read or recorded as a hole
	rangedThrough uint64           // the last prefix range deletion reached this number
	holes         map[uint64]*hole // numbers <= cursor not visible yet
	work          []*item          // the page being delivered, in sequence order
	attempt       int              // consecutive failed attempts: the backoff exponent
	holesFull     bool             // maxHoles was hit (logged once)
	lastBad       uint64           // the damaged entry found last, to notice one that cannot be deleted
	noBatchUntil  time.Time        // the peer answered UNIMPLEMENTED to PushBatch: push alone until then
	// ahead holds damaged entries dropped before the cursor reached them, so the gap they
	// leave is not taken for a hole.
	ahead map[uint64]struct{}
}

// hole is a number handed out but not visible when the scan passed it.
type hole struct {
	since   time.Time
	next    time.Time // next probe
	expired bool      // older than holeGrace: no longer counted in the depth
}

func newPeer(name string) *peer {
	return &peer{name: name, wake: make(chan struct{}, 1), holes: map[uint64]*hole{}}
}

func (p *peer) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// item is one entry of the page being delivered.
type item struct {
	seq   uint64
	entry Entry
	bad   error // the entry could not be decoded: dropped without a push
	// Owned by the worker goroutine (units report their outcomes to it; they never write
	// these).
	done     bool // delivered or dropped
	inFlight bool // part of a unit being pushed
	alone    bool // pushed with PushObject even on the batched lane (too large, or refused as part of a batch)
}

var errDamaged = errors.New("damaged outbox entry")

func newItem(e meta.OutboxEntry) *item {
	ent, err := DecodeEntry(e.Value)
	return &item{seq: e.Seq, entry: ent, bad: err}
}

// has reports whether the page already holds seq (damaged entries can be met twice in a fill).
func (p *peer) has(seq uint64) bool {
	return slices.ContainsFunc(p.work, func(it *item) bool { return it.seq == seq })
}

// resolved is the highest number through which every entry is resolved, so that
// DeleteOutboxThrough may cover the prefix: below the lowest hole and the lowest undelivered
// entry of the page.
func (p *peer) resolved() uint64 {
	s := p.cursor
	for h := range p.holes {
		s = min(s, h-1)
	}
	for _, it := range p.work {
		if !it.done {
			s = min(s, it.seq-1)
		}
	}
	return s
}

// work is one peer's worker loop: read a page, deliver it with bounded concurrency and
// per-peer backoff, delete what was resolved, repeat; wait for Notify or idlePoll when idle.
func (o *Outbox) work(ctx context.Context, p *peer) {
	defer func() {
		// Keep what this worker resolved: a departed peer that returns, or the next start,
		// must not receive it again.
		if err := o.commitDeletes(p); err != nil {
			o.log.Error("delete delivered outbox entries", "peer", p.name, "error", err)
		}
	}()
	if p.large == nil {
		// One worker per peer at a time, and its pushes run on goroutines it starts.
		p.large = make(chan struct{}, o.cfg.LargeInFlight)
	}
	idle := time.NewTimer(idlePoll)
	defer idle.Stop()
	for ctx.Err() == nil {
		busy := false
		if !o.paused.Load() {
			var err error
			busy, err = o.round(ctx, p)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				o.log.Error("replication queue", "peer", p.name, "error", err)
				if !sleep(ctx, o.nextBackoff(p)) {
					return
				}
				continue
			}
		}
		if busy {
			continue
		}
		if o.onIdle != nil {
			o.onIdle(p.name)
		}
		idle.Reset(idlePoll)
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-idle.C:
		}
		idle.Stop()
	}
}

// round delivers one page. busy reports that there was something to deliver.
func (o *Outbox) round(ctx context.Context, p *peer) (busy bool, err error) {
	if len(p.work) == 0 {
		if err := o.fill(ctx, p); err != nil {
			return false, err
		}
	}
	if len(p.work) > 0 {
		busy = true
		if err := o.deliver(ctx, p); err != nil {
			return busy, errors.Join(err, o.commitDeletes(p))
		}
	}
	return busy, o.commitDeletes(p)
}

// fill reads the next page into p.work: entries of holes that became visible, then the entries
// after the cursor. It never reads more than Batch entries.
func (o *Outbox) fill(ctx context.Context, p *peer) error {
	now := o.now()
	if err := o.probeHoles(ctx, p, now); err != nil {
		return err
	}
	if room := min(o.cfg.Batch, o.deliveryWindow()-len(p.work)); room > 0 {
		page, bad, err := o.scan(ctx, p.name, p.cursor, room)
		if err != nil {
			return fmt.Errorf("read queue of %s after %d: %w", p.name, p.cursor, err)
		}
		o.mu.Lock()
		next := p.cursor + 1
		for _, e := range page {
			o.noteGapLocked(p, next, e.Seq, now)
			o.noteReadLocked(p, e.Seq)
			p.work = append(p.work, newItem(e))
			next = e.Seq + 1
		}
		switch {
		case bad != 0:
			// Dropped (and deleted) with this page. The cursor stays before it: entries between
			// the page and bad may be unread, and the next scan reads them.
			o.noteReadLocked(p, bad)
			if bad == p.lastBad {
				next = bad + 1 // its deletion did not take: step over it
			} else if !p.has(bad) {
				p.work = append(p.work, &item{seq: bad, bad: errDamaged})
			}
			p.lastBad = bad
		case len(page) < room && p.assigned >= next:
			// The visible end: numbers handed out but not visible belong to batches still
			// committing (or abandoned). Probe them as holes instead of rescanning.
			o.noteGapLocked(p, next, p.assigned+1, now)
			next = p.assigned + 1
		}
		p.cursor = max(p.cursor, next-1)
		o.mu.Unlock()
		for seq := range p.ahead {
			if seq <= p.cursor {
				delete(p.ahead, seq)
			}
		}
	}
	slices.SortFunc(p.work, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
	var first time.Time
	for _, it := range p.work {
		if it.bad == nil && (first.IsZero() || it.entry.EnqueuedAt.Before(first)) {
			first = it.entry.EnqueuedAt
		}
	}
	if !first.IsZero() {
		o.mu.Lock()
		p.oldest = first
		o.mu.Unlock()
	}
	return nil
}

// noteGapLocked records as holes the numbers in [from, to) that a scan stepped over. Only
// numbers this process handed out can still appear (their batch is committing); lower ones
// were deleted before a restart, higher ones were never handed out.
func (o *Outbox) noteGapLocked(p *peer, from, to uint64, now time.Time) {
	for g := max(from, p.firstLocal); g < to && g <= p.assigned; g++ {
		if _, dropped := p.ahead[g]; dropped {
			continue
		}
		if len(p.holes) >= maxHoles {
			if !p.holesFull {
				p.holesFull = true
				o.log.Warn("outbox hole set full; late entries will be found at the next start", "peer", p.name)
			}
			return
		}
		p.holes[g] = &hole{since: now, next: now}
	}
}

// noteReadLocked accounts for an entry above every number handed out: it was queued before the
// peer was last dropped and its batch committed afterwards. It is counted now, and the counter
// moves past it so that its number is never handed out again.
func (o *Outbox) noteReadLocked(p *peer, seq uint64) {
	if seq > p.assigned {
		p.depth.Add(1)
		p.assigned = seq
	}
}

// probeHoles seeks the holes due for a probe, lowest first, and adds those that became
// visible to the page. A hole older than holeGrace stops counting in the depth (its batch was
// abandoned) but is still probed once per holeGrace until lateWatch, then forgotten.
func (o *Outbox) probeHoles(ctx context.Context, p *peer, now time.Time) error {
	if len(p.holes) == 0 {
		return nil
	}
	seqs := make([]uint64, 0, len(p.holes))
	for seq, h := range p.holes {
		age := now.Sub(h.since)
		if !h.expired && age >= holeGrace {
			h.expired = true
			h.next = now
			p.depth.Add(-1)
		}
		if age >= lateWatch {
			delete(p.holes, seq)
			o.log.Info("forgetting an outbox number that never appeared", "peer", p.name, "seq", seq)
			continue
		}
		if !now.Before(h.next) {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	for _, seq := range seqs {
		if len(p.work) >= o.deliveryWindow() {
			break
		}
		h := p.holes[seq]
		page, bad, err := o.scan(ctx, p.name, seq-1, 1)
		if err != nil {
			return fmt.Errorf("probe queue of %s at %d: %w", p.name, seq, err)
		}
		switch {
		case bad == seq:
			p.work = append(p.work, &item{seq: seq, bad: errDamaged})
		case len(page) == 1 && page[0].Seq == seq:
			p.work = append(p.work, newItem(page[0]))
		case bad != 0:
			// A damaged entry after the hole stands in the way: drop it and probe again next
			// round, until nothing damaged is left in front of the next live entry.
			if !p.has(bad) {
				p.work = append(p.work, &item{seq: bad, bad: errDamaged})
			}
			continue
		default:
			// Not there yet. A probe steps over the tombstones of entries delivered since the
			// hole opened, so probes of a hole that stays empty grow sparse.
			if h.expired {
				h.next = now.Add(holeGrace)
			} else {
				h.next = now.Add(min(now.Sub(h.since)/2, maxHoleProbeDelay))
			}
			continue
		}
		if h.expired {
			p.depth.Add(1) // uncounted when it expired
			o.log.Info("found a late outbox entry", "peer", p.name, "seq", seq, "late_by", now.Sub(h.since).Round(time.Second))
		}
		delete(p.holes, seq)
	}
	return nil
}

// deliver pushes p.work until every entry is resolved and no more are visible, the worker
// stops or dispatch pauses. While pushes are in flight it keeps reading pages (up to
// deliveryWindow entries held), so the next batch is ready when a slot frees up. A transient
// failure stops new launches; once the pushes in flight have ended, the worker persists what
// was resolved, backs off (this peer only) and retries the unresolved entries.
func (o *Outbox) deliver(ctx context.Context, p *peer) error {
	us := o.newUnits()
	defer us.close()
	var (
		failed   bool // a unit failed transiently: launch nothing until they end
		drained  bool // the last read found nothing new
		resolved int  // entries resolved since the last deletion commit
		fillErr  error
	)
	for {
		stopping := ctx.Err() != nil || o.paused.Load()
		if !failed && !stopping && fillErr == nil {
			// Read pages until a full batch waits (a page is smaller than a batch), the window
			// is full or nothing new is visible.
			for !drained && fillErr == nil && o.launchable(p) < maxBatchItems && len(p.work) < o.deliveryWindow() && o.readyToRead(p) {
				before := len(p.work)
				if fillErr = o.fill(ctx, p); fillErr == nil {
					drained = len(p.work) == before
				}
			}
			o.launch(ctx, p, us)
		}
		inFlight := us.running[false] + us.running[true]
		if inFlight == 0 {
			switch {
			case fillErr != nil:
				return fillErr
			case failed && !stopping:
				if resolved > 0 {
					p.attempt = 0 // the peer answers: restart the backoff from its floor
				}
				// Persist the progress before waiting, so a restart during a long outage does
				// not deliver again what already went through.
				if err := o.commitDeletes(p); err != nil {
					o.log.Error("delete delivered outbox entries", "peer", p.name, "error", err)
				}
				resolved = 0
				if !sleep(ctx, o.nextBackoff(p)) {
					return nil
				}
				failed, drained = false, false
				continue
			case o.launchable(p) > 0 && !stopping:
				continue // entries a batch handed back (too large, or the peer lacks batches)
			}
			return nil
		}
		var wake <-chan struct{}
		if drained && !failed {
			wake = p.wake // a commit while pushes are in flight: read it now, not after them
		}
		select {
		case u := <-us.done:
			us.running[u.batch]--
			n, f := o.settle(p, u)
			resolved += n
			if f {
				failed = true
			} else if n > 0 && !failed {
				p.attempt = 0
			}
			drained = false
		case <-wake:
			drained = false
		}
		if resolved >= o.cfg.Batch {
			// Delete as the window moves, not once per window: a crash then repeats at most a
			// page of deliveries.
			if err := o.commitDeletes(p); err != nil {
				o.log.Error("delete delivered outbox entries", "peer", p.name, "error", err)
			}
			resolved = 0
		}
	}
}

// readyToRead reports whether the worker may read ahead now. A damaged entry found by a
// scan stops the scan in front of it (the cursor stays before it) until the entry is
// deleted, so the next scan waits for its deletion, committed here once it is resolved: a
// scan that met it again would take it for one whose deletion did not take.
func (o *Outbox) readyToRead(p *peer) bool {
	damagedDone := false
	for _, it := range p.work {
		if it.bad != nil {
			if !it.done {
				return false
			}
			damagedDone = true
		}
	}
	if damagedDone {
		if err := o.commitDeletes(p); err != nil {
			o.log.Error("delete delivered outbox entries", "peer", p.name, "error", err)
			return false
		}
	}
	return true
}

func (o *Outbox) nextBackoff(p *peer) time.Duration {
	p.attempt++
	d := backoffDelay(p.attempt, o.cfg.MinBackoff, o.cfg.MaxBackoff, o.rnd.Float64())
	if o.onBackoff != nil {
		o.onBackoff(p.name, p.attempt, d)
	}
	return d
}

// push delivers one entry on its own: a tombstone, a damaged entry, an object too large for a
// batch, or any entry for a peer without the batched lane. It reports whether the entry is
// resolved (delivered or dropped for good) and whether it failed transiently.
func (o *Outbox) push(ctx context.Context, p *peer, it *item, addr string, attempt int) (resolved, failed bool) {
	if it.bad != nil {
		o.log.Error("dropping a damaged outbox entry", "peer", p.name, "seq", it.seq, "error", it.bad)
		o.count(p, "unknown", resultDropped)
		return true, false
	}
	ctx, span := o.startPush(ctx, p, it, attempt)
	var (
		result string
		err    error
	)
	switch it.entry.Op {
	case OpTombstone:
		pctx, cancel := context.WithTimeout(ctx, o.cfg.PushTimeout)
		start := time.Now()
		err = o.cfg.Sender.PushTombstone(pctx, addr, it.entry.Tombstone)
		cancel()
		o.metrics.duration.WithLabelValues(p.name).Observe(time.Since(start).Seconds())
		result = resultApplied
	default:
		result, err = o.pushObject(ctx, p, addr, it.entry)
	}
	return o.conclude(ctx, span, p, it, addr, attempt, result, err)
}

// conclude classifies one entry's push, counts it, ends its span and reports whether the entry
// is resolved and whether it failed transiently (a failure of the peer, to back off from).
func (o *Outbox) conclude(ctx context.Context, span trace.Span, p *peer, it *item, addr string, attempt int, result string, err error) (resolved, failed bool) {
	defer func() { endPush(span, result, err) }()
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrStale):
		result = resultSkipped
	case errors.Is(err, storage.ErrInvalidKey), errors.Is(err, storage.ErrDigestMismatch),
		errors.Is(err, storage.ErrTooLarge):
		// Retrying cannot help (a peer with a lower keyvalue limit refuses the same body
		// forever), and a retried entry would block the peer's whole queue.
		o.log.WarnContext(ctx, "peer refused a replicated write; dropping it", "peer", p.name, "seq", it.seq,
			"entry", it.entry.describe(), "error", err)
		result = resultDropped
	case ctx.Err() != nil:
		result = resultInterrupted
		return false, false // the worker is stopping: neither a result nor a failure of the peer
	default:
		result = resultError
		level := slog.LevelWarn
		if attempt > 0 {
			level = slog.LevelDebug // the first failure of a run is enough at warn
		}
		o.log.Log(ctx, level, "replication push failed; backing off", "peer", p.name, "addr", addr,
			"seq", it.seq, "entry", it.entry.describe(), "attempt", attempt+1, "error", err)
		o.count(p, it.entry.Op.String(), resultError)
		return false, true
	}
	o.count(p, it.entry.Op.String(), result)
	if result == resultApplied || result == resultSkipped {
		// The peer has the write now (or something newer): the lag is since its commit.
		o.metrics.lag.WithLabelValues(p.name).Observe(o.now().Sub(it.entry.EnqueuedAt).Seconds())
	}
	return true, false
}

func (o *Outbox) count(p *peer, op, result string) {
	o.metrics.pushes.WithLabelValues(p.name, op, result).Inc()
}

// pushObject pushes the object's current local state. A missing object (deleted, evicted,
// cleaned) is dropped, and so is one whose stored copy is no longer the write the entry
// stands for: a last-writer-wins object replaced by a newer version (which has its own
// entry), or an immutable object whose body was replaced by a peer's earlier write (the
// cluster's first writer, storage.Replaces), which that write's origin pushes to everyone.
// Anti-entropy covers evictions.
func (o *Outbox) pushObject(ctx context.Context, p *peer, addr string, e Entry) (string, error) {
	r, err := o.openCurrent(ctx, e)
	if r == nil || err != nil {
		return resultDropped, err
	}
	defer func() { _ = r.Close() }()
	info := r.Info()
	if info.Size > largeObjectBytes {
		// Waiting for a slot is not part of the push: PushTimeout starts once it has one.
		select {
		case p.large <- struct{}{}:
			defer func() { <-p.large }()
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.PushTimeout)
	defer cancel()
	body := &trackingReader{r: r}
	start := time.Now()
	applied, err := o.cfg.Sender.PushObject(ctx, addr, info, body)
	o.metrics.duration.WithLabelValues(p.name).Observe(time.Since(start).Seconds())
	if body.err != nil && errors.Is(body.err, storage.ErrCorrupt) {
		// The local store dropped the record on this read and reports it for repair; there is
		// nothing left to push.
		o.log.Warn("local record corrupt while replicating; dropping the entry", "peer", p.name, "key", e.Key.String(), "error", body.err)
		return resultDropped, nil
	}
	if err != nil {
		return "", err
	}
	if !applied {
		return resultSkipped, nil
	}
	return resultApplied, nil
}

// openCurrent opens the local copy of an object entry. It returns no reader and no error
// when the entry is to be dropped: the object is gone (deleted, evicted, cleaned, found
// corrupt) or its stored copy is no longer the write the entry stands for (see pushObject).
func (o *Outbox) openCurrent(ctx context.Context, e Entry) (storage.Reader, error) {
	r, err := o.local.Open(ctx, e.Key, 0, -1)
	switch {
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrCorrupt):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("open local %s: %w", e.Key, err)
	}
	info := r.Info()
	if e.Key.Kind.LastWriterWins() && info.Version > e.Version || !e.Key.Kind.LastWriterWins() && info.Version != e.Version {
		_ = r.Close()
		return nil, nil
	}
	return r, nil
}

// trackingReader remembers the body's own read error, which a Sender may wrap or replace.
type trackingReader struct {
	r   io.Reader
	err error
}

func (t *trackingReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}

// commitDeletes removes the entries this peer's worker resolved, one point deletion each
// (holes may sit between them), and every prefixDeleteEvery numbers covers the resolved prefix
// with one range deletion as well. The commit is not synced: a crash can lose it, and the
// entries are then delivered again after the restart, which is harmless because every apply is
// idempotent (storage.Replaces for objects, tombstones by version).
func (o *Outbox) commitDeletes(p *peer) error {
	b := o.db.NewBatch()
	defer b.Close()
	var ahead []uint64
	for _, it := range p.work {
		if !it.done {
			continue
		}
		if err := b.DeleteOutbox(p.name, it.seq); err != nil {
			return err
		}
		if it.seq > p.cursor {
			ahead = append(ahead, it.seq)
		}
	}
	low := p.resolved()
	ranged := low >= p.rangedThrough+prefixDeleteEvery
	if ranged {
		if err := b.DeleteOutboxThrough(p.name, low); err != nil {
			return err
		}
	}
	if !b.Empty() {
		if err := b.CommitNoSync(); err != nil {
			return fmt.Errorf("delete delivered entries of %s: %w", p.name, err)
		}
	}
	if ranged {
		p.rangedThrough = low
	}
	for _, seq := range ahead {
		if p.ahead == nil {
			p.ahead = map[uint64]struct{}{}
		}
		p.ahead[seq] = struct{}{}
	}
	p.work = slices.DeleteFunc(p.work, func(it *item) bool { return it.done })
	return nil
}

// sleep waits d or until ctx is done; it reports whether the full delay passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
