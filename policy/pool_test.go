package policy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPoolSlots: a seeded interpreter is handed out first without a slot of its own, at most
// size interpreters are out at once, and every put frees the slot its get took.
func TestPoolSlots(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry(), func() float64 { return 0 }, func() float64 { return 0 }, func() float64 { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	p := newPool(2, 10, func() (*interp, error) { created++; return &interp{}, nil }, m)
	seeded := &interp{}
	p.seed(seeded)
	if p.busy() != 0 || p.idleCount() != 1 {
		t.Fatalf("after seed: busy %d idle %d, want 0 and 1", p.busy(), p.idleCount())
	}
	get := func(timeout time.Duration) (*interp, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return p.get(ctx)
	}
	a, err := get(time.Second)
	if err != nil || a != seeded || created != 0 {
		t.Fatalf("first get = %p, %v (created %d), want the seeded interpreter", a, err, created)
	}
	b, err := get(time.Second)
	if err != nil || b == seeded || created != 1 {
		t.Fatalf("second get = %p, %v (created %d), want a new interpreter", b, err, created)
	}
	if _, err := get(10 * time.Millisecond); !errors.Is(err, errPoolBusy) {
		t.Fatalf("third get with both out: %v, want errPoolBusy", err)
	}
	p.put(a)
	p.put(b)
	if p.busy() != 0 || p.idleCount() != 2 {
		t.Fatalf("after both puts: busy %d idle %d, want 0 and 2", p.busy(), p.idleCount())
	}
	for range 2 {
		if _, err := get(time.Second); err != nil {
			t.Fatalf("get after put: %v", err)
		}
	}
	if created != 1 {
		t.Errorf("created %d interpreters, want 1 (the idle ones are reused)", created)
	}
}
