package outbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

func TestDeliversInOrderAndDeletes(t *testing.T) {
	f := newFixture(t, fixtureOpts{mod: func(c *Config) { c.InFlight = 1; c.Batch = 8 }})
	f.o.SetTargets([]Target{{Name: "a", Addr: "10.0.0.1:7443"}})
	var want []string
	for i := range 20 {
		name := fmt.Sprintf("obj%02d", i)
		f.commit(f.put(name, "body of "+name))
		want = append(want, name)
	}
	tomb := storage.Tombstone{Tenant: "acme", Namespace: "old", Version: storage.MakeVersion(time.Now().UnixMilli(), 3)}
	f.commit(Entry{Op: OpTombstone, Tombstone: tomb})
	if got := f.o.Depth("a"); got != 21 {
		t.Fatalf("depth before Run = %d, want 21", got)
	}
	if got := f.queued("a"); len(got) != 21 || got[0] != 1 || got[20] != 21 {
		t.Fatalf("queued seqs = %v, want 1..21", got)
	}
	f.run()
	testsupport.WaitFor(t, "21 deliveries", 20*time.Second, func() bool { return len(f.sender.to("10.0.0.1:7443")) == 21 })
	got := f.sender.to("10.0.0.1:7443")
	for i, name := range want {
		d := got[i]
		if d.op != OpObject || d.info.Key.Name != name || d.body != "body of "+name {
			t.Fatalf("delivery %d = %+v, want %s in sequence order", i, d, name)
		}
		if d.info.SHA256 != sha256.Sum256([]byte(d.body)) || d.info.Size != int64(len(d.body)) {
			t.Fatalf("delivery %d carries info %+v that does not describe its body", i, d.info)
		}
	}
	if last := got[20]; last.op != OpTombstone || last.tomb != tomb {
		t.Fatalf("last delivery = %+v, want the tombstone %+v", last, tomb)
	}
	testsupport.WaitFor(t, "the queue to be deleted", 20*time.Second, func() bool { return len(f.queued("a")) == 0 })
	if d := f.o.Depth("a"); d != 0 {
		t.Fatalf("depth after delivery = %d", d)
	}
	if n := f.pushes("a", "object", resultApplied); n != 20 {
		t.Fatalf("applied object pushes = %v, want 20", n)
	}
	if n := f.pushes("a", "tombstone", resultApplied); n != 1 {
		t.Fatalf("applied tombstone pushes = %v, want 1", n)
	}
	if n := testutil.CollectAndCount(f.o.metrics.duration); n != 1 {
		t.Fatalf("push duration series = %d, want 1", n)
	}
	// Sequence numbers keep growing after the queue emptied.
	f.o.SetPaused(true)
	f.commit(f.put("later", "x"))
	if got := f.queued("a"); len(got) != 1 || got[0] != 22 {
		t.Fatalf("next entry got seq %v, want 22", got)
	}
}

func TestPeerWithoutTargetsQueuesNothing(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.commit(f.put("x", "y"))
	peers, err := f.db.OutboxPeers(context.Background())
	if err != nil || len(peers) != 0 {
		t.Fatalf("outbox peers = %v, %v; want none without targets", peers, err)
	}
	// Invalid names are ignored instead of breaking every later write.
	f.o.SetTargets([]Target{{Name: "", Addr: "x"}, {Name: "bad\x00name", Addr: "y"}, {Name: "ok", Addr: "z"}})
	f.commit(f.put("x2", "y"))
	if got := f.queued("ok"); len(got) != 1 {
		t.Fatalf("valid target queued %v", got)
	}
}

func TestStuckPeerDoesNotDelayOthers(t *testing.T) {
	release := make(chan struct{})
	var stuck sync.Once
	inA := make(chan struct{})
	sender := &fakeSender{behave: func(ctx context.Context, addr string, d delivery) (bool, error) {
		if addr != "A" {
			return true, nil
		}
		stuck.Do(func() { close(inA) })
		select {
		case <-release:
			return true, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}}
	f := newFixture(t, fixtureOpts{sender: sender})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}, {Name: "b", Addr: "B"}})
	f.run()
	for i := range 50 {
		f.commit(f.put(fmt.Sprintf("k%d", i), "v"))
	}
	<-inA
	testsupport.WaitFor(t, "peer b to receive everything while a hangs", 20*time.Second, func() bool { return len(sender.to("B")) == 50 })
	if n := len(sender.to("A")); n != 0 {
		t.Fatalf("hanging peer a completed %d pushes", n)
	}
	if d := f.o.Depth("a"); d != 50 {
		t.Fatalf("depth of a = %d, want 50 while it hangs", d)
	}
	testsupport.WaitFor(t, "b's queue deleted", 20*time.Second, func() bool { return len(f.queued("b")) == 0 && f.o.Depth("b") == 0 })
	close(release)
	testsupport.WaitFor(t, "a to catch up", 20*time.Second, func() bool { return len(sender.to("A")) == 50 && f.o.Depth("a") == 0 })
}

func TestFailingPeerBacksOffWithJitterOnlyForItself(t *testing.T) {
	var failing sync.Map
	failing.Store("A", true)
	sender := &fakeSender{behave: func(_ context.Context, addr string, _ delivery) (bool, error) {
		if _, down := failing.Load(addr); down {
			return false, fmt.Errorf("dial %s: %w", addr, errRefused)
		}
		return true, nil
	}}
	f := newFixture(t, fixtureOpts{sender: sender, mod: func(c *Config) {
		c.MinBackoff, c.MaxBackoff = time.Millisecond, 8*time.Millisecond
	}})
	type decision struct {
		attempt int
		d       time.Duration
	}
	var mu sync.Mutex
	var got []decision
	f.o.onBackoff = func(peer string, attempt int, d time.Duration) {
		if peer != "a" {
			t.Errorf("peer %s backed off, only a fails", peer)
		}
		mu.Lock()
		got = append(got, decision{attempt, d})
		mu.Unlock()
	}
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}, {Name: "b", Addr: "B"}})
	f.run()
	f.commit(f.put("k1", "v1"), f.put("k2", "v2"))
	testsupport.WaitFor(t, "b delivered", 20*time.Second, func() bool { return len(sender.to("B")) == 2 })
	testsupport.WaitFor(t, "8 backoff decisions", 20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 8 })
	mu.Lock()
	decisions := slices.Clone(got[:8])
	mu.Unlock()
	distinct := map[time.Duration]bool{}
	for i, dec := range decisions {
		if dec.attempt != i+1 {
			t.Fatalf("decision %d has attempt %d: attempts must grow while the peer keeps failing", i, dec.attempt)
		}
		ceiling := backoffCeiling(dec.attempt, time.Millisecond, 8*time.Millisecond)
		if dec.d < 0 || dec.d > ceiling {
			t.Fatalf("attempt %d waited %v, outside [0, %v]", dec.attempt, dec.d, ceiling)
		}
		distinct[dec.d] = true
	}
	if len(distinct) < 6 {
		t.Fatalf("backoff is not jittered: %v", decisions)
	}
	t.Logf("backoff decisions: %v", decisions)
	// One failed push per attempt, not one per entry of the page. The peer keeps failing while
	// this runs, so the failures and the decisions are read together under mu: the sender
	// records its decision under mu before it pushes again, so while mu is held at most the
	// attempt now waiting to record its decision has failed pushes that are not yet counted.
	mu.Lock()
	errs, attempts := f.pushes("a", "object", resultError), float64(len(got))
	mu.Unlock()
	if errs < attempts || errs > 2*attempts+2 {
		t.Fatalf("%v failed pushes for %v attempts", errs, attempts)
	}
	if d := f.o.Depth("a"); d != 2 {
		t.Fatalf("depth of a = %d while failing", d)
	}
	failing.Delete("A")
	testsupport.WaitFor(t, "a recovered", 20*time.Second, func() bool { return len(sender.to("A")) == 2 && f.o.Depth("a") == 0 })
}

func TestPermanentRefusalsAndIdempotentOutcomes(t *testing.T) {
	sender := &fakeSender{behave: func(_ context.Context, _ string, d delivery) (bool, error) {
		switch d.info.Key.Name {
		case "bad-digest":
			return false, fmt.Errorf("push: %w", storage.ErrDigestMismatch)
		case "bad-key":
			return false, fmt.Errorf("push: %w", storage.ErrInvalidKey)
		case "too-large":
			return false, fmt.Errorf("push: %w", storage.ErrTooLarge)
		case "stale":
			return false, fmt.Errorf("push: %w", storage.ErrStale)
		case "exists":
			return false, nil
		}
		return true, nil
	}}
	f := newFixture(t, fixtureOpts{sender: sender})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	f.run()
	for _, name := range []string{"bad-digest", "bad-key", "too-large", "stale", "exists", "fine"} {
		f.commit(f.put(name, name))
	}
	// An entry whose object is gone locally (cleaned, evicted) is dropped without a push.
	f.commit(Entry{Op: OpObject, Key: casKey("never-stored"), Version: 5})
	testsupport.WaitFor(t, "everything resolved", 20*time.Second, func() bool { return f.o.Depth("a") == 0 && len(f.queued("a")) == 0 })
	for _, c := range []struct {
		result string
		want   float64
	}{{resultDropped, 4}, {resultSkipped, 2}, {resultApplied, 1}, {resultError, 0}} {
		if got := f.pushes("a", "object", c.result); got != c.want {
			t.Errorf("%s pushes = %v, want %v", c.result, got, c.want)
		}
	}
	for _, d := range sender.to("A") {
		if d.info.Key.Name == "never-stored" {
			t.Fatalf("pushed an object the local store does not hold")
		}
	}
}

func TestLastWriterWinsEntrySupersededIsDropped(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	kv := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "doc"}
	older := putEntry(t, f.store, kv, `{"v":1}`)
	newer := putEntry(t, f.store, kv, `{"v":2}`)
	if newer.Version <= older.Version {
		t.Fatalf("versions did not grow: %v then %v", older.Version, newer.Version)
	}
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	f.commit(older)
	f.commit(newer)
	f.run()
	testsupport.WaitFor(t, "both entries resolved", 20*time.Second, func() bool { return f.o.Depth("a") == 0 })
	got := f.sender.to("A")
	if len(got) != 1 || got[0].info.Version != newer.Version || got[0].body != `{"v":2}` {
		t.Fatalf("deliveries = %+v, want only the newer version", got)
	}
	if n := f.pushes("a", "object", resultDropped); n != 1 {
		t.Fatalf("dropped = %v, want the superseded entry", n)
	}
}

// An immutable object's entry pushes the stored object while it is the write the entry stands
// for, and is dropped once a peer's earlier write (the cluster's first writer) replaced it:
// that write's origin pushes it, and pushing it from here would only repeat it.
func TestImmutableEntryPushesItsWriteOnly(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	kept := f.put("kept", "content")
	lost := f.put("lost", "our body")
	early := lost.Version - 1000
	if res, err := f.store.Put(context.Background(), lost.Key, strings.NewReader("their body"),
		storage.PutOptions{Size: 10, Version: early}); err != nil || !res.Created {
		t.Fatalf("replicated first writer = %+v, %v", res, err)
	}
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	f.commit(kept)
	f.commit(lost)
	f.run()
	testsupport.WaitFor(t, "both entries resolved", 20*time.Second, func() bool { return f.o.Depth("a") == 0 })
	got := f.sender.to("A")
	if len(got) != 1 || got[0].info.Key != kept.Key || got[0].info.Version != kept.Version || got[0].body != "content" {
		t.Fatalf("deliveries = %+v, want only the kept object", got)
	}
	if n := f.pushes("a", "object", resultDropped); n != 1 {
		t.Fatalf("dropped = %v, want the entry whose write lost", n)
	}
}

func TestDepartedPeerKeepsItsQueueAndResumes(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "old-addr"}, {Name: "b", Addr: "B"}})
	f.commit(f.put("before1", "x"), f.put("before2", "x"))
	f.o.SetTargets([]Target{{Name: "b", Addr: "B"}})
	f.commit(f.put("while-away", "x")) // queued for b only
	idle := &counter{}
	f.o.onIdle = idle.inc
	f.run()
	testsupport.WaitFor(t, "b delivered", 20*time.Second, func() bool { return len(f.sender.to("B")) == 3 })
	waitPasses(t, idle, "b", 2)
	if n := len(f.sender.to("old-addr")) + len(f.sender.to("new-addr")); n != 0 {
		t.Fatalf("departed peer received %d pushes", n)
	}
	if d := f.o.Depth("a"); d != 2 {
		t.Fatalf("departed peer's depth = %d, want 2 kept", d)
	}
	f.o.SetTargets([]Target{{Name: "a", Addr: "new-addr"}, {Name: "b", Addr: "B"}})
	testsupport.WaitFor(t, "a resumed at its new address", 20*time.Second, func() bool { return len(f.sender.to("new-addr")) == 2 })
	var names []string
	for _, d := range f.sender.to("new-addr") {
		names = append(names, d.info.Key.Name)
	}
	slices.Sort(names) // pushes run concurrently
	if strings.Join(names, ",") != "before1,before2" {
		t.Fatalf("returning peer got %v", names)
	}
}

func TestDropAfterDeletesDepartedPeersQueue(t *testing.T) {
	f := newFixture(t, fixtureOpts{mod: func(c *Config) { c.DropAfter = time.Hour }})
	sup := &counter{}
	f.o.onSupervise = func() { sup.inc("") }
	f.o.SetTargets([]Target{{Name: "gone", Addr: "G"}, {Name: "stays", Addr: "S"}})
	f.o.SetPaused(true) // keep the entries queued
	for i := range 30 {
		f.commit(f.put(fmt.Sprintf("k%d", i), "v"))
	}
	f.o.SetTargets([]Target{{Name: "stays", Addr: "S"}})
	f.run()
	f.clock.Advance(time.Hour - time.Second)
	waitPasses(t, sup, "", 2)
	if got := len(f.queued("gone")); got != 30 {
		t.Fatalf("queue dropped early: %d entries left", got)
	}
	f.clock.Advance(time.Second)
	testsupport.WaitFor(t, "the departed peer's queue to be dropped", 20*time.Second, func() bool { return len(f.queued("gone")) == 0 })
	testsupport.WaitFor(t, "the drop to be counted", 20*time.Second, func() bool { return testutil.ToFloat64(f.o.metrics.peersDropped) == 1 })
	if d := f.o.Depth("gone"); d != 0 {
		t.Fatalf("dropped peer depth = %d", d)
	}
	if got := len(f.queued("stays")); got != 30 {
		t.Fatalf("the live peer's queue changed: %d entries", got)
	}
	// The dropped peer's gauges disappear with it.
	if err := testutil.CollectAndCompare(f.o.metrics.queues, strings.NewReader(`
# HELP kura_outbox_depth Entries queued for a peer and not yet delivered.
# TYPE kura_outbox_depth gauge
kura_outbox_depth{peer="stays"} 30
`), "kura_outbox_depth"); err != nil {
		t.Fatal(err)
	}
	f.o.SetPaused(false)
	testsupport.WaitFor(t, "the live peer delivered", 20*time.Second, func() bool { return len(f.sender.to("S")) == 30 })
}

func TestRestoredQueueIsDroppedIfItsPeerNeverReturns(t *testing.T) {
	dir := t.TempDir() + "/meta"
	f := newFixture(t, fixtureOpts{dir: dir})
	f.o.SetTargets([]Target{{Name: "ghost", Addr: "G"}})
	f.commit(f.put("k", "v"))
	f.closeDB()
	db := openDB(t, dir)
	closeOnCleanup(t, db)
	clock := newFakeClock()
	o, err := New(Config{DB: db, Sender: f.sender, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if d := o.Depth("ghost"); d != 1 {
		t.Fatalf("restored depth = %d", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx, f.store) }()
	defer func() { cancel(); <-done }()
	clock.Advance(DefaultDropAfter)
	testsupport.WaitFor(t, "the ghost queue dropped", 20*time.Second, func() bool {
		entries, err := db.ScanOutbox(context.Background(), "ghost", 0, 10)
		return err == nil && len(entries) == 0
	})
	if n := len(f.sender.to("G")); n != 0 {
		t.Fatalf("pushed %d entries to a peer that never returned", n)
	}
}

func TestRestartResumesAndSequenceContinues(t *testing.T) {
	dir := t.TempDir() + "/meta"
	store := newMemoryStore()
	var accepted sync.Mutex
	okLeft := 4
	sender := &fakeSender{behave: func(_ context.Context, _ string, _ delivery) (bool, error) {
		accepted.Lock()
		defer accepted.Unlock()
		if okLeft == 0 {
			return false, errRefused
		}
		okLeft--
		return true, nil
	}}
	f := newFixture(t, fixtureOpts{dir: dir, store: store, sender: sender, mod: func(c *Config) { c.InFlight = 1 }})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	var names []string
	for i := range 10 {
		name := fmt.Sprintf("k%d", i)
		names = append(names, name)
		f.commit(f.put(name, "v"))
	}
	stop := f.run()
	testsupport.WaitFor(t, "4 deliveries persisted", 20*time.Second, func() bool { return len(sender.to("A")) == 4 && len(f.queued("a")) == 6 })
	stop()
	f.closeDB()

	f2 := newFixture(t, fixtureOpts{dir: dir, store: store, mod: func(c *Config) { c.InFlight = 1 }})
	if d := f2.o.Depth("a"); d != 6 {
		t.Fatalf("restored depth = %d, want 6", d)
	}
	f2.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	f2.commit(f2.put("after-restart", "v"))
	if got := f2.queued("a"); len(got) != 7 || got[0] != 5 || got[6] != 11 {
		t.Fatalf("queue after restart = %v, want 5..11", got)
	}
	f2.run()
	testsupport.WaitFor(t, "the rest delivered", 20*time.Second, func() bool { return len(f2.sender.to("A")) == 7 && f2.o.Depth("a") == 0 })
	var got []string
	for _, d := range f2.sender.to("A") {
		got = append(got, d.info.Key.Name)
	}
	if want := append(slices.Clone(names[4:]), "after-restart"); !slices.Equal(got, want) {
		t.Fatalf("delivered after restart %v, want %v", got, want)
	}
	testsupport.WaitFor(t, "queue deleted", 20*time.Second, func() bool { return len(f2.queued("a")) == 0 })
}

func TestPauseStopsDispatchAndResumes(t *testing.T) {
	gate := make(chan struct{})
	third := make(chan struct{})
	var n sync.Mutex
	calls := 0
	sender := &fakeSender{behave: func(ctx context.Context, _ string, _ delivery) (bool, error) {
		n.Lock()
		calls++
		c := calls
		n.Unlock()
		if c == 3 {
			close(third)
			select {
			case <-gate:
			case <-ctx.Done():
				return false, ctx.Err()
			}
		}
		return true, nil
	}}
	f := newFixture(t, fixtureOpts{sender: sender, mod: func(c *Config) { c.InFlight = 1 }})
	idle := &counter{}
	f.o.onIdle = idle.inc
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	f.o.SetPaused(true)
	if v := testutil.ToFloat64(f.o.metrics.paused); v != 1 {
		t.Fatalf("paused gauge = %v", v)
	}
	for i := range 10 {
		f.commit(f.put(fmt.Sprintf("k%d", i), "v"))
	}
	f.run()
	waitPasses(t, idle, "a", 3)
	if got := len(f.sender.to("A")); got != 0 {
		t.Fatalf("%d pushes while paused", got)
	}
	f.o.SetPaused(false)
	<-third // the third push is in flight
	f.o.SetPaused(true)
	close(gate)
	testsupport.WaitFor(t, "the in-flight push to finish", 20*time.Second, func() bool { return len(f.sender.to("A")) == 3 })
	waitPasses(t, idle, "a", 3)
	if got := len(f.sender.to("A")); got != 3 {
		t.Fatalf("%d pushes after pausing mid-page, want the 3 started before", got)
	}
	if d := f.o.Depth("a"); d != 7 {
		t.Fatalf("depth while paused = %d, want 7", d)
	}
	f.commit(f.put("while-paused", "v")) // enqueuing keeps working
	f.o.SetPaused(false)
	if v := testutil.ToFloat64(f.o.metrics.paused); v != 0 {
		t.Fatalf("paused gauge = %v after resume", v)
	}
	testsupport.WaitFor(t, "everything delivered after resume", 20*time.Second, func() bool { return len(f.sender.to("A")) == 11 && f.o.Depth("a") == 0 })
}

// Batches commit in any order: a worker that sees seq 2 before seq 1 must come back for 1 and
// must not delete it unseen.
func TestOutOfOrderCommitsAreNotSkipped(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	first, second := f.db.NewBatch(), f.db.NewBatch()
	defer first.Close()
	defer second.Close()
	if err := f.o.Enqueue(first, f.put("first", "1")); err != nil {
		t.Fatal(err)
	}
	if err := f.o.Enqueue(second, f.put("second", "2")); err != nil {
		t.Fatal(err)
	}
	if err := second.Commit(); err != nil {
		t.Fatal(err)
	}
	idle := &counter{}
	f.o.onIdle = idle.inc
	f.run()
	testsupport.WaitFor(t, "the second entry", 20*time.Second, func() bool { return len(f.sender.to("A")) == 1 })
	waitPasses(t, idle, "a", 2)
	if got := f.queued("a"); len(got) != 0 {
		t.Fatalf("queue while seq 1 is uncommitted = %v; the delivered seq 2 must be deleted", got)
	}
	if d := f.o.Depth("a"); d != 1 {
		t.Fatalf("depth = %d, want 1 for the entry still committing", d)
	}
	if err := first.Commit(); err != nil {
		t.Fatal(err)
	}
	f.o.Notify()
	testsupport.WaitFor(t, "the first entry", 20*time.Second, func() bool { return len(f.sender.to("A")) == 2 })
	if d := f.sender.to("A")[1]; d.info.Key.Name != "first" {
		t.Fatalf("second delivery = %s", d.info.Key.Name)
	}
	testsupport.WaitFor(t, "queue deleted", 20*time.Second, func() bool { return len(f.queued("a")) == 0 && f.o.Depth("a") == 0 })
}

// An abandoned batch (its write failed after Enqueue) leaves a number that never appears: the
// depth stops counting it after holeGrace and the queue is deleted past it.
func TestAbandonedBatchIsForgotten(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	abandoned := f.db.NewBatch()
	if err := f.o.Enqueue(abandoned, f.put("lost", "x")); err != nil {
		t.Fatal(err)
	}
	abandoned.Close()
	f.commit(f.put("kept", "y"))
	idle := &counter{}
	f.o.onIdle = idle.inc
	f.run()
	// The delivery is recorded before the worker deletes the entry: wait for both.
	testsupport.WaitFor(t, "the committed entry delivered and deleted", 20*time.Second, func() bool {
		return len(f.sender.to("A")) == 1 && f.o.Depth("a") == 1
	})
	waitPasses(t, idle, "a", 2) // rounds that saw the hole and kept it
	if d := f.o.Depth("a"); d != 1 {
		t.Fatalf("depth = %d, want 1 until the hole expires", d)
	}
	f.clock.Advance(holeGrace)
	testsupport.WaitFor(t, "the hole to expire", 20*time.Second, func() bool { return f.o.Depth("a") == 0 && len(f.queued("a")) == 0 })
}

// A batch that commits after its hole expired (an extraordinarily slow commit) is still
// delivered: expired holes are watched for lateWatch.
func TestLateCommitAfterExpiryIsStillDelivered(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	late := f.db.NewBatch()
	defer late.Close()
	if err := f.o.Enqueue(late, f.put("late", "x")); err != nil {
		t.Fatal(err)
	}
	f.commit(f.put("on-time", "y"))
	idle := &counter{}
	f.o.onIdle = idle.inc
	f.run()
	testsupport.WaitFor(t, "the on-time entry", 20*time.Second, func() bool { return len(f.sender.to("A")) == 1 })
	f.clock.Advance(holeGrace)
	testsupport.WaitFor(t, "the hole to expire", 20*time.Second, func() bool { return len(f.queued("a")) == 0 && f.o.Depth("a") == 0 })
	waitPasses(t, idle, "a", 2) // the round that expired it has also probed it
	if err := late.Commit(); err != nil {
		t.Fatal(err)
	}
	waitPasses(t, idle, "a", 2)
	if n := len(f.sender.to("A")); n != 1 {
		t.Fatalf("an expired hole was probed before its next probe time (%d deliveries)", n)
	}
	f.clock.Advance(holeGrace)
	testsupport.WaitFor(t, "the late entry delivered", 20*time.Second, func() bool { return len(f.sender.to("A")) == 2 })
	if d := f.sender.to("A")[1]; d.info.Key.Name != "late" {
		t.Fatalf("second delivery = %s", d.info.Key.Name)
	}
	testsupport.WaitFor(t, "the late entry deleted", 20*time.Second, func() bool { return len(f.queued("a")) == 0 && f.o.Depth("a") == 0 })
}

// damagingStore makes chosen entries look damaged the way meta reports it: the page stops
// before them with an error wrapping storage.ErrCorrupt.
type damagingStore struct {
	queueStore
	damaged map[uint64]bool
}

func (d damagingStore) ScanOutbox(ctx context.Context, peer string, after uint64, limit int) ([]meta.OutboxEntry, error) {
	page, err := d.queueStore.ScanOutbox(ctx, peer, after, limit)
	for i, e := range page {
		if d.damaged[e.Seq] {
			return page[:i], fmt.Errorf("scan outbox: peer %s seq %d: decode outbox entry: %w: CRC mismatch", peer, e.Seq, storage.ErrCorrupt)
		}
	}
	return page, err
}

func TestDamagedEntriesAreDroppedAndSkipped(t *testing.T) {
	// 4, 7 and 8 are damaged before start-up; 13 and 14 once the worker runs.
	damaged := map[uint64]bool{4: true, 7: true, 8: true, 13: true, 14: true}
	dir := t.TempDir() + "/meta"
	seed := newFixture(t, fixtureOpts{dir: dir})
	seed.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	for i := range 10 {
		seed.commit(seed.put(fmt.Sprintf("k%02d", i+1), "v"))
	}
	// An entry meta can read but this package cannot decode.
	b := seed.db.NewBatch()
	if err := b.PutOutbox("a", 11, []byte("not an entry")); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	seed.closeDB()

	f := newFixture(t, fixtureOpts{dir: dir, store: seed.store, wrap: func(q queueStore) queueStore {
		return damagingStore{queueStore: q, damaged: damaged}
	}})
	// Start-up deletes the three entries meta cannot read; the undecodable one is queued.
	if d := f.o.Depth("a"); d != 8 {
		t.Fatalf("restored depth = %d, want 8", d)
	}
	if n := f.pushes("a", "unknown", resultDropped); n != 3 {
		t.Fatalf("damaged entries dropped at start-up = %v, want 3", n)
	}
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	f.run()
	for i := 12; i <= 15; i++ {
		f.commit(f.put(fmt.Sprintf("k%02d", i), "v"))
	}
	testsupport.WaitFor(t, "all resolved", 20*time.Second, func() bool { return f.o.Depth("a") == 0 && len(f.queued("a")) == 0 })
	var got []string
	for _, d := range f.sender.to("A") {
		got = append(got, d.info.Key.Name)
	}
	slices.Sort(got) // pushes run concurrently
	if want := []string{"k01", "k02", "k03", "k05", "k06", "k09", "k10", "k12", "k15"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	if n := f.pushes("a", "unknown", resultDropped); n != 6 {
		t.Fatalf("dropped damaged entries = %v, want 6", n)
	}
}

func TestLocateDamagedFindsADamagedEntry(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	for i := range 300 {
		f.commit(Entry{Op: OpTombstone, Tombstone: storage.Tombstone{Tenant: "t", Namespace: fmt.Sprintf("n%d", i), Version: 1}})
	}
	for _, damaged := range [][]uint64{{1}, {2}, {77}, {255}, {300}, {77, 78, 79}, {1, 2, 3, 200}} {
		set := map[uint64]bool{}
		for _, s := range damaged {
			set[s] = true
		}
		f.o.db = damagingStore{queueStore: f.db, damaged: set}
		got, err := f.o.locateDamaged(context.Background(), "a", damaged[0]-1)
		if err != nil || !set[got] {
			t.Fatalf("damaged %v: located %d, %v", damaged, got, err)
		}
	}
	// No damage after from: an error, not a made-up number.
	f.o.db = f.db
	if got, err := f.o.locateDamaged(context.Background(), "a", 10); err == nil {
		t.Fatalf("located %d in an undamaged queue", got)
	}
}

func TestMetricsExposeDepthAndAge(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}, {Name: "b", Addr: "B"}})
	f.o.SetPaused(true)
	f.commit(f.put("k", "v"))
	f.clock.Advance(90 * time.Second)
	f.commit(f.put("k2", "v"))
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(`
# HELP kura_outbox_depth Entries queued for a peer and not yet delivered.
# TYPE kura_outbox_depth gauge
kura_outbox_depth{peer="a"} 2
kura_outbox_depth{peer="b"} 2
# HELP kura_outbox_oldest_entry_age_seconds Age of the oldest undelivered entry of a peer (0 when its queue is empty).
# TYPE kura_outbox_oldest_entry_age_seconds gauge
kura_outbox_oldest_entry_age_seconds{peer="a"} 90
kura_outbox_oldest_entry_age_seconds{peer="b"} 90
# HELP kura_outbox_dispatch_paused 1 while dispatch is paused by the hard memory watermark (entries keep queueing).
# TYPE kura_outbox_dispatch_paused gauge
kura_outbox_dispatch_paused 1
`), "kura_outbox_depth", "kura_outbox_oldest_entry_age_seconds", "kura_outbox_dispatch_paused"); err != nil {
		t.Fatal(err)
	}
	f.o.SetPaused(false)
	f.run()
	testsupport.WaitFor(t, "delivered", 20*time.Second, func() bool { return f.o.Depth("a") == 0 && f.o.Depth("b") == 0 })
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(`
# HELP kura_outbox_oldest_entry_age_seconds Age of the oldest undelivered entry of a peer (0 when its queue is empty).
# TYPE kura_outbox_oldest_entry_age_seconds gauge
kura_outbox_oldest_entry_age_seconds{peer="a"} 0
kura_outbox_oldest_entry_age_seconds{peer="b"} 0
`), "kura_outbox_oldest_entry_age_seconds"); err != nil {
		t.Fatal(err)
	}
	// Both writes reached both peers: two lag samples each, the first 90 s old at delivery.
	for _, peer := range []string{"a", "b"} {
		h := f.o.metrics.lag.WithLabelValues(peer).(prometheus.Histogram)
		var m dto.Metric
		if err := h.Write(&m); err != nil {
			t.Fatal(err)
		}
		if n, sum := m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum(); n != 2 || sum < 90 {
			t.Fatalf("replication lag of %s: %d samples summing to %v s, want 2 summing to at least 90", peer, n, sum)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	db := openDB(t, "")
	closeOnCleanup(t, db)
	store, sender := newMemoryStore(), &fakeSender{}
	for name, cfg := range map[string]Config{
		"no db":           {Sender: sender},
		"no sender":       {DB: db},
		"negative batch":  {DB: db, Sender: sender, Batch: -1},
		"inverted bounds": {DB: db, Sender: sender, MinBackoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	o, err := New(Config{DB: db, Sender: sender})
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Batch != DefaultBatch || o.cfg.InFlight != DefaultInFlight || o.cfg.DropAfter != DefaultDropAfter {
		t.Fatalf("defaults not applied: %+v", o.cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if err := o.Run(ctx, nil); err == nil {
		t.Fatal("Run accepted no local store")
	}
	go func() { done <- o.Run(ctx, store) }()
	testsupport.WaitFor(t, "Run to start", 20*time.Second, func() bool { return o.running.Load() })
	if err := o.Run(ctx, store); err == nil {
		t.Fatal("a second concurrent Run was accepted")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestEnqueueRejectsInvalidEntries(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	b := f.db.NewBatch()
	defer b.Close()
	if err := f.o.Enqueue(b, Entry{Op: OpObject, Key: storage.Key{Tenant: "x"}}); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("invalid key: err = %v", err)
	}
	if !b.Empty() {
		t.Fatal("a rejected entry was added to the batch")
	}
	// A tombstone entry takes its version from either field.
	if err := f.o.Enqueue(b, Entry{Op: OpTombstone, Tombstone: storage.Tombstone{Tenant: "t", Namespace: "n"}, Version: 9}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	entries, err := f.db.ScanOutbox(context.Background(), "a", 0, 10)
	if err != nil || len(entries) != 1 {
		t.Fatalf("scan: %v %v", entries, err)
	}
	e, err := DecodeEntry(entries[0].Value)
	if err != nil || e.Tombstone.Version != 9 || e.Version != 9 || !bytes.Equal([]byte(e.Tombstone.Namespace), []byte("n")) {
		t.Fatalf("decoded %+v, %v", e, err)
	}
}

// Concurrent writers commit their batches in any order: every entry is delivered exactly once
// and the queue ends empty.
func TestConcurrentWritersAreDeliveredExactlyOnce(t *testing.T) {
	f := newFixture(t, fixtureOpts{mod: func(c *Config) { c.Batch = 32 }})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}, {Name: "b", Addr: "B"}})
	f.run()
	const writers, each = 8, 300
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				e := f.put(fmt.Sprintf("w%d-%d", w, i), "v")
				b := f.db.NewBatch()
				if err := f.o.Enqueue(b, e); err != nil {
					t.Error(err)
				} else if err := b.Commit(); err != nil {
					t.Error(err)
				}
				b.Close()
				f.o.Notify()
			}
		}()
	}
	wg.Wait()
	for _, addr := range []string{"A", "B"} {
		testsupport.WaitFor(t, "every entry delivered to "+addr, 20*time.Second, func() bool { return len(f.sender.to(addr)) >= writers*each })
		seen := map[string]int{}
		for _, d := range f.sender.to(addr) {
			seen[d.info.Key.Name]++
		}
		if len(seen) != writers*each {
			t.Fatalf("%s received %d distinct keys, want %d", addr, len(seen), writers*each)
		}
		for k, n := range seen {
			if n != 1 {
				t.Fatalf("%s received %s %d times", addr, k, n)
			}
		}
	}
	testsupport.WaitFor(t, "queues empty", 20*time.Second, func() bool {
		return f.o.Depth("a") == 0 && f.o.Depth("b") == 0 && len(f.queued("a")) == 0 && len(f.queued("b")) == 0
	})
}

func TestFlushWaitsForPresentQueues(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	f.o.SetPaused(true)
	for i := range 5 {
		f.commit(f.put(fmt.Sprintf("k%d", i), "v"))
	}
	f.run()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := f.o.Flush(ctx); err == nil || !strings.Contains(err.Error(), "5 entries still queued") {
		t.Fatalf("Flush while paused: %v, want the deadline with 5 entries queued", err)
	}
	f.o.SetPaused(false)
	if err := f.o.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(f.sender.to("A")); got != 5 {
		t.Fatalf("%d delivered after Flush, want 5", got)
	}
	// A departed peer's queue is kept for its return, not flushed.
	f.o.SetTargets(nil)
	f.commit(f.put("after", "v"))
	if err := f.o.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A worker keeps exactly InFlight pushes going to its peer: the pipelining that lets a
// receiver's group commit share its syncs, and the bound that keeps one peer from taking more.
func TestInFlightPushesAreBounded(t *testing.T) {
	const inFlight = 5
	var cur, peak atomic.Int32
	release := make(chan struct{})
	sender := &fakeSender{behave: func(ctx context.Context, addr string, d delivery) (bool, error) {
		n := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-release:
			return true, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}}
	f := newFixture(t, fixtureOpts{sender: sender, mod: func(c *Config) { c.InFlight = inFlight }})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	for i := range 40 {
		f.commit(f.put(fmt.Sprintf("k%d", i), "v"))
	}
	f.run()
	testsupport.WaitFor(t, "InFlight pushes in flight", 20*time.Second, func() bool { return cur.Load() == inFlight })
	close(release)
	testsupport.WaitFor(t, "every entry delivered", 20*time.Second, func() bool { return len(sender.to("A")) == 40 && f.o.Depth("a") == 0 })
	if p := peak.Load(); p != inFlight {
		t.Fatalf("at most %d pushes were in flight, want exactly InFlight = %d", p, inFlight)
	}
}

// Large objects take a LargeInFlight slot as well: bandwidth, not round trips, bounds them.
func TestLargePushesInFlightAreBounded(t *testing.T) {
	const inFlight, large = 6, 2
	var cur, peak atomic.Int32
	release := make(chan struct{})
	sender := &fakeSender{behave: func(ctx context.Context, addr string, d delivery) (bool, error) {
		n := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-release:
			return true, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}}
	f := newFixture(t, fixtureOpts{sender: sender, mod: func(c *Config) { c.InFlight, c.LargeInFlight = inFlight, large }})
	f.o.SetTargets([]Target{{Name: "a", Addr: "A"}})
	body := strings.Repeat("x", largeObjectBytes+1)
	for i := range 10 {
		f.commit(f.put(fmt.Sprintf("big%d", i), body))
	}
	f.run()
	testsupport.WaitFor(t, "LargeInFlight pushes in flight", 20*time.Second, func() bool { return cur.Load() == large })
	close(release)
	testsupport.WaitFor(t, "every entry delivered", 20*time.Second, func() bool { return len(sender.to("A")) == 10 && f.o.Depth("a") == 0 })
	if p := peak.Load(); p != large {
		t.Fatalf("at most %d large pushes were in flight, want exactly LargeInFlight = %d", p, large)
	}
}
