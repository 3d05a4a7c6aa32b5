package meta

import (
	"context"
	"errors"
	"testing"

	"github.com/kuracache/kura/storage"
)

// pebbleTombstone reads a namespace's tombstone from Pebble itself, bypassing the mirror.
func pebbleTombstone(t *testing.T, db *DB, tenant, namespace string) (storage.Version, bool) {
	t.Helper()
	raw, ok, err := db.get(tombstoneKey(tenant, namespace))
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return 0, false
	}
	v, err := decodeVersion("tombstone", raw)
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

// The in-memory tombstones answer exactly what Pebble holds: after commits (the larger version
// wins), for namespaces never deleted, and after a reopen that loads them back.
func TestTombstoneMirrorMatchesPebble(t *testing.T) {
	dir := t.TempDir()
	db := openTestDB(t, dir)
	ctx := context.Background()
	deleteNS := func(ns string, v storage.Version) {
		t.Helper()
		b := db.NewBatch()
		defer b.Close()
		if _, err := b.DeleteNamespace(ctx, "acme", ns, v); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	deleteNS("app", 10)
	deleteNS("app", 7) // an older deletion keeps the newer tombstone
	deleteNS("lib", 3)
	check := func(db *DB) {
		t.Helper()
		for _, ns := range []string{"app", "lib", "never-deleted"} {
			v, ok, err := db.GetTombstone("acme", ns)
			if err != nil {
				t.Fatal(err)
			}
			wantV, wantOK := pebbleTombstone(t, db, "acme", ns)
			if v != wantV || ok != wantOK {
				t.Errorf("GetTombstone(acme/%s) = %v, %v; Pebble holds %v, %v", ns, v, ok, wantV, wantOK)
			}
		}
	}
	check(db)
	if v, _, _ := db.GetTombstone("acme", "app"); v != 10 {
		t.Errorf("tombstone of acme/app = %v, want 10", v)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	check(openTestDB(t, dir))
}

// A batch whose commit failed leaves its namespaces' tombstones in doubt: they are read from
// Pebble until a later commit for the namespace succeeds.
func TestTombstoneMirrorUnsureAfterFailedCommit(t *testing.T) {
	var m tombstoneMirror
	m.known = map[namespaceName]storage.Version{{"acme", "app"}: 4}
	m.unsure = map[namespaceName]struct{}{}
	m.committed([]storage.Tombstone{{Tenant: "acme", Namespace: "app", Version: 9}}, errors.New("injected"))
	if _, _, fromPebble := m.get("acme", "app"); !fromPebble {
		t.Fatal("a namespace whose tombstone commit failed is answered from memory")
	}
	if _, _, fromPebble := m.get("acme", "other"); fromPebble {
		t.Error("another namespace is read from Pebble")
	}
	m.committed([]storage.Tombstone{{Tenant: "acme", Namespace: "app", Version: 11}}, nil)
	if v, ok, fromPebble := m.get("acme", "app"); fromPebble || !ok || v != 11 {
		t.Errorf("after a successful commit: %v, %v, fromPebble %v; want 11 from memory", v, ok, fromPebble)
	}
}
