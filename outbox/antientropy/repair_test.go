package antientropy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

func repairCount(s *Sweeper, result string) float64 {
	return testutil.ToFloat64(s.metrics.repairs.WithLabelValues(result))
}

// A record corrupted on disk is dropped when read, reported on the store's Corrupted channel
// and restored from a peer by the repair worker, which consumes that channel.
func TestRepairRefetchesCorruptRecord(t *testing.T) {
	a := diskNode(t, "a", "us")
	far, near := diskNode(t, "far", "eu"), diskNode(t, "near", "us")
	body := storagetest.Bytes(99, 200<<10)
	k := key("app", storage.KindGradle, "precious")
	info := put(t, a.store, k, string(body), 0)
	put(t, far.store, k, string(body), info.Version)
	put(t, near.store, k, string(body), info.Version)
	src := newSource(a, far, near)
	sw, _ := newSweeper(t, a, src, newPeers(far, near), func(c *Config) { c.Corrupted = a.disk.Corrupted() })

	corruptOnDisk(t, a, body)
	if _, err := read(a.store, k); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("read of the damaged record: %v, want corruption", err)
	}
	assertMissing(t, a.store, k) // dropped: never served

	// Only the repair worker runs (Run's first sweep would also restore the record).
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); sw.repairLoop(ctx) }()
	t.Cleanup(func() { cancel(); <-stopped })
	testsupport.WaitFor(t, "the repair", 30*time.Second, func() bool { return repairCount(sw, "repaired") == 1 })
	if got := mustRead(t, a.store, k); got != string(body) {
		t.Fatal("repaired body differs")
	}
	restored, err := a.store.Stat(t.Context(), k)
	if err != nil || restored.Version != info.Version {
		t.Fatalf("restored %+v, %v; want version %v", restored, err, info.Version)
	}
	if log := src.fetchLog(); len(log) != 1 || log[0] != "near precious" {
		t.Fatalf("repair fetched %v, want one fetch from the same-region peer", log)
	}
	testsupport.WaitFor(t, "the pending set to empty", 30*time.Second, func() bool {
		sw.pendingMu.Lock()
		defer sw.pendingMu.Unlock()
		return len(sw.pending) == 0
	})
}

func TestRepairOutcomes(t *testing.T) {
	forEachStore(t, func(t *testing.T, open nodeFactory) {
		self, peer := open(t, "self", "us"), open(t, "peer", "us")
		have := key("app", storage.KindCAS, "on-peer")
		put(t, peer.store, have, "peer copy", 0)
		sw, _ := newSweeper(t, self, newSource(self, peer), newPeers(peer), nil)
		startRun(t, sw)

		// Run works the queue (its first sweep may restore the key as well; either way the
		// repair stores or finds the peer's copy).
		sw.Repair(have)
		testsupport.WaitFor(t, "the repair", 30*time.Second, func() bool { return repairCount(sw, "repaired") == 1 })
		if got := mustRead(t, self.store, have); got != "peer copy" {
			t.Fatalf("repaired body %q", got)
		}
		nowhere := key("app", storage.KindCAS, "nowhere")
		sw.Repair(nowhere)
		testsupport.WaitFor(t, "the not-found outcome", 30*time.Second, func() bool { return repairCount(sw, "not_found") == 1 })
		assertMissing(t, self.store, nowhere)
	})
}

func TestRepairQueueIsBoundedAndNeverBlocks(t *testing.T) {
	self := memoryNode(t, "self", "us")
	sw, _ := newSweeper(t, self, newSource(), newPeers(), func(c *Config) { c.RepairQueue = 2 })
	// No Run: nothing drains the queue, yet Repair returns at once.
	for _, name := range []string{"a", "b", "a", "c", "d"} {
		sw.Repair(key("app", storage.KindCAS, name))
	}
	if v := repairCount(sw, "dropped"); v != 2 {
		t.Fatalf("dropped = %v, want 2 (c and d; the second a was already queued)", v)
	}
	if n := len(sw.repairs); n != 2 {
		t.Fatalf("%d keys queued, want 2", n)
	}
}
