package antientropy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kuracache/kura/storage"
)

const digestSize = 32

type nsKey struct{ tenant, namespace string }

// SweepNow makes one full pass over every live peer, same region first: first the tombstones
// of all peers (so a namespace cleaned anywhere is never refilled from a peer that has not
// heard of the clean yet), then, peer by peer, the objects of the buckets whose digests differ.
// Peers are swept one after another rather than in parallel so that what was pulled from one
// is not fetched again from the next. A peer that fails is logged and skipped; the returned
// error joins every peer's failure while Result still counts what the others achieved.
func (s *Sweeper) SweepNow(ctx context.Context) (Result, error) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	start := s.cfg.Now()
	peers := orderPeers(s.cfg.Peers.Peers(), s.cfg.SelfRegion)
	res := Result{Peers: len(peers)}
	var errs []error
	fail := func(p Peer, err error) {
		res.PeersFailed++
		errs = append(errs, fmt.Errorf("sweep peer %s (%s): %w", p.Name, p.Addr, err))
		s.log.Warn("anti-entropy sweep of peer failed; retrying next sweep", "peer", p.Name, "addr", p.Addr, "error", err)
	}

	tombs, err := s.localTombstones(ctx)
	if err != nil {
		return s.finish(start, res, err)
	}
	ok := make([]bool, len(peers))
	for i, p := range peers {
		if err := s.waitUnpaused(ctx); err != nil {
			return s.finish(start, res, err)
		}
		n, err := s.applyTombstones(ctx, p, tombs)
		res.TombstonesApplied += n
		if err != nil {
			if ctx.Err() != nil {
				return s.finish(start, res, ctx.Err())
			}
			fail(p, err)
			continue
		}
		ok[i] = true
	}
	for i, p := range peers {
		if !ok[i] {
			continue
		}
		pr, err := s.sweepPeer(ctx, p, tombs)
		res.add(pr)
		if err != nil {
			if ctx.Err() != nil {
				return s.finish(start, res, ctx.Err())
			}
			fail(p, err)
			continue
		}
		s.markBootstrapped()
	}
	return s.finish(start, res, errors.Join(errs...))
}

// finish records a sweep's metrics and summary.
func (s *Sweeper) finish(start time.Time, res Result, err error) (Result, error) {
	elapsed := s.cfg.Now().Sub(start)
	outcome := "ok"
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		outcome = "aborted"
	case res.PeersFailed > 0 && res.PeersFailed < res.Peers:
		outcome = "partial"
	default:
		outcome = "failed"
	}
	s.metrics.runs.WithLabelValues(outcome).Inc()
	s.metrics.duration.Observe(elapsed.Seconds())
	level := s.log.Debug
	if res.BucketsDiffering > 0 || res.TombstonesApplied > 0 || res.Conflicts > 0 {
		level = s.log.Info
	}
	level("anti-entropy sweep done", "outcome", outcome, "duration", elapsed,
		"peers", res.Peers, "peers_failed", res.PeersFailed,
		"buckets_compared", res.BucketsCompared, "buckets_differing", res.BucketsDiffering,
		"objects_pulled", res.ObjectsPulled, "objects_failed", res.ObjectsFailed,
		"stubs_applied", res.StubsApplied, "tombstones_applied", res.TombstonesApplied,
		"conflicts", res.Conflicts)
	if err != nil {
		return res, fmt.Errorf("anti-entropy sweep: %w", err)
	}
	return res, nil
}

func (s *Sweeper) localTombstones(ctx context.Context) (map[nsKey]storage.Version, error) {
	list, err := s.cfg.Local.Tombstones(ctx)
	if err != nil {
		return nil, fmt.Errorf("list local tombstones: %w", err)
	}
	m := make(map[nsKey]storage.Version, len(list))
	for _, t := range list {
		k := nsKey{t.Tenant, t.Namespace}
		m[k] = max(m[k], t.Version)
	}
	return m, nil
}

// applyTombstones applies every tombstone of p newer than ours and records it in tombs.
func (s *Sweeper) applyTombstones(ctx context.Context, p Peer, tombs map[nsKey]storage.Version) (int, error) {
	cctx, cancel := withPeerTimeout(ctx, p, s.cfg.PeerTimeout)
	list, err := s.cfg.Source.ListTombstones(cctx, p.Addr)
	err = explain(cctx, err)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("list tombstones: %w", err)
	}
	applied := 0
	for _, t := range list {
		k := nsKey{t.Tenant, t.Namespace}
		if cur, ok := tombs[k]; ok && t.Version <= cur {
			continue
		}
		err := s.cfg.Local.DeleteNamespace(ctx, t.Tenant, t.Namespace, t.Version)
		switch {
		case err == nil:
			tombs[k] = t.Version
			applied++
			s.metrics.tombstones.Inc()
			s.log.Info("applied a peer's namespace tombstone", "peer", p.Name, "tenant", t.Tenant,
				"namespace", t.Namespace, "version", t.Version.String())
		case errors.Is(err, storage.ErrInvalidKey):
			s.log.Warn("ignored an invalid tombstone from a peer", "peer", p.Name, "error", err)
		default:
			return applied, fmt.Errorf("apply tombstone %s/%s: %w", t.Tenant, t.Namespace, err)
		}
	}
	return applied, nil
}

// sweepPeer compares digests with p and reconciles the buckets that differ.
func (s *Sweeper) sweepPeer(ctx context.Context, p Peer, tombs map[nsKey]storage.Version) (Result, error) {
	var res Result
	const bits = storage.DigestBucketBits
	const buckets = 1 << bits
	cctx, cancel := withPeerTimeout(ctx, p, s.cfg.PeerTimeout)
	remote, _, err := s.cfg.Source.BucketDigests(cctx, p.Addr, bits)
	err = explain(cctx, err)
	cancel()
	if err != nil {
		return res, fmt.Errorf("read peer's bucket digests: %w", err)
	}
	if len(remote) != buckets*digestSize {
		return res, fmt.Errorf("read peer's bucket digests: got %d bytes, want %d", len(remote), buckets*digestSize)
	}
	local, _, err := s.cfg.Local.BucketDigests(ctx, bits)
	if err != nil {
		return res, fmt.Errorf("compute local bucket digests: %w", err)
	}
	if len(local) != buckets*digestSize {
		return res, fmt.Errorf("compute local bucket digests: got %d bytes, want %d", len(local), buckets*digestSize)
	}
	var differing []uint32
	for b := range uint32(buckets) {
		off := b * digestSize
		if !bytes.Equal(remote[off:off+digestSize], local[off:off+digestSize]) {
			differing = append(differing, b)
		}
	}
	res.BucketsCompared = buckets
	res.BucketsDiffering = len(differing)
	s.metrics.bucketsCompared.Add(buckets)
	s.metrics.bucketsDiffering.Add(float64(len(differing)))
	if len(differing) == 0 {
		return res, nil
	}
	filter := differing
	if len(differing) == buckets {
		filter = nil // every bucket: the plain listing is cheaper to ask for
	}
	rec, err := s.reconcile(ctx, p, bits, filter, tombs)
	rec.BucketsCompared, rec.BucketsDiffering = res.BucketsCompared, res.BucketsDiffering
	return rec, err
}

type action int

const (
	actPull action = iota + 1
	actStub
)

type job struct {
	act  action
	info storage.Info
}

// reconcile merge-joins the peer's and the local listings of the given buckets (both in key
// order, page by page) and pulls what the peer has that we lack or hold in an older version,
// with PullConcurrency fetches in flight.
func (s *Sweeper) reconcile(ctx context.Context, p Peer, bits uint32, buckets []uint32, tombs map[nsKey]storage.Version) (Result, error) {
	var (
		mu  sync.Mutex
		res Result
	)
	count := func(f func(r *Result)) {
		mu.Lock()
		f(&res)
		mu.Unlock()
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan job)
	for range s.cfg.PullConcurrency {
		g.Go(func() error {
			for j := range jobs {
				if err := s.runJob(gctx, p, j, count); err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		remote := &cursor{what: "peer listing", list: func(ctx context.Context, after []byte) ([]storage.ObjectSummary, []byte, error) {
			cctx, cancel := withPeerTimeout(ctx, p, s.cfg.PeerTimeout)
			defer cancel()
			page, next, err := s.cfg.Source.ListObjects(cctx, p.Addr, bits, buckets, after, s.cfg.PageSize)
			return page, next, explain(cctx, err)
		}}
		local := &cursor{what: "local listing", list: func(ctx context.Context, after []byte) ([]storage.ObjectSummary, []byte, error) {
			return s.cfg.Local.ListObjects(ctx, bits, buckets, after, s.cfg.PageSize)
		}}
		return s.mergeJoin(gctx, p, remote, local, tombs, count, func(j job) error {
			if err := s.waitUnpaused(gctx); err != nil {
				return err
			}
			select {
			case jobs <- j:
				return nil
			case <-gctx.Done():
				return gctx.Err()
			}
		})
	})
	err := g.Wait()
	return res, err
}

// mergeJoin walks both listings in step and decides, for each key the peer holds, what to do.
// Keys only we hold are left alone: the peer pulls them in its own sweep.
func (s *Sweeper) mergeJoin(ctx context.Context, p Peer, remote, local *cursor, tombs map[nsKey]storage.Version,
	count func(func(*Result)), emit func(job) error) error {
	for {
		r, err := remote.peek(ctx)
		if err != nil || r == nil {
			return err
		}
		remote.next()
		if err := r.Info.Key.Validate(); err != nil {
			s.log.Warn("ignored an invalid key in a peer's listing", "peer", p.Name, "error", err)
			continue
		}
		var l *storage.ObjectSummary
		for {
			if l, err = local.peek(ctx); err != nil {
				return err
			}
			if l == nil || compareKeys(l.Info.Key, r.Info.Key) >= 0 {
				break
			}
			local.next()
		}
		if l != nil && compareKeys(l.Info.Key, r.Info.Key) != 0 {
			l = nil
		}
		if act := s.decide(p, *r, l, tombs, count); act != 0 {
			if err := emit(job{act: act, info: r.Info}); err != nil {
				return err
			}
		}
	}
}

// decide applies the conflict rule, storage.Replaces, to one key the peer holds (l nil: we do
// not): the peer's copy is pulled (or its stub recorded) when it would replace ours, which is
// what Put and ApplyStub then decide again under the key's lock. Copies that are the same
// object (storage.SameObject) are left alone, so an object evicted here is not pulled back.
func (s *Sweeper) decide(p Peer, r storage.ObjectSummary, l *storage.ObjectSummary, tombs map[nsKey]storage.Version,
	count func(func(*Result))) action {
	key := r.Info.Key
	if t, ok := tombs[nsKey{key.Tenant, key.Namespace}]; ok && r.Info.Version <= t {
		return 0 // deleted here by a namespace clean the peer has not applied yet
	}
	pullOrStub := actPull
	if r.Evicted {
		pullOrStub = actStub
	}
	if l == nil {
		return pullOrStub
	}
	remote, local := copyOf(r), copyOf(*l)
	if storage.SameObject(key.Kind, remote, local) || !storage.Replaces(key.Kind, remote, local) {
		return 0
	}
	if !key.Kind.LastWriterWins() && !r.Evicted && !l.Evicted {
		s.conflict(p, r.Info, l.Info, count)
	}
	return pullOrStub
}

func copyOf(o storage.ObjectSummary) storage.Copy {
	return storage.Copy{Version: o.Info.Version, SHA256: o.Info.SHA256, Evicted: o.Evicted}
}

// conflict counts an immutable object whose body here differs from the peer's, where the
// peer's copy is the cluster's first writer (lower version, or equal version and lower
// SHA-256): this node pulls it and replaces its own. The other node of the pair keeps its
// copy and counts nothing, so each settled difference is counted once per losing node.
func (s *Sweeper) conflict(p Peer, remote, local storage.Info, count func(func(*Result))) {
	count(func(r *Result) { r.Conflicts++ })
	s.metrics.conflicts.Inc()
	s.log.Debug("object differs from the peer's copy, an earlier write; replacing ours", "peer", p.Name, "key", remote.Key.String(),
		"local_sha256", fmt.Sprintf("%x", local.SHA256), "peer_sha256", fmt.Sprintf("%x", remote.SHA256),
		"local_version", local.Version.String(), "peer_version", remote.Version.String())
}

// runJob performs one pull or stub. Errors that condemn one object are counted and logged;
// the returned error (the peer or the local store failing) aborts this peer's sweep.
func (s *Sweeper) runJob(ctx context.Context, p Peer, j job, count func(func(*Result))) error {
	key := j.info.Key
	if j.act == actStub {
		if err := s.cfg.Local.ApplyStub(ctx, j.info); err != nil {
			if objectFault(err) {
				s.log.Warn("could not record a peer's evicted-object stub", "peer", p.Name, "key", key.String(), "error", err)
				count(func(r *Result) { r.ObjectsFailed++ })
				return nil
			}
			return fmt.Errorf("apply stub %s: %w", key, err)
		}
		count(func(r *Result) { r.StubsApplied++ })
		s.metrics.stubs.Inc()
		return nil
	}
	pr, err := fetchFrom(ctx, s.cfg.Source, p, key, s.cfg.PeerTimeout)
	switch {
	case err == nil:
	case errors.Is(err, storage.ErrNotFound):
		return nil // deleted or evicted on the peer since it was listed
	case objectFault(err):
		s.log.Warn("peer served a bad object; skipped", "peer", p.Name, "key", key.String(), "error", err)
		count(func(r *Result) { r.ObjectsFailed++ })
		return nil
	default:
		return err
	}
	res, err := storeFetched(ctx, s.cfg.Local, key, pr, s.cfg.MaxKeyValueBytes)
	peerErr := pr.peerFailed()
	_ = pr.Close()
	switch classifyStore(err, peerErr) {
	case stored:
		if res.Created {
			count(func(r *Result) { r.ObjectsPulled++ })
			s.metrics.pulled.Inc()
		}
		return nil
	case stale:
		return nil // a newer tombstone or version arrived meanwhile
	case badObject:
		s.log.Warn("pulled object failed verification; skipped", "peer", p.Name, "key", key.String(), "error", err)
		count(func(r *Result) { r.ObjectsFailed++ })
		return nil
	case peerBroken:
		return fmt.Errorf("fetch %s: %w", key, peerErr)
	default:
		return fmt.Errorf("store pulled %s: %w", key, err)
	}
}

// compareKeys orders keys as their storage encoding does (tenant, namespace, kind and name
// joined by NUL bytes): identifiers never contain NUL, so comparing field by field is the
// same order without building the encoding.
func compareKeys(a, b storage.Key) int {
	if c := strings.Compare(a.Tenant, b.Tenant); c != 0 {
		return c
	}
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	if c := strings.Compare(string(a.Kind), string(b.Kind)); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// cursor walks a paged listing one summary at a time, holding one page in memory, and
// checks the key order the merge-join depends on.
type cursor struct {
	what  string
	list  func(ctx context.Context, after []byte) ([]storage.ObjectSummary, []byte, error)
	page  []storage.ObjectSummary
	i     int
	token []byte
	done  bool
	last  *storage.Key
	pages int
}

// peek returns the current summary, fetching pages as needed; nil at the end.
func (c *cursor) peek(ctx context.Context) (*storage.ObjectSummary, error) {
	for c.i >= len(c.page) {
		if c.done {
			return nil, nil
		}
		page, next, err := c.list(ctx, c.token)
		if err != nil {
			return nil, fmt.Errorf("%s page %d: %w", c.what, c.pages+1, err)
		}
		if len(page) == 0 && next != nil && bytes.Equal(next, c.token) {
			return nil, fmt.Errorf("%s page %d: the page token does not advance", c.what, c.pages+1)
		}
		c.pages++
		c.page, c.i, c.token, c.done = page, 0, next, next == nil
	}
	cur := &c.page[c.i]
	if c.last != nil && compareKeys(*c.last, cur.Info.Key) >= 0 {
		return nil, fmt.Errorf("%s is not in key order: %s after %s", c.what, cur.Info.Key, *c.last)
	}
	return cur, nil
}

// next moves past the current summary (after a successful peek).
func (c *cursor) next() {
	k := c.page[c.i].Info.Key
	c.last = &k
	c.i++
}
