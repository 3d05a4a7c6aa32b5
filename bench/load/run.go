package load

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Op is one request of a worker; it returns the items and bytes it moved. A worker's Op is
// only ever called from that worker's goroutine, so it may keep unsynchronised state.
type Op func(ctx context.Context) (items, bytes int64, err error)

// Result is one timed run.
type Result struct {
	Requests, Items, Bytes, Errors int64
	Elapsed                        time.Duration
	Latencies                      []time.Duration // sorted
	FirstErr                       error
}

// PerSecond is n over the run's wall time.
func (r *Result) PerSecond(n int64) float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(n) / r.Elapsed.Seconds()
}

// Percentile is the latency below which the fraction p of the requests finished.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[min(len(r.Latencies)-1, int(p*float64(len(r.Latencies))))]
}

// Run starts concurrency workers, each with the Op newOp(i) returns; each starts requests
// until duration is over and finishes the one in flight, so the slowest scenarios (64 MiB
// uploads) still yield samples. Throughput is measured over the wall time until the last
// worker is done. A failed request counts in Errors and not in the latencies.
func Run(ctx context.Context, duration time.Duration, concurrency int, newOp func(worker int) Op) *Result {
	res := &Result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ops := make([]Op, concurrency)
	for i := range ops {
		ops[i] = newOp(i) // before the clock starts: per-worker buffers (64 MiB blobs) are not timed
	}
	var stopped atomic.Bool
	timer := time.AfterFunc(duration, func() { stopped.Store(true) })
	defer timer.Stop()
	start := time.Now()
	for _, do := range ops {
		wg.Go(func() {
			var items, bytes, errs int64
			var firstErr error
			latencies := make([]time.Duration, 0, 1024)
			for !stopped.Load() && ctx.Err() == nil {
				t0 := time.Now()
				n, nb, err := do(ctx)
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				latencies = append(latencies, time.Since(t0))
				items += n
				bytes += nb
			}
			mu.Lock()
			defer mu.Unlock()
			res.Requests += int64(len(latencies))
			res.Items += items
			res.Bytes += bytes
			res.Errors += errs
			res.Latencies = append(res.Latencies, latencies...)
			if res.FirstErr == nil {
				res.FirstErr = firstErr
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	slices.Sort(res.Latencies)
	return res
}

// FmtDur prints a latency compactly (µs, ms or s).
func FmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%dµs", d.Microseconds())
}
