package analytics

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/kuracache/kura/internal/testsupport"
)

// expectBody checks a received batch byte for byte against want, a list of events rendered
// without their event_id (which is random: it must be a fresh version-4 UUID per event).
func expectBody(t *testing.T, b batch, keyField string, want []Event, observedAt int64) {
	t.Helper()
	if len(b.events) != len(want) {
		t.Fatalf("batch to %s has %d events, want %d: %s", b.path, len(b.events), len(want), b.body)
	}
	parts := make([]string, len(want))
	for i, e := range want {
		id, _ := b.events[i]["event_id"].(string)
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 4 {
			t.Fatalf("event %d: event_id %q is not a random UUID: %v", i, id, err)
		}
		parts[i] = fmt.Sprintf(`{"account_handle":%q,"project_handle":%q,"action":%q,"size":%d,%q:%q,"event_id":%q,"observed_at_ms":%d}`,
			e.TenantID, e.NamespaceID, e.Action, e.Size, keyField, e.Key, id, observedAt)
	}
	if got, exp := string(b.body), `{"events":[`+strings.Join(parts, ",")+`]}`; got != exp {
		t.Fatalf("body to %s:\n got %s\nwant %s", b.path, got, exp)
	}
	if ct := b.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content-type = %q", ct)
	}
	if ep := b.header.Get("X-Cache-Endpoint"); ep != "node-a.example:4000" {
		t.Errorf("x-cache-endpoint = %q, want the node URL's host:port", ep)
	}
}

// TestBatchesAreSignedAndExact: a full batch is sent at once, the rest waits for the batch
// timeout (or the final flush); the receiver verifies each signature and the exact bytes.
func TestBatchesAreSignedAndExact(t *testing.T) {
	t.Run("batch size", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.BatchSize = 3 })
		at := f.clock.Now().UnixMilli()
		xs := []Event{xcodeEvent("cas-1", 10, Upload), xcodeEvent("cas-2", 20, Download), xcodeEvent("cas-3", 0, Upload), xcodeEvent("cas-4", 40, Upload)}
		gs := []Event{gradleEvent("k1", 1, Upload), gradleEvent("k2", 2, Download), gradleEvent("k3", 3, Download)}
		// Queued before Run, so the worker finds them together.
		for _, e := range append(append([]Event{}, xs...), gs...) {
			f.r.Record(e)
		}
		stop := f.run()
		testsupport.WaitFor(t, "a full batch per pipeline", 10*time.Second, func() bool {
			return len(f.rc.byPath(xcodePath)) == 1 && len(f.rc.byPath(gradlePath)) == 1
		})
		expectBody(t, f.rc.byPath(xcodePath)[0], "cas_id", xs[:3], at)
		expectBody(t, f.rc.byPath(gradlePath)[0], "cache_key", gs, at)
		// The worker settles a batch's depth once its request returned; cas-4 waits for the
		// batch timeout.
		testsupport.WaitFor(t, "xcode depth 1", 10*time.Second, func() bool { return value(f.r.xcode.m.depth) == 1 })
		stop()
		// The final flush sends the partial batch.
		xb := f.rc.byPath(xcodePath)
		if len(xb) != 2 {
			t.Fatalf("xcode batches after stop = %d, want 2", len(xb))
		}
		expectBody(t, xb[1], "cas_id", xs[3:], at)
		ids := map[string]bool{}
		for _, b := range f.rc.got() {
			for _, e := range b.events {
				ids[e["event_id"].(string)] = true
			}
		}
		if len(ids) != len(xs)+len(gs) {
			t.Errorf("%d distinct event ids for %d events", len(ids), len(xs)+len(gs))
		}
		if ok := value(f.r.xcode.m.batchOK) + value(f.r.gradle.m.batchOK); ok != 3 {
			t.Errorf("ok batches = %v, want 3", ok)
		}
		if d := value(f.r.xcode.m.depth) + value(f.r.gradle.m.depth); d != 0 {
			t.Errorf("depth after delivery = %v", d)
		}
	})

	t.Run("batch timeout", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.BatchSize = 100; c.BatchTimeout = 50 * time.Millisecond })
		at := f.clock.Now().UnixMilli()
		xs := []Event{xcodeEvent("a", 1, Upload), xcodeEvent("b", 2, Download)}
		gs := []Event{gradleEvent("c", 3, Upload)}
		for _, e := range append(append([]Event{}, xs...), gs...) {
			f.r.Record(e)
		}
		f.run()
		// Run is still running: these can only have been sent by the timeout.
		testsupport.WaitFor(t, "the partial batches", 10*time.Second, func() bool {
			return len(f.rc.byPath(xcodePath)) == 1 && len(f.rc.byPath(gradlePath)) == 1
		})
		expectBody(t, f.rc.byPath(xcodePath)[0], "cas_id", xs, at)
		expectBody(t, f.rc.byPath(gradlePath)[0], "cache_key", gs, at)
		// Size histogram: one batch of 2 and one of 1.
		if n := histCount(t, f, "kura_analytics_batch_size"); n != 2 {
			t.Errorf("batch size observations = %d, want 2", n)
		}
	})
}

// histCount sums the sample counts of a histogram family in the fixture's registry.
func histCount(t *testing.T, f *fixture, name string) uint64 {
	t.Helper()
	fams, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, fam := range fams {
		if fam.GetName() == name {
			for _, m := range fam.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// TestQueueFullDropsAndCounts: a full queue drops (and counts) instead of waiting, Record does
// not allocate either way, and the queued events are delivered once Run starts.
func TestQueueFullDropsAndCounts(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueCapacity = 4; c.BatchSize = 4; c.BatchTimeout = 20 * time.Millisecond })
	for i := range 10 {
		f.r.Record(xcodeEvent(fmt.Sprint("k", i), 1, Upload))
	}
	f.r.Record(gradleEvent("g", 1, Upload))
	m := f.r.xcode.m
	if got := [3]float64{value(m.enqueued), value(m.droppedFull), value(m.depth)}; got != [3]float64{4, 6, 4} {
		t.Fatalf("xcode enqueued, dropped queue_full, depth = %v, want [4 6 4]", got)
	}
	if d := value(f.r.gradle.m.depth); d != 1 {
		t.Fatalf("gradle depth = %v: pipelines must not share a queue", d)
	}
	if allocs := testing.AllocsPerRun(100, func() { f.r.Record(xcodeEvent("full", 1, Upload)) }); allocs != 0 {
		t.Errorf("Record on a full queue allocates %v times", allocs)
	}
	if d := value(m.droppedFull); d != 6+101 {
		t.Errorf("dropped queue_full = %v, want %d", d, 6+101)
	}

	f.run()
	testsupport.WaitFor(t, "the queued events to be delivered", 10*time.Second, func() bool {
		return value(m.depth) == 0 && value(f.r.gradle.m.depth) == 0
	})
	if b := f.rc.byPath(xcodePath); len(b) != 1 || len(b[0].events) != 4 {
		t.Fatalf("xcode batches = %d, want one of the 4 queued events", len(b))
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.QueueCapacity = 1000 })
	e := gradleEvent("key", 123, Download)
	if allocs := testing.AllocsPerRun(100, func() { f.r.Record(e) }); allocs != 0 {
		t.Errorf("Record allocates %v times", allocs)
	}
	if n := value(f.r.gradle.m.enqueued); n != 101 {
		t.Errorf("enqueued = %v, want 101", n)
	}
}

func TestNilReporterAndInvalidEventsAreIgnored(t *testing.T) {
	var r *Reporter
	r.Record(xcodeEvent("k", 1, Upload)) // must not panic

	f := newFixture(t, nil)
	f.r.Record(Event{Pipeline: "bazel", Action: Upload, Key: "k"})
	f.r.Record(Event{Pipeline: Xcode, Action: "delete", Key: "k"})
	if n := value(f.r.xcode.m.enqueued) + value(f.r.gradle.m.enqueued); n != 0 {
		t.Fatalf("invalid events enqueued: %v", n)
	}
}

// TestBreakerOpensStaysOpenAndRecovers drives the breaker with the injected clock: it opens
// after the threshold of failed batches, lets nothing through while open, half-opens for one
// trial after BreakerOpen, re-opens when the trial fails and closes when one succeeds.
func TestBreakerOpensStaysOpenAndRecovers(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.BreakerFailureThreshold = 3; c.BreakerOpen = time.Minute })
	f.rc.status.Store(500)
	m := f.r.gradle.m
	f.run()
	record := func(key string) { f.r.Record(gradleEvent(key, 1, Upload)) }
	states := func() [4]float64 {
		return [4]float64{value(m.breakerState), value(m.transitions[open]), value(m.transitions[halfOpen]), value(m.transitions[closed])}
	}

	for i := 1; i <= 3; i++ {
		if s := value(m.breakerState); s != 0 {
			t.Fatalf("breaker state after %d failures = %v, want closed", i-1, s)
		}
		record(fmt.Sprint("fail-", i))
		testsupport.WaitFor(t, fmt.Sprintf("failed batch %d", i), 10*time.Second, func() bool { return value(m.batchError) == float64(i) })
	}
	if got := states(); got != [4]float64{1, 1, 0, 0} {
		t.Fatalf("state, to open, to half_open, to closed = %v after the threshold, want [1 1 0 0]", got)
	}
	if logs := f.logs.String(); lines(logs, "level=WARN") != 1 || !strings.Contains(logs, "circuit breaker open") || !strings.Contains(logs, "status 500") {
		t.Fatalf("want one WARN naming the last error, got:\n%s", logs)
	}

	// Open: batches are dropped without a request.
	for i := range 4 {
		record(fmt.Sprint("while-open-", i))
	}
	testsupport.WaitFor(t, "batches skipped while open", 10*time.Second, func() bool { return value(m.batchSkipped) == 4 })
	if n := f.rc.requests.Load(); n != 3 {
		t.Fatalf("receiver saw %d requests, want 3: nothing may be sent while open", n)
	}
	if d := value(m.droppedBreaker); d != 4 {
		t.Fatalf("dropped breaker_open = %v, want 4", d)
	}

	// Half-open: one trial, which fails and re-opens the breaker for another period.
	f.clock.Advance(time.Minute)
	record("trial-1")
	testsupport.WaitFor(t, "the failed trial", 10*time.Second, func() bool { return value(m.batchError) == 4 })
	if got := states(); got != [4]float64{1, 2, 1, 0} {
		t.Fatalf("after a failed trial: %v, want [1 2 1 0]", got)
	}
	record("still-open")
	testsupport.WaitFor(t, "a batch skipped after the failed trial", 10*time.Second, func() bool { return value(m.batchSkipped) == 5 })
	if n := f.rc.requests.Load(); n != 4 {
		t.Fatalf("receiver saw %d requests, want 4", n)
	}

	// The server recovers; the next trial closes the breaker and traffic flows again.
	f.clock.Advance(time.Minute)
	f.rc.status.Store(0)
	record("trial-2")
	testsupport.WaitFor(t, "the successful trial", 10*time.Second, func() bool { return value(m.batchOK) == 1 })
	if got := states(); got != [4]float64{0, 2, 2, 1} {
		t.Fatalf("after a successful trial: %v, want [0 2 2 1]", got)
	}
	record("after-1")
	record("after-2")
	testsupport.WaitFor(t, "batches after recovery", 10*time.Second, func() bool { return value(m.batchOK) == 3 })
	logs := f.logs.String()
	if lines(logs, "level=WARN") != 2 || lines(logs, "circuit breaker closed") != 1 {
		t.Fatalf("want two WARNs (two openings) and one INFO for the close, got:\n%s", logs)
	}
	if xs := value(f.r.xcode.m.breakerState); xs != 0 {
		t.Fatalf("xcode breaker = %v: pipelines must not share a breaker", xs)
	}
}

// TestBreakerHalfOpensOnTimeWithRealClock: with real short durations the breaker half-opens
// when its period ends even without traffic, so the gauge is never stale.
func TestBreakerHalfOpensOnTimeWithRealClock(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Now = nil
		c.BreakerFailureThreshold = 2
		c.BreakerOpen = 100 * time.Millisecond
	})
	f.rc.status.Store(503)
	m := f.r.xcode.m
	f.run()
	for i := 1; i <= 2; i++ {
		f.r.Record(xcodeEvent(fmt.Sprint("k", i), 1, Upload))
		testsupport.WaitFor(t, "a failed batch", 10*time.Second, func() bool { return value(m.batchError) == float64(i) })
	}
	if s := value(m.breakerState); s != 1 {
		t.Fatalf("state = %v, want open", s)
	}
	testsupport.WaitFor(t, "the breaker to half-open by itself", 10*time.Second, func() bool { return value(m.breakerState) == 2 })
	f.rc.status.Store(0)
	f.r.Record(xcodeEvent("trial", 1, Upload))
	testsupport.WaitFor(t, "the breaker to close", 10*time.Second, func() bool { return value(m.breakerState) == 0 })
	if got := [3]float64{value(m.transitions[open]), value(m.transitions[halfOpen]), value(m.transitions[closed])}; got != [3]float64{1, 1, 1} {
		t.Fatalf("transitions open, half_open, closed = %v, want [1 1 1]", got)
	}
}

// TestHangingReceiver: a server that accepts and never answers neither blocks Record nor costs
// a batch more than RequestTimeout.
func TestHangingReceiver(t *testing.T) {
	t.Run("Record does not wait for the worker", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.QueueCapacity = 8 })
		f.rc.hang.Store(true)
		f.run()
		f.r.Record(xcodeEvent("first", 1, Upload))
		testsupport.WaitFor(t, "the first request to hang", 10*time.Second, func() bool { return f.rc.inFlight.Load() == 1 })
		for i := range 10000 {
			f.r.Record(xcodeEvent(fmt.Sprint("k", i), 1, Upload))
		}
		// Every Record returned while the only consumer was stuck in the first request.
		if n, in := f.rc.requests.Load(), f.rc.inFlight.Load(); n != 1 || in != 1 {
			t.Fatalf("requests %d, in flight %d: want the first request still hanging", n, in)
		}
		m := f.r.xcode.m
		if got := [2]float64{value(m.enqueued), value(m.droppedFull)}; got != [2]float64{1 + 8, 10000 - 8} {
			t.Fatalf("enqueued, dropped queue_full = %v, want [9 9992]", got)
		}
		f.rc.hang.Store(false)
		f.rc.unblock()
		testsupport.WaitFor(t, "the queue to drain after the release", 10*time.Second, func() bool { return value(m.depth) == 0 })
	})

	t.Run("a batch costs at most RequestTimeout", func(t *testing.T) {
		const timeout = 150 * time.Millisecond
		f := newFixture(t, func(c *Config) { c.RequestTimeout = timeout })
		f.rc.hang.Store(true)
		f.run()
		for i := range 3 {
			f.r.Record(gradleEvent(fmt.Sprint("k", i), 1, Upload))
		}
		m := f.r.gradle.m
		testsupport.WaitFor(t, "three abandoned batches", 10*time.Second, func() bool { return value(m.batchError) == 3 })
		if d := value(m.droppedFailed); d != 3 {
			t.Fatalf("dropped send_failed = %v, want 3", d)
		}
		var held []time.Duration
		testsupport.WaitFor(t, "the receiver to see the abandoned requests end", 10*time.Second, func() bool {
			f.rc.mu.Lock()
			defer f.rc.mu.Unlock()
			held = append(held[:0], f.rc.held...)
			return len(held) == 3
		})
		for i, h := range held {
			t.Logf("hanging request %d was abandoned after %s (timeout %s)", i, h.Round(time.Millisecond), timeout)
			// A safety bound only: the client must give up, not wait forever.
			if h > timeout+3*time.Second {
				t.Errorf("request %d held %s, far beyond the %s request timeout", i, h, timeout)
			}
		}
	})
}

// TestRunFlushesOnCancel: cancelling Run sends what is queued once more, and a server that
// hangs during that flush delays Run's return by at most min(RequestTimeout, 2 s).
func TestRunFlushesOnCancel(t *testing.T) {
	t.Run("queued events are sent", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.BatchSize = 100 })
		stop := f.run()
		for i := range 3 {
			f.r.Record(xcodeEvent(fmt.Sprint("x", i), 1, Upload))
		}
		f.r.Record(gradleEvent("g0", 1, Download))
		f.r.Record(gradleEvent("g1", 1, Download))
		stop()
		xb, gb := f.rc.byPath(xcodePath), f.rc.byPath(gradlePath)
		if len(xb) != 1 || len(xb[0].events) != 3 || len(gb) != 1 || len(gb[0].events) != 2 {
			t.Fatalf("after stop: %d xcode batches, %d gradle batches; want one of 3 and one of 2", len(xb), len(gb))
		}
	})

	t.Run("a long queue is flushed in batches", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.BatchSize = 2 })
		for i := range 5 {
			f.r.Record(gradleEvent(fmt.Sprint("g", i), 1, Upload))
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := f.r.Run(ctx); err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for _, b := range f.rc.byPath(gradlePath) {
			sizes = append(sizes, len(b.events))
		}
		if fmt.Sprint(sizes) != "[2 2 1]" {
			t.Fatalf("batch sizes = %v, want [2 2 1]", sizes)
		}
	})

	t.Run("the flush is bounded", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.RequestTimeout = time.Minute })
		f.rc.hang.Store(true)
		stop := f.run()
		f.r.Record(xcodeEvent("hangs", 1, Upload))
		testsupport.WaitFor(t, "the request to hang", 10*time.Second, func() bool { return f.rc.inFlight.Load() == 1 })
		f.r.Record(xcodeEvent("queued-1", 1, Upload))
		f.r.Record(xcodeEvent("queued-2", 1, Upload))
		took := stop()
		t.Logf("Run returned %s after cancel with a hanging server (request timeout 1m, flush limit %s)", took.Round(time.Millisecond), maxFlushTime)
		if took > maxFlushTime+3*time.Second {
			t.Fatalf("Run took %s to return after cancel", took)
		}
		m := f.r.xcode.m
		if got := [3]float64{value(m.droppedFailed), value(m.depth), value(m.breakerState)}; got != [3]float64{3, 0, 0} {
			t.Fatalf("dropped send_failed, depth, breaker = %v, want [3 0 0] (a cut-off flush does not blame the server)", got)
		}
	})
}

func TestRunTwice(t *testing.T) {
	f := newFixture(t, nil)
	f.run()
	testsupport.WaitFor(t, "Run to start", 10*time.Second, func() bool { return f.r.running.Load() })
	if err := f.r.Run(context.Background()); err == nil {
		t.Fatal("a second concurrent Run succeeded")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := Config{ServerURL: "https://analytics.example", SigningKey: "k", NodeURL: "http://node:4000"}
	for name, mod := range map[string]func(*Config){
		"no server":        func(c *Config) { c.ServerURL = "" },
		"not http":         func(c *Config) { c.ServerURL = "ftp://x" },
		"no key":           func(c *Config) { c.SigningKey = "" },
		"no node URL":      func(c *Config) { c.NodeURL = "" },
		"negative batch":   func(c *Config) { c.BatchSize = -1 },
		"negative timeout": func(c *Config) { c.RequestTimeout = -time.Second },
	} {
		cfg := ok
		mod(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	r, err := New(ok)
	if err != nil {
		t.Fatalf("New(%+v): %v", ok, err)
	}
	if r.cfg.BatchSize != DefaultBatchSize || r.cfg.BreakerOpen != DefaultBreakerOpen || r.flushLimit != maxFlushTime {
		t.Errorf("defaults not applied: %+v", r.cfg)
	}
	if r.ServerURL() != "https://analytics.example" {
		t.Errorf("ServerURL = %q", r.ServerURL())
	}
}

// BenchmarkRecord is the cost Record adds to a request, with room in the queue (a worker
// drains it) and with the queue full (every event dropped).
func BenchmarkRecord(b *testing.B) {
	e := xcodeEvent("0123456789abcdef0123456789abcdef", 4096, Upload)
	b.Run("enqueue", func(b *testing.B) {
		f := newFixture(b, func(c *Config) { c.BatchSize = 1000; c.QueueCapacity = 10000; c.BatchTimeout = 10 * time.Millisecond })
		f.run()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				f.r.Record(e)
			}
		})
	})
	b.Run("queue full", func(b *testing.B) {
		f := newFixture(b, func(c *Config) { c.QueueCapacity = 1 })
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				f.r.Record(e)
			}
		})
	})
}
