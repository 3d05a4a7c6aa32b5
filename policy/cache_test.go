package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDecisionCacheHoldsAtMostMaxEntries fills caches whose bound is no multiple of the shard
// count with many more keys than fit: the cache never holds more than the bound (rounding
// each shard up once let 1,000 become 1,008), and evicts exactly the surplus.
func TestDecisionCacheHoldsAtMostMaxEntries(t *testing.T) {
	for _, bound := range []int{1, 7, 16, 17, 1000, 100_003} {
		evictions := prometheus.NewCounter(prometheus.CounterOpts{Name: "evictions"})
		c := newDecisionCache(bound, evictions)
		keys := 3*bound + 100
		expires := time.Now().Add(time.Hour)
		for i := range keys {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(i))
			c.put(cacheKey(sha256.Sum256(b[:])), Decision{Allowed: true}, expires)
			if n := c.len(); n > bound {
				t.Fatalf("bound %d: %d entries after %d puts", bound, n, i+1)
			}
		}
		if n := c.len(); n != bound {
			t.Errorf("bound %d: %d entries after %d distinct keys, want it full", bound, n, keys)
		}
		if got := testutil.ToFloat64(evictions); got != float64(keys-bound) {
			t.Errorf("bound %d: %v evictions, want %d", bound, got, keys-bound)
		}
	}
}
