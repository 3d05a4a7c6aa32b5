package reapi

import (
	"sync/atomic"
	"testing"
)

func TestRunItemsVisitsEveryItemOnceWithinTheLimit(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 8, 9, 100} {
		seen := make([]atomic.Int32, n)
		var running, peak atomic.Int32
		runItems(n, batchParallelism, func(i int) {
			r := running.Add(1)
			for {
				p := peak.Load()
				if r <= p || peak.CompareAndSwap(p, r) {
					break
				}
			}
			seen[i].Add(1)
			running.Add(-1)
		})
		for i := range seen {
			if c := seen[i].Load(); c != 1 {
				t.Fatalf("n=%d: item %d ran %d times", n, i, c)
			}
		}
		if p := peak.Load(); p > batchParallelism {
			t.Fatalf("n=%d: %d items ran at once, limit %d", n, p, batchParallelism)
		}
	}
}
