package lifecycle

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStates(t *testing.T) {
	reg := prometheus.NewRegistry()
	n, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	gauge := func(s string) float64 { return testutil.ToFloat64(n.gauge.WithLabelValues(s)) }
	if n.State() != Joining || gauge("joining") != 1 || gauge("serving") != 0 {
		t.Fatalf("new node: %v", n.State())
	}
	if !n.SetServing() || n.State() != Serving || gauge("serving") != 1 || gauge("joining") != 0 {
		t.Fatalf("after SetServing: %v", n.State())
	}
	if n.SetServing() {
		t.Fatal("SetServing twice changed the state")
	}
	if !n.BeginDrain() || n.State() != Draining || gauge("draining") != 1 || gauge("serving") != 0 {
		t.Fatalf("after BeginDrain: %v", n.State())
	}
	if n.SetServing() || n.State() != Draining {
		t.Fatal("a draining node went back to serving")
	}
	if n.BeginDrain() {
		t.Fatal("BeginDrain twice changed the state")
	}
	if Draining.String() != "draining" || State(9).String() != "state(9)" {
		t.Fatal("state names")
	}
}

func TestDrainWaitsForRequestsInFlight(t *testing.T) {
	n, _ := New(nil)
	n.SetServing()
	for range 2 {
		if !n.Enter() {
			t.Fatal("a serving node refused a request")
		}
	}
	n.BeginDrain()
	if n.Enter() {
		t.Fatal("a draining node accepted a new request")
	}
	if n.InFlight() != 2 {
		t.Fatalf("in flight %d", n.InFlight())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := n.WaitIdle(ctx); err == nil {
		t.Fatal("WaitIdle returned with requests in flight")
	}
	done := make(chan error, 1)
	go func() { done <- n.WaitIdle(context.Background()) }()
	n.Leave()
	select {
	case <-done:
		t.Fatal("WaitIdle returned with one request still in flight")
	default:
	}
	n.Leave()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := n.WaitIdle(context.Background()); err != nil {
		t.Fatal(err)
	}
}
