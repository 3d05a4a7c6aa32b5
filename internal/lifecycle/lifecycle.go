package lifecycle

import (
	"context"
	"fmt"
	"sync"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// State is a node's traffic state.
type State int32

const (
	// Joining: the node is up but not yet ready for traffic (the store is opening, or in a
	// cluster the first bootstrap round has not finished or timed out).
	Joining State = iota
	// Serving: ready for traffic (GET /ready answers 200).
	Serving
	// Draining: shutting down; new requests are refused, in-flight ones finish.
	Draining
)

var stateNames = [...]string{Joining: "joining", Serving: "serving", Draining: "draining"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("state(%d)", int32(s))
	}
	return stateNames[s]
}

// Node tracks the state and the requests in flight. It is safe for concurrent use.
type Node struct {
	mu       sync.Mutex
	state    State
	inflight int
	idle     chan struct{} // closed and replaced whenever inflight drops to zero
	gauge    *prometheus.GaugeVec
}

// New returns a node in Joining. With a registerer, kura_node_state{state} is 1 for the
// current state and 0 for the others.
func New(reg prometheus.Registerer) (*Node, error) {
	n := &Node{idle: make(chan struct{})}
	n.gauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kura_node_state",
		Help: "Traffic state of this node: 1 for the current one of joining, serving, draining.",
	}, []string{"state"})
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kura_requests_in_flight",
		Help: "Public HTTP requests and gRPC calls being served now (what a drain waits for).",
	}, func() float64 { return float64(n.InFlight()) })
	if reg != nil {
		if err := telemetry.RegisterAll(reg, n.gauge, inflight); err != nil {
			return nil, fmt.Errorf("register the lifecycle metrics: %w", err)
		}
	}
	n.publish(Joining)
	return n, nil
}

func (n *Node) publish(s State) {
	for i, name := range stateNames {
		v := 0.0
		if State(i) == s {
			v = 1
		}
		n.gauge.WithLabelValues(name).Set(v)
	}
}

// State is the current state.
func (n *Node) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state
}

// SetServing moves a joining node to Serving; it never leaves Draining. It reports whether
// the state changed.
func (n *Node) SetServing() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state != Joining {
		return false
	}
	n.state = Serving
	n.publish(Serving)
	return true
}

// BeginDrain moves the node to Draining, for good. It reports whether the state changed.
func (n *Node) BeginDrain() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state == Draining {
		return false
	}
	n.state = Draining
	n.publish(Draining)
	return true
}

// Enter counts a request in flight, unless the node is draining: then it returns false and
// the request must be refused. Every true must be followed by one Leave.
func (n *Node) Enter() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state == Draining {
		return false
	}
	n.inflight++
	return true
}

// Leave ends a request counted by Enter.
func (n *Node) Leave() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.inflight--
	if n.inflight == 0 {
		close(n.idle)
		n.idle = make(chan struct{})
	}
}

// InFlight is the number of requests counted now.
func (n *Node) InFlight() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.inflight
}

// WaitIdle waits until no request is in flight, or ctx ends (its error is returned). Call it
// after BeginDrain, when no new request can enter.
func (n *Node) WaitIdle(ctx context.Context) error {
	for {
		n.mu.Lock()
		if n.inflight == 0 {
			n.mu.Unlock()
			return nil
		}
		idle := n.idle
		n.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
