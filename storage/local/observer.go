package local

import (
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// CommitObserver is what the store calls inside every committing write: the replication seam.
// The outbox (outbox.Outbox) implements it, adding one queue entry per peer to the write's own
// synced batch, so an acknowledged write is never lost to replication. It is given once, in
// Options.Observer; the metadata database it writes to is opened first (OpenDataDir), so it
// can be built before the store.
type CommitObserver interface {
	// OnCommit is called while building every committing batch (object written or replaced,
	// namespace tombstoned) with what the batch does, so the observer can add to b. It runs
	// under the key's (or the namespace's) lock: keep it short. An error aborts the write. It
	// is not called for eviction (a record becoming a stub changes nothing peers need) nor
	// for ApplyStub (a stub is learnt from a peer).
	OnCommit(b *meta.Batch, c storage.Change) error
	// AfterCommit is called after every batch OnCommit contributed to has been synced (so its
	// additions are visible to readers of the metadata database). It may run while the key's
	// lock is held, so it must not block. The outbox wakes its idle workers with it instead
	// of waiting for their next poll.
	AfterCommit()
}

// DefaultCorruptQueue is how many dropped corrupt keys Corrupted buffers for its consumer (the
// anti-entropy sweeper). Corruption is rare; a key that does not fit is still restored by the
// next sweep, because a dropped record no longer counts in the local digests.
const DefaultCorruptQueue = 1024

// Corrupted delivers the key of every corrupt record the store dropped, so a peer copy can be
// fetched (antientropy.Config.Corrupted consumes it). The store never blocks on it: when the
// buffer (DefaultCorruptQueue) is full the key is logged and left to the next sweep.
func (s *Store) Corrupted() <-chan storage.Key { return s.corrupted }

// reportCorrupt hands key to the consumer of Corrupted without blocking.
func (s *Store) reportCorrupt(key storage.Key) {
	select {
	case s.corrupted <- key:
	default:
		s.log.Warn("corrupt-record queue full; the next anti-entropy sweep restores the record", "key", key.String())
	}
}

// afterCommit tells the observer, if any, that a batch it contributed to has been synced.
func (s *Store) afterCommit() {
	if s.opts.Observer != nil {
		s.opts.Observer.AfterCommit()
	}
}
