package ratelimit

import (
	"testing"
	"time"
)

func TestPerKey(t *testing.T) {
	now := time.Unix(1000, 0)
	r := NewPerKey(time.Minute, func() time.Time { return now })
	if !r.Allow("a") || r.Allow("a") || !r.Allow("b") {
		t.Fatal("first of each key must pass, repeats must not")
	}
	now = now.Add(time.Minute)
	if !r.Allow("a") {
		t.Fatal("a key must pass again after the window")
	}
	for i := range MaxKeys * 2 {
		r.Allow(string(rune(i + 100)))
	}
	if len(r.keys) > MaxKeys {
		t.Fatalf("limiter holds %d keys", len(r.keys))
	}
}

func TestPerKeyCountsSuppressed(t *testing.T) {
	now := time.Unix(1000, 0)
	r := NewPerKey(30*time.Second, func() time.Time { return now })
	if ok, n := r.AllowCounted("a"); !ok || n != 0 {
		t.Fatalf("first event: %v, %d suppressed; want through, 0", ok, n)
	}
	for range 4 {
		if ok, _ := r.AllowCounted("a"); ok {
			t.Fatal("a repeat within the window went through")
		}
	}
	if ok, _ := r.AllowCounted("b"); !ok {
		t.Fatal("another key shares the first one's budget")
	}
	now = now.Add(30 * time.Second)
	if ok, n := r.AllowCounted("a"); !ok || n != 4 {
		t.Fatalf("after the window: %v, %d suppressed; want through, 4", ok, n)
	}
	if ok, _ := r.AllowCounted("a"); ok {
		t.Fatal("the count restarted but the window did not")
	}
	now = now.Add(-time.Hour)
	if ok, n := r.AllowCounted("a"); !ok || n != 1 {
		t.Fatalf("after the clock went back: %v, %d suppressed; want through, 1", ok, n)
	}
}
