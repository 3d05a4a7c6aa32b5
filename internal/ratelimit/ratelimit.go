// Package ratelimit thins out repeated log lines: PerKey lets one event per key through per
// window and counts the ones it held back. It imports nothing from Kura.
package ratelimit

import (
	"sync"
	"time"
)

// MaxKeys bounds a PerKey's memory against a flood of distinct keys (node names, say).
const MaxKeys = 1024

// PerKey lets one event per key through per window. It is safe for concurrent use.
type PerKey struct {
	window time.Duration
	now    func() time.Time

	mu   sync.Mutex
	keys map[string]keyState
}

type keyState struct {
	last       time.Time // when an event of the key was last let through
	suppressed int       // events of the key refused since
}

// NewPerKey returns a limiter with the given window, reading the time from now (nil:
// time.Now).
func NewPerKey(window time.Duration, now func() time.Time) *PerKey {
	if now == nil {
		now = time.Now
	}
	return &PerKey{window: window, now: now, keys: make(map[string]keyState)}
}

// Window is the limiter's window.
func (l *PerKey) Window() time.Duration { return l.window }

// Allow reports whether an event of key may go through now: the first one does, and the next
// one once the window has passed since it (or at once if the clock went back).
func (l *PerKey) Allow(key string) bool {
	ok, _ := l.AllowCounted(key)
	return ok
}

// AllowCounted is Allow that also returns, when it lets an event through, how many events of
// key it refused since it last let one through. While MaxKeys keys were seen within the
// window, events of any other key are refused uncounted rather than the map grown; a key
// whose window passed may be forgotten together with its count to make room.
func (l *PerKey) AllowCounted(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if st, seen := l.keys[key]; seen {
		if d := now.Sub(st.last); d >= 0 && d < l.window {
			st.suppressed++
			l.keys[key] = st
			return false, 0
		}
		l.keys[key] = keyState{last: now}
		return true, st.suppressed
	}
	if len(l.keys) >= MaxKeys {
		for k, st := range l.keys {
			if now.Sub(st.last) >= l.window {
				delete(l.keys, k)
			}
		}
		if len(l.keys) >= MaxKeys {
			return false, 0
		}
	}
	l.keys[key] = keyState{last: now}
	return true, 0
}
