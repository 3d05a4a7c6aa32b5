package cluster

import (
	"sync"

	"github.com/hashicorp/memberlist"
)

// EventType says what happened to a peer.
type EventType int

const (
	// Joined: the peer is (again) a live member; Member is its current metadata.
	Joined EventType = iota + 1
	// Left: the peer left gracefully or was declared dead by failure detection.
	Left
	// Updated: a live peer changed its metadata (for example restarted with a new URL).
	Updated
)

func (t EventType) String() string {
	switch t {
	case Joined:
		return "joined"
	case Left:
		return "left"
	case Updated:
		return "updated"
	}
	return "unknown"
}

// Event is a change of one peer. This node itself never appears in events.
type Event struct {
	Type   EventType
	Member Member
}

// events implements memberlist.EventDelegate: it keeps the peer view and fans changes out.
type events Cluster

var _ memberlist.EventDelegate = (*events)(nil)

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Cluster)(e).apply(Joined, n) }
func (e *events) NotifyLeave(n *memberlist.Node)  { (*Cluster)(e).apply(Left, n) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Cluster)(e).apply(Updated, n) }

// apply updates the peer view and queues the event for every subscriber. memberlist calls
// it with its node lock held, one call at a time, so it must never block: subscribers'
// queues are unbounded but coalesced (see Subscribe).
func (c *Cluster) apply(t EventType, n *memberlist.Node) {
	if n.Name == c.self.Name {
		return
	}
	m, err := memberFromNode(n)
	if err != nil {
		// Admission let only decodable metadata in, so this is a memberlist invariant broken.
		c.logger.Error("member event for a node with unusable metadata", "node", n.Name, "event", t.String(), "err", err)
		return
	}
	c.metrics.memberEvents.WithLabelValues(t.String()).Inc()
	c.mu.Lock()
	if c.halted {
		c.mu.Unlock()
		return
	}
	if t == Left {
		delete(c.peers, m.Name)
	} else {
		c.peers[m.Name] = m
	}
	ev := Event{Type: t, Member: m}
	for s := range c.subs {
		s.push(ev)
	}
	c.mu.Unlock()
	c.logger.Info("member "+t.String(), "node", m.Name, "region", m.Region, "gossip_addr", m.GossipAddr,
		"internal_addr", m.InternalAddr)
}

// Subscribe returns a channel of peer events and a function that ends the subscription.
//
// The first events are a Joined for every current peer, so subscribing and then applying
// events ("Joined/Updated: upsert, Left: remove") tracks the peer set without a race.
//
// A slow subscriber never blocks gossip: undelivered events wait in a queue that holds at
// most one event per peer, the latest (a pending Joined followed by an Updated stays a
// Joined carrying the new metadata). The queue is therefore bounded by the number of peers,
// nothing is ever dropped, and a subscriber that applies events as above ends with exactly
// the current peer set, though it may skip intermediate states of a flapping peer.
//
// buffer is the channel's capacity. The channel is closed after the returned function is
// called or once the cluster has shut down; the function waits for the delivery goroutine
// to exit and may be called more than once.
func (c *Cluster) Subscribe(buffer int) (<-chan Event, func()) {
	s := newSubscription(max(buffer, 0))
	c.mu.Lock()
	if c.halted {
		c.mu.Unlock()
		close(s.out)
		close(s.finished)
		return s.out, func() {}
	}
	peers := make([]Member, 0, len(c.peers))
	for _, m := range c.peers {
		peers = append(peers, m)
	}
	sortMembers(peers)
	for _, m := range peers {
		s.push(Event{Type: Joined, Member: m})
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()

	go s.deliver()
	return s.out, func() {
		c.mu.Lock()
		delete(c.subs, s)
		c.mu.Unlock()
		s.stop()
	}
}

// subscription is one subscriber's coalescing queue and its delivery goroutine.
type subscription struct {
	out      chan Event
	wake     chan struct{} // capacity 1: "the queue is not empty"
	done     chan struct{} // closed to stop delivery
	finished chan struct{} // closed when deliver has returned
	stopOnce sync.Once

	mu      sync.Mutex
	pending map[string]Event // by member name, at most one per peer
	order   []string         // names in pending, oldest first
}

func newSubscription(buffer int) *subscription {
	return &subscription{
		out:      make(chan Event, buffer),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		finished: make(chan struct{}),
		pending:  make(map[string]Event),
	}
}

// push queues ev, merging it with a pending event for the same peer. It never blocks.
func (s *subscription) push(ev Event) {
	s.mu.Lock()
	name := ev.Member.Name
	if old, ok := s.pending[name]; ok {
		if old.Type == Joined && ev.Type == Updated {
			ev.Type = Joined // the subscriber has not seen the join yet
		}
		s.pending[name] = ev // keeps its place in order
	} else {
		s.pending[name] = ev
		s.order = append(s.order, name)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscription) pop() (Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) == 0 {
		return Event{}, false
	}
	name := s.order[0]
	s.order[0] = ""
	s.order = s.order[1:]
	ev := s.pending[name]
	delete(s.pending, name)
	return ev, true
}

// deliver moves queued events to the channel until stopped, then closes the channel.
func (s *subscription) deliver() {
	defer close(s.finished)
	defer close(s.out)
	for {
		ev, ok := s.pop()
		if !ok {
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		select {
		case s.out <- ev:
		case <-s.done:
			return
		}
	}
}

// stop ends delivery and waits for the goroutine to exit.
func (s *subscription) stop() {
	s.stopOnce.Do(func() { close(s.done) })
	<-s.finished
}
