//go:build linux

package memory

import (
	"context"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRealMemoryCrossesTheWatermarks drives the controller with this process's real resident
// set size. The memory is an anonymous mapping outside the Go heap, touched page by page: it
// enters the RSS exactly when written and leaves it exactly when unmapped, whatever the
// collector or the race detector's shadow memory do, so the test is deterministic.
func TestRealMemoryCrossesTheWatermarks(t *testing.T) {
	const mib = 1 << 20
	base, err := ProcessRSS()
	if err != nil {
		t.Fatal(err)
	}
	var logs testsupport.LockedBuffer
	c, err := New(Config{
		Soft: base + 32*mib, Hard: base + 64*mib,
		// 2 %: the exit levels sit well above base however large the test binary's RSS is.
		Hysteresis: 0.02,
		Sample:     ProcessRSS, Source: "resident set size",
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	work := &fakeWork{}
	c.PauseOnHard("outbox", work)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	const size = 128 * mib
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	unmapped := false
	defer func() {
		if !unmapped {
			_ = syscall.Munmap(mem)
		}
	}()
	page := os.Getpagesize()
	for i := 0; i < size; i += page {
		mem[i] = 1
	}
	testsupport.WaitFor(t, "the hard band from real memory use", 10*time.Second, func() bool { return c.State() == Hard })
	peak := c.Usage()
	testsupport.WaitFor(t, "the pause call", 10*time.Second, func() bool {
		work.mu.Lock()
		defer work.mu.Unlock()
		return len(work.calls) >= 1
	})
	work.mu.Lock()
	pausedCalls := append([]bool(nil), work.calls...)
	work.mu.Unlock()
	if len(pausedCalls) != 1 || !pausedCalls[0] {
		t.Fatalf("work not paused on the hard band: %v", pausedCalls)
	}
	if err := syscall.Munmap(mem); err != nil {
		t.Fatal(err)
	}
	unmapped = true
	testsupport.WaitFor(t, "the normal band after the memory was released", 10*time.Second, func() bool { return c.State() == Normal })
	// The state flips before the transition's reactions have run: wait for the resume call.
	testsupport.WaitFor(t, "the resume call", 10*time.Second, func() bool {
		work.mu.Lock()
		defer work.mu.Unlock()
		return len(work.calls) >= 2
	})
	work.mu.Lock()
	defer work.mu.Unlock()
	if len(work.calls) != 2 || work.calls[1] {
		t.Fatalf("work not resumed: %v", work.calls)
	}
	t.Logf("RSS %.1f MiB at rest, %.1f MiB with the mapping, %.1f MiB after unmapping",
		float64(base)/mib, float64(peak)/mib, float64(c.Usage())/mib)
}
