package outbox

import (
	"math/rand/v2"
	"sync"
	"time"
)

// backoffCeiling is the upper bound of the attempt-th retry delay (attempt >= 1): MinBackoff
// doubled attempt-1 times, capped at MaxBackoff.
func backoffCeiling(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// backoffDelay is "full jitter": uniform in [0, ceiling]. Spreading the retries of every
// node that lost the same peer avoids a thundering herd when it comes back.
func backoffDelay(attempt int, lo, hi time.Duration, unit float64) time.Duration {
	return time.Duration(unit * float64(backoffCeiling(attempt, lo, hi)))
}

// lockedRand shares one seedable source between the peer workers.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}
