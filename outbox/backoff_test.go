package outbox

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBackoffCeilingDoublesUpToTheCap(t *testing.T) {
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := backoffCeiling(i+1, 100, 1000); got != w {
			t.Errorf("attempt %d: ceiling %v, want %v", i+1, got, w)
		}
	}
	if got := backoffCeiling(10_000, time.Millisecond, time.Hour); got != time.Hour {
		t.Errorf("a huge attempt count must saturate at the cap, got %v", got)
	}
}

func TestBackoffIsJitteredAndReproducible(t *testing.T) {
	delays := func(seed uint64) []time.Duration {
		r := &lockedRand{r: rand.New(rand.NewPCG(seed, seed))}
		var out []time.Duration
		for attempt := 1; attempt <= 12; attempt++ {
			out = append(out, backoffDelay(attempt, 100*time.Millisecond, 30*time.Second, r.Float64()))
		}
		return out
	}
	a, b, c := delays(7), delays(7), delays(8)
	distinct := map[time.Duration]bool{}
	differs := false
	for i := range a {
		ceiling := backoffCeiling(i+1, 100*time.Millisecond, 30*time.Second)
		if a[i] < 0 || a[i] > ceiling {
			t.Fatalf("attempt %d: delay %v outside [0, %v]", i+1, a[i], ceiling)
		}
		if a[i] != b[i] {
			t.Fatalf("the same seed gave %v then %v", a[i], b[i])
		}
		differs = differs || a[i] != c[i]
		distinct[a[i]] = true
	}
	if !differs || len(distinct) < len(a)-1 {
		t.Fatalf("delays are not jittered: %v vs %v", a, c)
	}
	t.Logf("seed 7: %v", a)
}
