package analytics

import (
	"testing"
	"time"
)

// TestBreakerStateMachine walks the breaker through every transition on a fake timeline.
func TestBreakerStateMachine(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	b := breaker{threshold: 2, openFor: 10 * time.Second}
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	steps := []struct {
		name    string
		do      func() transition
		want    transition
		state   state
		allowed bool // allow() at the same instant, checked after the step
	}{
		{"a success keeps it closed", func() transition { return b.result(true, at(0)) }, noTransition, closed, true},
		{"one failure is below the threshold", func() transition { return b.result(false, at(1)) }, noTransition, closed, true},
		{"a success resets the count", func() transition { return b.result(true, at(2)) }, noTransition, closed, true},
		{"failure 1", func() transition { return b.result(false, at(3)) }, noTransition, closed, true},
		{"failure 2 opens it", func() transition { return b.result(false, at(4)) }, toOpen, open, false},
		{"still open just before the period ends", func() transition { return b.expire(at(13)) }, noTransition, open, false},
		{"half-open when the period ends", func() transition { return b.expire(at(14)) }, toHalfOpen, halfOpen, true},
		{"a failed trial re-opens it", func() transition { return b.result(false, at(15)) }, toOpen, open, false},
		{"allow half-opens after the new period", func() transition { _, tr := b.allow(at(25)); return tr }, toHalfOpen, halfOpen, true},
		{"a successful trial closes it", func() transition { return b.result(true, at(26)) }, toClosed, closed, true},
		{"closed again needs the full threshold", func() transition { return b.result(false, at(27)) }, noTransition, closed, true},
	}
	for _, s := range steps {
		if got := s.do(); got != s.want {
			t.Fatalf("%s: transition %v, want %v", s.name, got, s.want)
		}
		if b.state != s.state {
			t.Fatalf("%s: state %v, want %v", s.name, b.state, s.state)
		}
		if b.state == open {
			if wait, isOpen := b.remaining(at(16)); !isOpen || wait > b.openFor {
				t.Fatalf("%s: remaining = %v, %v", s.name, wait, isOpen)
			}
			if ok, _ := b.allow(b.openUntil.Add(-time.Nanosecond)); ok != s.allowed {
				t.Fatalf("%s: allow = %v, want %v", s.name, ok, s.allowed)
			}
		}
	}
}
