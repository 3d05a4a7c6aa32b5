package outbox

import (
	"fmt"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
)

// OnCommit is a storage/local OnCommit hook: it queues a change that originated on this node
// for every live peer, in the batch that commits it. A replicated change (applied from a peer:
// push, anti-entropy, read-through, repair) is not queued: its origin pushes it to everyone,
// and echoing it would multiply every write by the cluster size. Wire it as
//
//	var ob *outbox.Outbox
//	opts.OnCommit = func(b *meta.Batch, c local.Change) error { return ob.OnCommit(b, c) }
//	opts.AfterCommit = func() { ob.Notify() }
//	store, _ := local.Open(opts)
//	ob, _ = outbox.New(outbox.Config{DB: store.Metadata(), Store: store, ...})
//
// (no write can reach the hooks before New returns, since nothing serves the store yet).
// Notify only wakes idle workers early; without it they find new entries within idlePoll.
// An error aborts the write.
func (o *Outbox) OnCommit(b *meta.Batch, c local.Change) error {
	if c.Replicated {
		return nil
	}
	e, err := EntryForChange(c)
	if err != nil {
		return err
	}
	return o.Enqueue(b, e)
}

// EntryForChange translates a committing change of the local store into the entry that
// replicates it, with the commit's trace context.
func EntryForChange(c local.Change) (Entry, error) {
	switch c.Op {
	case local.ChangePut:
		return Entry{Op: OpObject, Key: c.Info.Key, Version: c.Version, Trace: c.Trace}, nil
	case local.ChangeDeleteNamespace:
		t := storage.Tombstone{Tenant: c.Tenant, Namespace: c.Namespace, Version: c.Version}
		return Entry{Op: OpTombstone, Tombstone: t, Version: c.Version, Trace: c.Trace}, nil
	}
	return Entry{}, fmt.Errorf("replicate change: unknown op %d", c.Op)
}
