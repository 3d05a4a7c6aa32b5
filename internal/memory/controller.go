package memory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// State is the watermark band memory use is in.
type State int32

// The bands, in increasing order of pressure.
const (
	// Normal: below the soft watermark (or not yet far enough below it after being above).
	Normal State = iota
	// Soft: at or above the soft watermark; optional memory use is shed.
	Soft
	// Hard: at or above the hard watermark; background work is paused and caches trimmed.
	Hard
)

func (s State) String() string {
	switch s {
	case Normal:
		return "normal"
	case Soft:
		return "soft"
	case Hard:
		return "hard"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Defaults for Config fields left at zero, with the reason for each.
const (
	// DefaultInterval between samples: reading statm or two cgroup files costs microseconds,
	// and a burst of concurrent requests (keyvalue documents and gRPC batches are buffered)
	// can grow memory by hundreds of MiB within a second or two, so a quarter second catches
	// it well before it can run from the hard watermark to the limit.
	DefaultInterval = 250 * time.Millisecond
	// DefaultHysteresis: a band is left only 5 % below its watermark. Memory use of a Go
	// process oscillates by a few percent with each collection cycle; without the margin a
	// node sitting at a watermark would pause and resume replication every sample.
	DefaultHysteresis = 0.05
	// DefaultTrimInterval: trimming (the registered trimmers, then debug.FreeOSMemory, a full
	// collection that stops the world briefly) happens at most this often while above hard.
	// Caches refill under load, so it repeats, but seldom enough to cost little CPU.
	DefaultTrimInterval = 5 * time.Second
)

// Config configures a Controller. Soft and Hard are required.
type Config struct {
	// Soft and Hard are the watermarks in bytes (0 < Soft <= Hard).
	Soft, Hard int64
	// Interval between samples in Run (default DefaultInterval).
	Interval time.Duration
	// Hysteresis is the fraction of a watermark by which use must fall below it before its
	// band is left (default DefaultHysteresis; 0 <= Hysteresis < 1). A band is always entered
	// at the watermark itself.
	Hysteresis float64
	// TrimInterval is the least time between two trims (default DefaultTrimInterval).
	TrimInterval time.Duration
	// Sample returns the current memory use in bytes (nil: NewSystemSampler("").Sample).
	Sample func() (int64, error)
	// Source describes Sample in logs (default: the system sampler's source, or "custom").
	Source string
	// GoMemoryLimit, when positive, is given to debug.SetMemoryLimit while Run runs, and the
	// previous limit restored when it returns. The app passes the hard watermark, or 0 when
	// the operator set GOMEMLIMIT (see docs/memory.md).
	GoMemoryLimit int64
	// SetMemoryLimit replaces debug.SetMemoryLimit (tests; nil: the real one).
	SetMemoryLimit func(int64) int64
	// FreeOSMemory replaces debug.FreeOSMemory (tests; nil: the real one).
	FreeOSMemory func()
	// Now is the clock for trim spacing (nil: time.Now).
	Now func() time.Time
	// Logger receives transitions and sampling problems (nil: discarded).
	Logger *slog.Logger
	// Registerer receives the metrics (nil: a private registry).
	Registerer prometheus.Registerer
}

// Pauser is background work the hard watermark pauses: *outbox.Outbox and
// *antientropy.Sweeper satisfy it. SetPaused must be cheap and must not block.
type Pauser interface {
	SetPaused(paused bool)
}

// Controller classifies memory use against the watermarks and runs the registered reactions on
// each change of band. Its methods are safe for concurrent use; Run owns no goroutine but its
// own.
type Controller struct {
	cfg                Config
	softExit, hardExit int64
	log                *slog.Logger
	m                  *metricSet

	state   atomic.Int32
	usage   atomic.Int64
	running atomic.Bool

	// mu serialises Check and the registrations, so a reaction registered while a transition
	// is being applied sees either all of it or none.
	mu       sync.Mutex
	onSoft   []func(bool)
	onHard   []func(bool)
	onTrim   []func()
	lastTrim time.Time
	failing  bool // the last sample failed (logged once per run of failures)
}

// New checks cfg, fills in defaults and registers the metrics. Nothing is sampled until Check
// or Run.
func New(cfg Config) (*Controller, error) {
	var problems []error
	if cfg.Soft <= 0 {
		problems = append(problems, fmt.Errorf("soft watermark must be positive, got %d", cfg.Soft))
	}
	if cfg.Hard < cfg.Soft {
		problems = append(problems, fmt.Errorf("hard watermark %d is below the soft watermark %d", cfg.Hard, cfg.Soft))
	}
	if cfg.Interval < 0 || cfg.TrimInterval < 0 {
		problems = append(problems, fmt.Errorf("negative interval (sample %v, trim %v)", cfg.Interval, cfg.TrimInterval))
	}
	if math.IsNaN(cfg.Hysteresis) || cfg.Hysteresis < 0 || cfg.Hysteresis >= 1 {
		problems = append(problems, fmt.Errorf("hysteresis must be in [0, 1), got %v", cfg.Hysteresis))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("create memory controller: %w", errors.Join(problems...))
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Hysteresis == 0 {
		cfg.Hysteresis = DefaultHysteresis
	}
	if cfg.TrimInterval == 0 {
		cfg.TrimInterval = DefaultTrimInterval
	}
	if cfg.Sample == nil {
		s := NewSystemSampler("")
		cfg.Sample = s.Sample
		if cfg.Source == "" {
			cfg.Source = s.Source()
		}
	}
	if cfg.Source == "" {
		cfg.Source = "custom"
	}
	if cfg.SetMemoryLimit == nil {
		cfg.SetMemoryLimit = debug.SetMemoryLimit
	}
	if cfg.FreeOSMemory == nil {
		cfg.FreeOSMemory = debug.FreeOSMemory
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("create memory controller: %w", err)
	}
	m.soft.Set(float64(cfg.Soft))
	m.hard.Set(float64(cfg.Hard))
	return &Controller{
		cfg:      cfg,
		softExit: cfg.Soft - int64(float64(cfg.Soft)*cfg.Hysteresis),
		hardExit: cfg.Hard - int64(float64(cfg.Hard)*cfg.Hysteresis),
		log:      cfg.Logger.With("component", "memory"),
		m:        m,
	}, nil
}

// State is the current band (Normal until the first successful sample).
func (c *Controller) State() State { return State(c.state.Load()) }

// Usage is the last sampled memory use in bytes (0 before the first sample).
func (c *Controller) Usage() int64 { return c.usage.Load() }

// Source describes what the controller samples.
func (c *Controller) Source() string { return c.cfg.Source }

// OnSoft registers fn, called with true when use enters the soft band or above (from Normal)
// and with false when it falls back to Normal. Registered while that band is already active,
// fn is called with true at once. Reactions run on the sampling goroutine, in registration
// order: keep them short and non-blocking.
func (c *Controller) OnSoft(fn func(entered bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onSoft = append(c.onSoft, fn)
	if c.State() >= Soft {
		fn(true)
	}
}

// OnHard registers fn, called with true when use enters the hard band and with false when it
// leaves it. Registered while the hard band is active, fn is called with true at once. On the
// way up soft reactions run before hard ones; on the way down hard ones run first.
func (c *Controller) OnHard(fn func(entered bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onHard = append(c.onHard, fn)
	if c.State() == Hard {
		fn(true)
	}
}

// OnTrim registers fn, called on each trim: when use enters the hard band and again every
// TrimInterval while it stays there (never more often). debug.FreeOSMemory runs after every
// trimmer, so what they release goes back to the operating system at once.
func (c *Controller) OnTrim(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onTrim = append(c.onTrim, fn)
}

// PauseOnHard pauses p (SetPaused(true)) while use is in the hard band and resumes it when use
// leaves it, and reports it as kura_background_work_paused{work=work}.
func (c *Controller) PauseOnHard(work string, p Pauser) {
	g := c.m.paused.WithLabelValues(work)
	g.Set(0)
	c.OnHard(func(entered bool) {
		p.SetPaused(entered)
		if entered {
			g.Set(1)
		} else {
			g.Set(0)
		}
	})
}

// Check takes one sample, moves to the band it falls in and runs the reactions of the change,
// and trims if due. A failed sample keeps the current band (the node neither pauses nor
// resumes on a guess); the error is logged once per run of failures, counted and returned.
func (c *Controller) Check() (State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	usage, err := c.cfg.Sample()
	if err == nil && usage < 0 {
		err = fmt.Errorf("negative memory use %d", usage)
	}
	if err != nil {
		c.m.sampleErrors.Inc()
		if !c.failing {
			c.failing = true
			c.log.Warn("cannot sample memory use; keeping the watermark state until a sample succeeds",
				"source", c.cfg.Source, "state", c.State().String(), "error", err)
		}
		return c.State(), fmt.Errorf("sample memory use (%s): %w", c.cfg.Source, err)
	}
	if c.failing {
		c.failing = false
		c.log.Info("memory sampling works again", "source", c.cfg.Source, "usage_bytes", usage)
	}
	c.usage.Store(usage)
	c.m.usage.Set(float64(usage))
	from := c.State()
	to := c.classify(from, usage)
	if to != from {
		c.transition(from, to, usage)
	}
	if to == Hard {
		c.trimIfDue()
	}
	return to, nil
}

// classify enters a band at its watermark and leaves it only below its exit level.
func (c *Controller) classify(from State, usage int64) State {
	switch {
	case usage >= c.cfg.Hard, from == Hard && usage >= c.hardExit:
		return Hard
	case usage >= c.cfg.Soft, from >= Soft && usage >= c.softExit:
		return Soft
	}
	return Normal
}

// transition records the change and runs its reactions: soft before hard on the way up, hard
// before soft on the way down, so work is paused only with caches already shedding and
// resumed before admission returns.
func (c *Controller) transition(from, to State, usage int64) {
	c.state.Store(int32(to))
	c.m.state.Set(float64(to))
	c.m.transitions.WithLabelValues(to.String()).Inc()
	g := ReadGoFigures()
	attrs := []any{
		"from", from.String(), "to", to.String(), "usage_bytes", usage,
		"soft_limit_bytes", c.cfg.Soft, "hard_limit_bytes", c.cfg.Hard,
		"go_heap_live_bytes", g.HeapLive, "go_mapped_bytes", g.Mapped, "source", c.cfg.Source,
	}
	switch {
	case to == Hard:
		c.log.Warn("memory above the hard watermark: pausing replication and anti-entropy, trimming caches", attrs...)
	case to == Soft && from == Normal:
		c.log.Warn("memory above the soft watermark: shedding optional memory use", attrs...)
	case to == Soft:
		c.log.Info("memory back below the hard watermark: resuming replication and anti-entropy", attrs...)
	default:
		c.log.Info("memory back to normal: optional memory use restored", attrs...)
	}
	if from < Soft && to >= Soft {
		c.m.actions.WithLabelValues(ActionShed).Inc()
		for _, fn := range c.onSoft {
			fn(true)
		}
	}
	if from < Hard && to == Hard {
		c.m.actions.WithLabelValues(ActionPause).Inc()
		for _, fn := range c.onHard {
			fn(true)
		}
	}
	if from == Hard && to < Hard {
		c.m.actions.WithLabelValues(ActionResume).Inc()
		for _, fn := range c.onHard {
			fn(false)
		}
	}
	if from >= Soft && to < Soft {
		c.m.actions.WithLabelValues(ActionRestore).Inc()
		for _, fn := range c.onSoft {
			fn(false)
		}
	}
}

// trimIfDue trims unless the last trim was less than TrimInterval ago. The spacing holds
// across bands too: leaving hard and coming straight back does not trim twice in a row.
func (c *Controller) trimIfDue() {
	now := c.cfg.Now()
	if !c.lastTrim.IsZero() && now.Sub(c.lastTrim) < c.cfg.TrimInterval {
		return
	}
	c.lastTrim = now
	for _, fn := range c.onTrim {
		fn()
	}
	c.cfg.FreeOSMemory()
	c.m.actions.WithLabelValues(ActionTrim).Inc()
}

// Run sets the Go runtime's memory limit (Config.GoMemoryLimit), then samples at once and every
// Interval until ctx ends; it restores the previous limit and returns nil. Sampling errors
// never stop it (see Check). Run may be called once at a time.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("run memory controller: already running")
	}
	defer c.running.Store(false)
	if c.cfg.GoMemoryLimit > 0 {
		prev := c.cfg.SetMemoryLimit(c.cfg.GoMemoryLimit)
		defer c.cfg.SetMemoryLimit(prev)
	}
	c.log.Info("memory controller running", "source", c.cfg.Source, "interval", c.cfg.Interval,
		"soft_limit_bytes", c.cfg.Soft, "hard_limit_bytes", c.cfg.Hard, "go_memory_limit_bytes", c.cfg.GoMemoryLimit)
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		_, _ = c.Check() // logged and counted by Check
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
