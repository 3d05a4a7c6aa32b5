package analytics

import "time"

// state is a circuit breaker state; the values are those of kura_analytics_breaker_state.
type state int32

const (
	closed   state = 0
	open     state = 1
	halfOpen state = 2
)

func (s state) String() string {
	switch s {
	case open:
		return "open"
	case halfOpen:
		return "half_open"
	default:
		return "closed"
	}
}

// transition is a change of breaker state.
type transition int

const (
	noTransition transition = iota
	toOpen
	toHalfOpen
	toClosed
)

func (t transition) to() state {
	switch t {
	case toOpen:
		return open
	case toHalfOpen:
		return halfOpen
	default:
		return closed
	}
}

// breaker is one pipeline's circuit breaker. It is a plain state machine over the times it is
// given, used by the pipeline's worker goroutine only: batches are sent one at a time, so a
// half-open breaker needs no bookkeeping to admit exactly one trial.
type breaker struct {
	threshold int           // consecutive failures that open it
	openFor   time.Duration // how long it stays open

	state     state
	failures  int       // consecutive failed batches
	openUntil time.Time // while open
}

// allow reports whether the next batch may be sent. An open breaker whose time is up
// half-opens, and the batch asking is the trial.
func (b *breaker) allow(now time.Time) (bool, transition) {
	t := b.expire(now)
	return b.state != open, t
}

// expire half-opens an open breaker whose open period has passed.
func (b *breaker) expire(now time.Time) transition {
	if b.state == open && !now.Before(b.openUntil) {
		b.state = halfOpen
		return toHalfOpen
	}
	return noTransition
}

// remaining is how long an open breaker stays open.
func (b *breaker) remaining(now time.Time) (time.Duration, bool) {
	if b.state != open {
		return 0, false
	}
	return max(b.openUntil.Sub(now), 0), true
}

// result records the outcome of a sent batch: a success closes the breaker, a failure opens it
// at the threshold, or at once when it was the half-open trial.
func (b *breaker) result(ok bool, now time.Time) transition {
	if ok {
		b.failures = 0
		if b.state != closed {
			b.state = closed
			return toClosed
		}
		return noTransition
	}
	b.failures++
	if b.state == halfOpen || (b.state == closed && b.failures >= b.threshold) {
		b.state = open
		b.openUntil = now.Add(b.openFor)
		return toOpen
	}
	return noTransition
}
