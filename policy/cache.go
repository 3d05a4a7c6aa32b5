package policy

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
)

// cacheShards spreads the decision cache over independently locked LRUs, so 64 concurrent
// requests on the cached path do not queue behind one mutex.
const cacheShards = 16

// decisionCache holds decisions until their TTL, at most maxEntries of them (least recently
// used first out). It is safe for concurrent use.
type decisionCache struct {
	shards []cacheShard
}

type cacheShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[cacheKey, cachedDecision]
}

type cachedDecision struct {
	decision Decision
	expires  time.Time
}

// newDecisionCache counts in evictions the entries pushed out for room.
func newDecisionCache(maxEntries int, evictions prometheus.Counter) *decisionCache {
	n := min(cacheShards, maxEntries)
	c := &decisionCache{shards: make([]cacheShard, n)}
	for i := range c.shards {
		// The shards' sizes add up to maxEntries exactly (the first maxEntries%n hold one
		// more), so the cache never holds more than KURA_EXTENSION_CACHE_MAX_ENTRIES; rounding
		// every shard up would let 1,000 become 1,008.
		size := maxEntries / n
		if i < maxEntries%n {
			size++
		}
		// NewLRU fails only for a size <= 0, which n <= maxEntries rules out.
		c.shards[i].lru, _ = simplelru.NewLRU[cacheKey, cachedDecision](size, func(cacheKey, cachedDecision) { evictions.Inc() })
	}
	return c
}

func (c *decisionCache) shard(k cacheKey) *cacheShard { return &c.shards[int(k[0])%len(c.shards)] }

// get returns a live decision. An expired entry is a miss and is left for put to overwrite.
func (c *decisionCache) get(k cacheKey, now time.Time) (Decision, bool) {
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.lru.Get(k)
	s.mu.Unlock()
	if !ok || !now.Before(e.expires) {
		return Decision{}, false
	}
	return e.decision, true
}

func (c *decisionCache) put(k cacheKey, d Decision, expires time.Time) {
	s := c.shard(k)
	s.mu.Lock()
	s.lru.Add(k, cachedDecision{decision: d, expires: expires})
	s.mu.Unlock()
}

// len is the number of entries held, live or expired.
func (c *decisionCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}
