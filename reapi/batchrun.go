package reapi

import (
	"sync"
	"sync/atomic"
)

// runItems calls fn(i) for every i in [0, n), at most limit at once. The calling goroutine
// works through the items too, and helpers are started only for a batch of more than one
// item: a single-item batch (the common BatchReadBlobs of one small blob) costs no goroutine,
// and a large one costs limit-1 of them rather than one per item.
func runItems(n, limit int, fn func(i int)) {
	if n <= 0 {
		return
	}
	var next atomic.Int64
	work := func() {
		for {
			i := int(next.Add(1) - 1)
			if i >= n {
				return
			}
			fn(i)
		}
	}
	var wg sync.WaitGroup
	for range min(n, limit) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}
