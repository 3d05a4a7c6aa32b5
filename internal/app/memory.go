package app

import (
	"fmt"
	"os"

	"github.com/kuracache/kura/internal/memory"
)

// cacheAdmission is implemented by a store whose in-memory caches (handles, manifests) can
// stop admitting new entries: the soft watermark's lever. Declared here, and checked at run
// time, so the app does not depend on a particular store version having it.
type cacheAdmission interface {
	SetCacheAdmission(admit bool)
}

// cacheTrimmer is implemented by a store that can drop the contents of its in-memory caches:
// the hard watermark's lever, alongside debug.FreeOSMemory.
type cacheTrimmer interface {
	TrimCaches()
}

// buildMemoryController builds the watermark controller from the budgets and wires its
// reactions: above soft the store stops admitting to its caches; above hard the outbox
// dispatcher and anti-entropy pause and the store's caches are trimmed. It applies the band of
// a first sample before returning, so a node that starts above a watermark never runs the work
// that watermark forbids.
func (a *App) buildMemoryController(opts options) error {
	cfg := a.cfg
	log := a.logger.With("component", "memory")
	// The Go runtime's limit is the hard watermark (see internal/memory's documentation),
	// unless the operator chose one with GOMEMLIMIT: the runtime has applied it already, and
	// overriding it would be a surprise.
	goLimit := cfg.MemoryHardLimitBytes
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok && v != "" {
		goLimit = 0
		log.Info("GOMEMLIMIT is set; the Go runtime's memory limit is left to it", "GOMEMLIMIT", v)
	}
	mc := memory.Config{
		Soft:          cfg.MemorySoftLimitBytes,
		Hard:          cfg.MemoryHardLimitBytes,
		Interval:      opts.memoryInterval,
		GoMemoryLimit: goLimit,
		Logger:        a.logger,
		Registerer:    a.registry,
	}
	if opts.memorySample != nil {
		mc.Sample, mc.Source = opts.memorySample, "test sampler"
	}
	ctrl, err := memory.New(mc)
	if err != nil {
		return fmt.Errorf("build the memory controller (KURA_MEMORY_SOFT_LIMIT_BYTES, KURA_MEMORY_HARD_LIMIT_BYTES): %w", err)
	}
	ctrl.PauseOnHard("outbox", a.outbox)
	ctrl.PauseOnHard("antientropy", a.sweeper)
	levers := wireStoreLevers(ctrl, a.store)
	log.Info("memory watermarks", "source", ctrl.Source(),
		"soft_limit_bytes", cfg.MemorySoftLimitBytes, "hard_limit_bytes", cfg.MemoryHardLimitBytes,
		"go_memory_limit_bytes", goLimit, "store_levers", levers)
	if _, err := ctrl.Check(); err != nil {
		log.Warn("first memory sample failed; starting in the normal band", "error", err)
	}
	a.memory = ctrl
	return nil
}

// wireStoreLevers connects whichever cache levers store has to ctrl and names them for the
// startup log: admission off while at or above soft (back on below it), a trim on each of the
// controller's trims while above hard.
func wireStoreLevers(ctrl *memory.Controller, store any) []string {
	var levers []string
	if s, ok := store.(cacheAdmission); ok {
		ctrl.OnSoft(func(entered bool) { s.SetCacheAdmission(!entered) })
		levers = append(levers, "cache admission")
	}
	if s, ok := store.(cacheTrimmer); ok {
		ctrl.OnTrim(s.TrimCaches)
		levers = append(levers, "cache trimming")
	}
	return levers
}
