package meta

import (
	"context"
	"sync"

	"github.com/kuracache/kura/storage"
)

// tombstoneMirror holds every namespace tombstone in memory, so GetTombstone, which every
// write asks (twice for a small Put), is a map probe instead of a Pebble Get: tombstones are
// few (one per deleted namespace) and change only through DeleteNamespace's batches.
//
// It is loaded whole at Open and updated by Batch.Commit right after Pebble applied a batch
// that records tombstones, before Commit returns; the caller holds the namespace's writers
// out until then (DeleteNamespace's contract), so a writer that checks the tombstone under
// the namespace's lock reads exactly what Pebble holds. A tombstone that failed to decode at
// Open, or whose batch failed to commit (its outcome is unknown), is read from Pebble until
// a later commit for the namespace succeeds.
type tombstoneMirror struct {
	mu     sync.RWMutex
	known  map[namespaceName]storage.Version
	unsure map[namespaceName]struct{}
}

type namespaceName struct{ tenant, namespace string }

// load fills the mirror from Pebble.
func (t *tombstoneMirror) load(ctx context.Context, db *DB) error {
	t.known = make(map[namespaceName]storage.Version)
	t.unsure = make(map[namespaceName]struct{})
	return db.ScanTombstones(ctx, func(ts storage.Tombstone, err error) error {
		n := namespaceName{ts.Tenant, ts.Namespace}
		if err != nil {
			// A key without a separator names no namespace a write could ask about.
			if n != (namespaceName{}) {
				t.unsure[n] = struct{}{}
			}
			return nil
		}
		t.known[n] = ts.Version
		return nil
	})
}

// get answers from memory; fromPebble is set when the namespace's tombstone must be read from
// Pebble instead.
func (t *tombstoneMirror) get(tenant, namespace string) (v storage.Version, ok, fromPebble bool) {
	n := namespaceName{tenant, namespace}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if len(t.unsure) > 0 {
		if _, unsure := t.unsure[n]; unsure {
			return 0, false, true
		}
	}
	v, ok = t.known[n]
	return v, ok, false
}

// committed publishes the tombstones of a batch after its commit: their new versions when it
// succeeded, otherwise that their state is unknown.
func (t *tombstoneMirror) committed(tombs []storage.Tombstone, commitErr error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ts := range tombs {
		n := namespaceName{ts.Tenant, ts.Namespace}
		if commitErr != nil {
			t.unsure[n] = struct{}{}
			continue
		}
		delete(t.unsure, n)
		t.known[n] = ts.Version
	}
}
