package outbox

import (
	"fmt"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// The outbox is the disk store's commit observer (storage/local.CommitObserver, checked in
// local_test.go, since outbox does not import the store): OnCommit queues, AfterCommit wakes.
// It is built on the data directory's database before the store, passed to the store once,
// and pushes from it once Run is given the store:
//
//	dir, _ := local.OpenDataDir(path, metaOpts)
//	ob, _ := outbox.New(outbox.Config{DB: dir.DB(), Sender: client, ...})
//	store, _ := local.Open(local.Options{Dir: dir, Observer: ob, ...})
//	go ob.Run(ctx, store)

// OnCommit queues a change that originated on this node for every live peer, in the batch
// that commits it. A replicated change (applied from a peer: push, anti-entropy,
// read-through, repair) is not queued: its origin pushes it to everyone, and echoing it would
// multiply every write by the cluster size. It runs under the key's lock and only encodes. An
// error aborts the write.
func (o *Outbox) OnCommit(b *meta.Batch, c storage.Change) error {
	if c.Replicated {
		return nil
	}
	e, err := EntryForChange(c)
	if err != nil {
		return err
	}
	return o.Enqueue(b, e)
}

// AfterCommit is Notify: the batch that enqueued entries has been synced, so idle workers can
// push now instead of at their next idlePoll.
func (o *Outbox) AfterCommit() { o.Notify() }

// EntryForChange translates a committing change of the local store into the entry that
// replicates it, with the commit's trace context.
func EntryForChange(c storage.Change) (Entry, error) {
	switch c.Op {
	case storage.ChangePut:
		return Entry{Op: OpObject, Key: c.Info.Key, Version: c.Version, Trace: c.Trace}, nil
	case storage.ChangeDeleteNamespace:
		t := storage.Tombstone{Tenant: c.Tenant, Namespace: c.Namespace, Version: c.Version}
		return Entry{Op: OpTombstone, Tombstone: t, Version: c.Version, Trace: c.Trace}, nil
	}
	return Entry{}, fmt.Errorf("replicate change: unknown op %d", c.Op)
}
