package memory

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSampler returns a settable value, or an error while fail is set.
type fakeSampler struct {
	v     atomic.Int64
	fail  atomic.Bool
	calls atomic.Int64
}

func (f *fakeSampler) Sample() (int64, error) {
	f.calls.Add(1)
	if f.fail.Load() {
		return 0, errors.New("statm unreadable")
	}
	return f.v.Load(), nil
}

// harness is a controller over a fake sampler and clock that records every reaction in order.
type harness struct {
	t       *testing.T
	c       *Controller
	s       *fakeSampler
	clock   *testsupport.Clock
	reg     *prometheus.Registry
	logs    *testsupport.LockedBuffer
	mu      sync.Mutex
	events  []string
	freeOS  atomic.Int64
	limits  []int64
	limitMu sync.Mutex
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, s: &fakeSampler{}, clock: testsupport.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)), reg: prometheus.NewRegistry(), logs: &testsupport.LockedBuffer{}}
	cfg := Config{
		Soft: 1000, Hard: 2000, Sample: h.s.Sample, Now: h.clock.Now,
		FreeOSMemory: func() { h.freeOS.Add(1); h.record("freeos") },
		SetMemoryLimit: func(n int64) int64 {
			h.limitMu.Lock()
			defer h.limitMu.Unlock()
			h.limits = append(h.limits, n)
			return math.MaxInt64
		},
		Logger:     slog.New(slog.NewTextHandler(h.logs, nil)),
		Registerer: h.reg,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	c.OnSoft(func(entered bool) { h.record(map[bool]string{true: "soft+", false: "soft-"}[entered]) })
	c.OnHard(func(entered bool) { h.record(map[bool]string{true: "hard+", false: "hard-"}[entered]) })
	c.OnTrim(func() { h.record("trim") })
	return h
}

func (h *harness) record(e string) {
	h.mu.Lock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

// take returns and clears the recorded events.
func (h *harness) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.events
	h.events = nil
	return out
}

// at samples v and checks the resulting band and the reactions it ran.
func (h *harness) at(v int64, want State, events ...string) {
	h.t.Helper()
	h.s.v.Store(v)
	got, err := h.c.Check()
	if err != nil {
		h.t.Fatalf("Check at %d: %v", v, err)
	}
	if got != want || h.c.State() != want {
		h.t.Fatalf("at %d: Check = %v, State = %v, want %v", v, got, h.c.State(), want)
	}
	if ev := h.take(); strings.Join(ev, ",") != strings.Join(events, ",") {
		h.t.Fatalf("at %d: reactions %v, want %v", v, ev, events)
	}
}

func (h *harness) gauge(name string) float64 {
	h.t.Helper()
	switch name {
	case "state":
		return testutil.ToFloat64(h.c.m.state)
	case "usage":
		return testutil.ToFloat64(h.c.m.usage)
	}
	h.t.Fatalf("unknown gauge %s", name)
	return 0
}

func (h *harness) action(a string) float64 {
	return testutil.ToFloat64(h.c.m.actions.WithLabelValues(a))
}
func (h *harness) into(s State) float64 {
	return testutil.ToFloat64(h.c.m.transitions.WithLabelValues(s.String()))
}

func TestNewRejectsBadConfigs(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no soft", Config{Hard: 10}, "soft watermark must be positive"},
		{"hard below soft", Config{Soft: 10, Hard: 9}, "below the soft watermark"},
		{"negative interval", Config{Soft: 1, Hard: 1, Interval: -1}, "negative interval"},
		{"hysteresis one", Config{Soft: 1, Hard: 1, Hysteresis: 1}, "hysteresis"},
		{"hysteresis NaN", Config{Soft: 1, Hard: 1, Hysteresis: math.NaN()}, "hysteresis"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Sample = func() (int64, error) { return 0, nil }
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Every problem is reported at once.
	_, err := New(Config{Soft: -1, Hard: -2, Hysteresis: 2, Sample: func() (int64, error) { return 0, nil }})
	for _, want := range []string{"soft watermark", "below the soft", "hysteresis"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New = %v, want it to mention %q", err, want)
		}
	}
}

// Soft 1000 (left below 950), hard 2000 (left below 1900) with the default 5 % hysteresis.
func TestBandsAndHysteresis(t *testing.T) {
	h := newHarness(t, nil)
	if h.c.State() != Normal {
		t.Fatalf("initial state %v", h.c.State())
	}
	h.at(999, Normal)
	h.at(1000, Soft, "soft+")
	h.at(951, Soft) // within the margin: no flapping
	h.at(999, Soft)
	h.at(949, Normal, "soft-")
	h.at(1999, Soft, "soft+")
	h.at(2000, Hard, "hard+", "trim", "freeos")
	h.at(1901, Hard)
	h.at(1899, Soft, "hard-")
	h.at(950, Soft)
	h.at(2500, Hard, "hard+") // the last trim was less than TrimInterval ago
	h.at(10, Normal, "hard-", "soft-")
	h.at(5000, Hard, "soft+", "hard+")
	h.clock.Advance(DefaultTrimInterval)
	h.at(1950, Hard, "trim", "freeos")

	for gauge, want := range map[string]float64{"state": 2, "usage": 1950} {
		if got := h.gauge(gauge); got != want {
			t.Errorf("%s gauge = %v, want %v", gauge, got, want)
		}
	}
	for s, want := range map[State]float64{Normal: 2, Soft: 3, Hard: 3} {
		if got := h.into(s); got != want {
			t.Errorf("transitions to %v = %v, want %v", s, got, want)
		}
	}
	for a, want := range map[string]float64{ActionShed: 3, ActionRestore: 2, ActionPause: 3, ActionResume: 2, ActionTrim: 2} {
		if got := h.action(a); got != want {
			t.Errorf("action %s = %v, want %v", a, got, want)
		}
	}
	if n := testutil.ToFloat64(h.c.m.soft); n != 1000 {
		t.Errorf("soft limit gauge = %v", n)
	}
	if n := testutil.ToFloat64(h.c.m.hard); n != 2000 {
		t.Errorf("hard limit gauge = %v", n)
	}
	logs := h.logs.String()
	for _, want := range []string{"memory above the hard watermark", "memory above the soft watermark",
		"memory back below the hard watermark", "memory back to normal", "go_heap_live_bytes="} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// With soft == hard (an operator's choice) the bands collapse: entering is one step, and
// leaving hard below its exit level goes straight to normal.
func TestEqualWatermarks(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Soft, c.Hard, c.Hysteresis = 1000, 1000, 0.1 })
	h.at(1000, Hard, "soft+", "hard+", "trim", "freeos")
	h.at(901, Hard)
	h.at(899, Normal, "hard-", "soft-")
}

func TestTrimIsSpacedWhileHard(t *testing.T) {
	h := newHarness(t, nil)
	h.at(3000, Hard, "soft+", "hard+", "trim", "freeos")
	h.clock.Advance(DefaultTrimInterval - time.Millisecond)
	h.at(3000, Hard)
	h.clock.Advance(time.Millisecond)
	h.at(3000, Hard, "trim", "freeos")
	h.clock.Advance(time.Second)
	h.at(1000, Soft, "hard-")
	h.at(3000, Hard, "hard+") // back within the interval: no second trim yet
	h.clock.Advance(DefaultTrimInterval)
	h.at(3000, Hard, "trim", "freeos")
	if n := h.freeOS.Load(); n != 3 {
		t.Fatalf("FreeOSMemory ran %d times, want 3", n)
	}
}

func TestFailedSampleKeepsTheBand(t *testing.T) {
	h := newHarness(t, nil)
	h.at(2500, Hard, "soft+", "hard+", "trim", "freeos")
	h.s.fail.Store(true)
	for range 3 {
		st, err := h.c.Check()
		if err == nil || !strings.Contains(err.Error(), "statm unreadable") || st != Hard {
			t.Fatalf("Check with a failing sampler = %v, %v", st, err)
		}
	}
	if ev := h.take(); len(ev) != 0 {
		t.Fatalf("reactions on failed samples: %v", ev)
	}
	if n := testutil.ToFloat64(h.c.m.sampleErrors); n != 3 {
		t.Fatalf("sample errors = %v, want 3", n)
	}
	if n := strings.Count(h.logs.String(), "cannot sample memory use"); n != 1 {
		t.Fatalf("the failure was logged %d times, want once per run of failures", n)
	}
	h.s.fail.Store(false)
	h.at(10, Normal, "hard-", "soft-")
	if !strings.Contains(h.logs.String(), "memory sampling works again") {
		t.Fatal("recovery not logged")
	}
	// A negative figure is a broken sampler, not low memory use.
	h.s.v.Store(-1)
	if _, err := h.c.Check(); err == nil {
		t.Fatal("negative sample accepted")
	}
}

// A reaction registered while its band is active catches up at once, so wiring order cannot
// leave work running above the hard watermark.
func TestLateRegistrationCatchesUp(t *testing.T) {
	h := newHarness(t, nil)
	h.at(2500, Hard, "soft+", "hard+", "trim", "freeos")
	var soft, hard []bool
	h.c.OnSoft(func(e bool) { soft = append(soft, e) })
	h.c.OnHard(func(e bool) { hard = append(hard, e) })
	if len(soft) != 1 || !soft[0] || len(hard) != 1 || !hard[0] {
		t.Fatalf("late reactions got soft %v hard %v, want [true] each", soft, hard)
	}
	h.at(0, Normal, "hard-", "soft-")
	if len(soft) != 2 || soft[1] || len(hard) != 2 || hard[1] {
		t.Fatalf("late reactions after leaving: soft %v hard %v", soft, hard)
	}
}

type fakeWork struct {
	mu    sync.Mutex
	calls []bool
}

func (f *fakeWork) SetPaused(p bool) {
	f.mu.Lock()
	f.calls = append(f.calls, p)
	f.mu.Unlock()
}

func TestPauseOnHard(t *testing.T) {
	h := newHarness(t, nil)
	ob, ae := &fakeWork{}, &fakeWork{}
	h.c.PauseOnHard("outbox", ob)
	h.c.PauseOnHard("antientropy", ae)
	paused := func(work string) float64 { return testutil.ToFloat64(h.c.m.paused.WithLabelValues(work)) }
	if paused("outbox") != 0 || paused("antientropy") != 0 {
		t.Fatal("paused gauges not initialised to 0")
	}
	h.at(1500, Soft, "soft+")
	if len(ob.calls) != 0 {
		t.Fatalf("soft band paused work: %v", ob.calls)
	}
	h.at(2100, Hard, "hard+", "trim", "freeos")
	if paused("outbox") != 1 || paused("antientropy") != 1 || len(ob.calls) != 1 || !ob.calls[0] || !ae.calls[0] {
		t.Fatalf("after entering hard: gauges %v/%v, calls %v %v", paused("outbox"), paused("antientropy"), ob.calls, ae.calls)
	}
	h.at(100, Normal, "hard-", "soft-")
	if paused("outbox") != 0 || paused("antientropy") != 0 || len(ob.calls) != 2 || ob.calls[1] || ae.calls[1] {
		t.Fatalf("after leaving hard: gauges %v/%v, calls %v %v", paused("outbox"), paused("antientropy"), ob.calls, ae.calls)
	}
	// Registered while hard: paused at once.
	h.at(2100, Hard, "soft+", "hard+")
	late := &fakeWork{}
	h.c.PauseOnHard("late", late)
	if len(late.calls) != 1 || !late.calls[0] || paused("late") != 1 {
		t.Fatalf("late work: calls %v gauge %v", late.calls, paused("late"))
	}
}

func TestMetricNames(t *testing.T) {
	h := newHarness(t, nil)
	h.c.PauseOnHard("outbox", &fakeWork{})
	h.at(2000, Hard, "soft+", "hard+", "trim", "freeos")
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{"kura_memory_usage_bytes", "kura_memory_soft_limit_bytes", "kura_memory_hard_limit_bytes",
		"kura_memory_watermark_state", "kura_memory_watermark_transitions_total", "kura_memory_actions_total",
		"kura_background_work_paused", "kura_memory_sample_errors_total"} {
		if !got[name] {
			t.Errorf("metric %s not registered", name)
		}
	}
	// A second controller on the same registry is a clear error, not a panic.
	if _, err := New(Config{Soft: 1, Hard: 1, Sample: h.s.Sample, Registerer: h.reg}); err == nil {
		t.Fatal("duplicate registration accepted")
	}
}

func TestRunSamplesSetsTheGoLimitAndStops(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Interval = time.Millisecond
		c.GoMemoryLimit = 2000
	})
	h.s.v.Store(2500)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Run(ctx) }()
	testsupport.WaitFor(t, "the hard band", 10*time.Second, func() bool { return h.c.State() == Hard })
	if err := h.c.Run(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second Run = %v", err)
	}
	h.s.v.Store(100)
	testsupport.WaitFor(t, "the normal band", 10*time.Second, func() bool { return h.c.State() == Normal })
	if h.c.Usage() != 100 {
		t.Fatalf("Usage = %d", h.c.Usage())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	h.limitMu.Lock()
	defer h.limitMu.Unlock()
	if len(h.limits) != 2 || h.limits[0] != 2000 || h.limits[1] != math.MaxInt64 {
		t.Fatalf("SetMemoryLimit calls %v, want [2000, the previous limit]", h.limits)
	}
}

// Without GoMemoryLimit the runtime's limit is left alone (the operator set GOMEMLIMIT).
func TestRunLeavesTheGoLimitAlone(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Interval = time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Run(ctx) }()
	testsupport.WaitFor(t, "three samples", 10*time.Second, func() bool { return h.s.calls.Load() >= 3 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.limitMu.Lock()
	defer h.limitMu.Unlock()
	if len(h.limits) != 0 {
		t.Fatalf("SetMemoryLimit called: %v", h.limits)
	}
}
