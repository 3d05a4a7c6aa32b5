package antientropy

import (
	"context"
	"errors"

	"github.com/kuracache/kura/storage"
)

// Repair queues a re-fetch of key, whose local record was found corrupt and dropped (the
// repair worker calls it for every key on Config.Corrupted). It never blocks: a key already queued is not queued twice, and
// when the queue is full the key is dropped and counted (the next sweep pulls it anyway,
// since the dropped record no longer counts in the local digests). Repairs run inside Run.
func (s *Sweeper) Repair(key storage.Key) {
	s.pendingMu.Lock()
	if _, dup := s.pending[key]; dup {
		s.pendingMu.Unlock()
		return
	}
	select {
	case s.repairs <- key:
		s.pending[key] = struct{}{}
		s.pendingMu.Unlock()
	default:
		s.pendingMu.Unlock()
		s.metrics.repairs.WithLabelValues("dropped").Inc()
		s.log.Warn("repair queue full; the next sweep will restore the record", "key", key.String())
	}
}

// repairLoop queues what Config.Corrupted reports and works the repair queue until ctx ends.
func (s *Sweeper) repairLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-s.cfg.Corrupted: // never ready when nil
			s.Repair(key)
		case key := <-s.repairs:
			if s.waitUnpaused(ctx) != nil {
				return
			}
			s.repair(ctx, key)
			s.pendingMu.Lock()
			delete(s.pending, key)
			s.pendingMu.Unlock()
		}
	}
}

// repair fetches key from the live peers, same region first, and stores the first good copy.
func (s *Sweeper) repair(ctx context.Context, key storage.Key) {
	result := "not_found"
	var lastErr error
	defer func() {
		if ctx.Err() != nil {
			return // shutting down: not an outcome worth counting
		}
		s.metrics.repairs.WithLabelValues(result).Inc()
		switch result {
		case "repaired":
			s.log.Info("repaired a corrupt record from a peer", "key", key.String())
		case "not_found":
			s.log.Warn("no peer holds a copy of a corrupt record; it stays dropped", "key", key.String(), "last_error", lastErr)
		case "stale":
			s.log.Info("corrupt record was superseded by a namespace clean; nothing to repair", "key", key.String())
		default:
			s.log.Error("could not repair a corrupt record", "key", key.String(), "error", lastErr)
		}
	}()
	for _, p := range orderPeers(s.cfg.Peers.Peers(), s.cfg.SelfRegion) {
		pr, err := fetchFrom(ctx, s.cfg.Source, p, key, s.cfg.PeerTimeout)
		if err != nil {
			if !errors.Is(err, storage.ErrNotFound) {
				lastErr = err
			}
			continue
		}
		_, err = storeFetched(ctx, s.cfg.Local, key, pr, s.cfg.MaxKeyValueBytes)
		peerErr := pr.peerFailed()
		_ = pr.Close()
		switch classifyStore(err, peerErr) {
		case stored:
			result = "repaired"
			return
		case stale:
			result = "stale"
			return
		case badObject, peerBroken:
			lastErr = err // this peer's copy is bad or its stream broke: try the next
		default:
			result, lastErr = "failed", err // the local store refuses: other peers will not help
			return
		}
	}
	if lastErr != nil {
		result = "failed"
	}
}
