package cluster

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testdns"
	"github.com/kuracache/kura/internal/testsupport"

	"github.com/hashicorp/memberlist"
)

func TestThreeNodesConverge(t *testing.T) {
	a := startNode(t, testConfig("node-a", "eu"))
	// A subscriber that reads nothing until the end must not hold gossip back.
	lazy, cancelLazy := a.c.Subscribe(0)
	defer cancelLazy()

	bc := testConfig("node-b", "us")
	bc.Seeds = []string{a.addr()}
	b := startNode(t, bc)
	cc := testConfig("node-c", "eu")
	cc.Seeds = []string{b.addr()} // reaches node-a only through node-b's gossip
	c := startNode(t, cc)
	all := []*node{a, b, c}

	testsupport.WaitForNil(t, "three nodes converge", waitDeadline, func() error { return sameView(all, a, b, c) })

	for _, n := range all {
		self := n.c.Self()
		if self.GossipAddr == "" || self.Tenant != "acme" || self.URL != "http://"+self.Name+".test:4000" {
			t.Errorf("%s: Self() = %+v", self.Name, self)
		}
		peers := n.c.Peers()
		if len(peers) != 2 {
			t.Errorf("%s: Peers() = %v, want the two others", self.Name, names(peers))
		}
		for _, p := range peers {
			if p.Name == self.Name {
				t.Errorf("%s: Peers() includes itself", self.Name)
			}
		}
		for _, other := range all {
			got, ok := n.c.Member(other.name())
			if !ok || got != other.c.Self() {
				t.Errorf("%s: Member(%s) = %+v, %v; want %+v", self.Name, other.name(), got, ok, other.c.Self())
			}
		}
		if _, ok := n.c.Member("nobody"); ok {
			t.Errorf("%s: Member(nobody) found", self.Name)
		}
		if h := n.c.Health(); len(h) != 3 || h["node-a"] != "alive" || h["node-b"] != "alive" || h["node-c"] != "alive" {
			t.Errorf("%s: Health() = %v, want all three alive", self.Name, h)
		}
		if eu, us := membersGauge(t, n.reg, "eu"), membersGauge(t, n.reg, "us"); eu != 2 || us != 1 {
			t.Errorf("%s: kura_cluster_members eu=%v us=%v, want 2 and 1", self.Name, eu, us)
		}
		if got := n.counter(n.c.metrics.memberEvents, "joined"); got < 2 {
			t.Errorf("%s: joined events = %v, want >= 2", self.Name, got)
		}
	}
	for _, n := range []*node{b, c} {
		if got := n.counter(n.c.metrics.joinAttempts, "success"); got < 1 {
			t.Errorf("%s: successful join attempts = %v", n.name(), got)
		}
		if got := n.counter(n.c.metrics.joinAttempts, "failure"); got != 0 {
			t.Errorf("%s: failed join attempts = %v", n.name(), got)
		}
	}

	// The lazy subscriber's queue, drained now, reproduces the peer set.
	view := map[string]Member{}
	drain(t, lazy, view, func() bool { return len(view) == 2 })
	if view["node-b"] != b.c.Self() || view["node-c"] != c.c.Self() {
		t.Errorf("lazy subscriber's view = %+v", view)
	}
}

// drain applies events to view (Joined/Updated upsert, Left remove) until done() holds.
func drain(t *testing.T, ch <-chan Event, view map[string]Member, done func() bool) {
	t.Helper()
	testsupport.WaitForNil(t, "subscriber catches up", waitDeadline, func() error {
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					return fmt.Errorf("subscription closed early")
				}
				switch ev.Type {
				case Joined, Updated:
					view[ev.Member.Name] = ev.Member
				case Left:
					delete(view, ev.Member.Name)
				default:
					t.Fatalf("unknown event %+v", ev)
				}
			default:
				if done() {
					return nil
				}
				return fmt.Errorf("view %v", view)
			}
		}
	})
}

// expectEvent reads events until one of type typ for name arrives.
func expectEvent(t *testing.T, ch <-chan Event, typ EventType, name string) Event {
	t.Helper()
	var found Event
	testsupport.WaitForNil(t, fmt.Sprintf("%s event for %s", typ, name), waitDeadline, func() error {
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					return fmt.Errorf("subscription closed")
				}
				if ev.Type == typ && ev.Member.Name == name {
					found = ev
					return nil
				}
			default:
				return fmt.Errorf("not yet")
			}
		}
	})
	return found
}

func TestLeavingNodeIsGoneAndReported(t *testing.T) {
	a := startNode(t, testConfig("node-a", "eu"))
	bc := testConfig("node-b", "eu")
	bc.Seeds = []string{a.addr()}
	b := startNode(t, bc)
	cc := testConfig("node-c", "eu")
	cc.Seeds = []string{a.addr()}
	c := startNode(t, cc)
	testsupport.WaitForNil(t, "converge", waitDeadline, func() error { return sameView([]*node{a, b, c}, a, b, c) })

	events, cancel := a.c.Subscribe(8)
	defer cancel()
	// The subscription starts with the current peers.
	expectEvent(t, events, Joined, "node-b")
	expectEvent(t, events, Joined, "node-c")

	c.stop(t) // graceful: Leave, then Shutdown
	testsupport.WaitForNil(t, "node-c gone from the others", waitDeadline, func() error { return sameView([]*node{a, b}, a, b) })
	ev := expectEvent(t, events, Left, "node-c")
	if ev.Member != c.c.Self() {
		t.Errorf("Left event member = %+v, want %+v", ev.Member, c.c.Self())
	}
	if got := a.counter(a.c.metrics.memberEvents, "left"); got != 1 {
		t.Errorf("left events on node-a = %v, want 1", got)
	}
	if g := membersGauge(t, a.reg, "eu"); g != 2 {
		t.Errorf("kura_cluster_members{eu} = %v, want 2", g)
	}
}

func TestCrashedNodeIsDeclaredDead(t *testing.T) {
	a := startNode(t, testConfig("node-a", "eu"))
	bc := testConfig("node-b", "eu")
	bc.Seeds = []string{a.addr()}
	b := startNode(t, bc)
	cc := testConfig("node-c", "eu")
	cc.Seeds = []string{a.addr()}
	c := startNode(t, cc)
	testsupport.WaitForNil(t, "converge", waitDeadline, func() error { return sameView([]*node{a, b, c}, a, b, c) })
	events, cancel := b.c.Subscribe(8)
	defer cancel()

	// No leave message: the others must find out by probing (suspicion, then dead).
	c.c.halt(false)
	testsupport.WaitForNil(t, "crashed node-c declared dead", waitDeadline, func() error { return sameView([]*node{a, b}, a, b) })
	expectEvent(t, events, Left, "node-c")
	// The failure detector's verdict, as the status page shows it (memberlist keeps a dead
	// node around until it reclaims it).
	if h := b.c.Health(); h["node-c"] != "" && h["node-c"] != "dead" {
		t.Errorf("node-b's Health()[node-c] = %q after the crash, want dead (or forgotten)", h["node-c"])
	}
	if h := c.c.Health(); len(h) != 0 {
		t.Errorf("the halted node's Health() = %v, want empty", h)
	}
}

func TestOtherTenantIsRejectedBothWays(t *testing.T) {
	aPort := freePort(t, "127.0.0.1")
	xc := testConfig("node-x", "eu")
	xc.Self.Tenant = "globex"
	xc.Seeds = []string{"127.0.0.1:" + strconv.Itoa(aPort)}
	x := startNode(t, xc)

	ac := testConfig("node-a", "eu")
	ac.BindPort = aPort
	ac.Seeds = []string{x.addr()} // node-a also tries to join the foreign node
	a := startNode(t, ac)
	bc := testConfig("node-b", "eu")
	bc.Seeds = []string{a.addr(), x.addr()}
	b := startNode(t, bc)

	// Wait until both sides have tried (and failed) repeatedly, the periodic rejoin included.
	testsupport.WaitForNil(t, "repeated refused joins", waitDeadline, func() error {
		for _, n := range []*node{x, a, b} {
			if f := n.counter(n.c.metrics.joinAttempts, "failure"); f < 3 {
				return fmt.Errorf("%s: %v failed joins", n.name(), f)
			}
			if r := n.counter(n.c.metrics.rejections, "tenant"); r < 1 {
				return fmt.Errorf("%s: %v tenant rejections", n.name(), r)
			}
		}
		return sameView([]*node{a, b}, a, b)
	})
	// What matters is that neither side ever admits the other. (A join attempt's own
	// success counter is not asserted: aPort was chosen by freePort and, until node-a binds
	// it, any other process on the machine may briefly hold it.)
	if err := sameView([]*node{x}, x); err != nil {
		t.Error(err)
	}
	if err := sameView([]*node{a, b}, a, b); err != nil {
		t.Error(err)
	}
}

func TestNodeWithoutKuraMetadataIsRejected(t *testing.T) {
	a := startNode(t, testConfig("node-a", "eu"))

	mc := memberlist.DefaultLocalConfig()
	mc.Name = "stranger"
	mc.BindAddr = "127.0.0.1"
	mc.BindPort = 0
	// Frequent push/pull: node-a then meets the stranger through anti-entropy too, where
	// only the alive delegate (not the merge delegate) stands in the way.
	mc.PushPullInterval = 100 * time.Millisecond
	mc.GossipInterval = 20 * time.Millisecond
	mc.Logger = log.New(io.Discard, "", 0)
	raw, err := memberlist.Create(mc)
	if err != nil {
		t.Fatalf("create a bare memberlist: %v", err)
	}
	defer func() { _ = raw.Shutdown() }()

	// The stranger has no admission rules, so from its side the join works; node-a refuses
	// to merge it, and refuses every alive message about it afterwards.
	if _, err := raw.Join([]string{a.addr()}); err != nil {
		t.Fatalf("the stranger could not even contact node-a: %v", err)
	}
	testsupport.WaitForNil(t, "node-a refuses the stranger repeatedly", waitDeadline, func() error {
		if got := a.counter(a.c.metrics.rejections, "metadata"); got < 3 {
			return fmt.Errorf("%v metadata rejections", got)
		}
		return sameView([]*node{a}, a)
	})
	if got := a.counter(a.c.metrics.memberEvents, "joined"); got != 0 {
		t.Errorf("node-a saw %v joins", got)
	}
}

func TestGossipKeyGatesMembership(t *testing.T) {
	key1 := bytes.Repeat([]byte{1}, 32)
	key2 := bytes.Repeat([]byte{2}, 32)

	ac := testConfig("node-a", "eu")
	ac.GossipKey = key1
	a := startNode(t, ac)
	bc := testConfig("node-b", "eu")
	bc.GossipKey = key1
	bc.Seeds = []string{a.addr()}
	b := startNode(t, bc)

	wrong := testConfig("node-wrong", "eu")
	wrong.GossipKey = key2
	wrong.Seeds = []string{a.addr()}
	w := startNode(t, wrong)
	keyless := testConfig("node-keyless", "eu")
	keyless.Seeds = []string{b.addr()}
	k := startNode(t, keyless)

	testsupport.WaitForNil(t, "keyed nodes converge and outsiders keep failing", waitDeadline, func() error {
		for _, n := range []*node{w, k} {
			if f := n.counter(n.c.metrics.joinAttempts, "failure"); f < 3 {
				return fmt.Errorf("%s: %v failed joins", n.name(), f)
			}
		}
		return sameView([]*node{a, b}, a, b)
	})
	for _, n := range []*node{w, k} {
		if err := sameView([]*node{n}, n); err != nil {
			t.Error(err)
		}
		if got := n.counter(n.c.metrics.joinAttempts, "success"); got != 0 {
			t.Errorf("%s joined %v times", n.name(), got)
		}
	}
}

func TestRestartedNodeRejoins(t *testing.T) {
	a := startNode(t, testConfig("node-a", "eu"))
	cc := testConfig("node-c", "eu")
	cc.Seeds = []string{a.addr()}
	c := startNode(t, cc)
	bc := testConfig("node-b", "us")
	bc.Seeds = []string{a.addr(), c.addr()}
	b := startNode(t, bc)
	testsupport.WaitForNil(t, "converge", waitDeadline, func() error { return sameView([]*node{a, b, c}, a, b, c) })
	events, cancel := a.c.Subscribe(8)
	defer cancel()

	port, err := strconv.Atoi(b.addr()[len("127.0.0.1:"):])
	if err != nil {
		t.Fatal(err)
	}
	b.stop(t)
	testsupport.WaitForNil(t, "node-b gone", waitDeadline, func() error { return sameView([]*node{a, c}, a, c) })
	expectEvent(t, events, Left, "node-b")

	// Same name, same port, new metadata: it rejoins with nobody's help.
	bc.BindPort = port
	bc.Self.URL = "http://node-b.test:4100"
	b2 := startNode(t, bc)
	testsupport.WaitForNil(t, "restarted node-b is back", waitDeadline, func() error { return sameView([]*node{a, b2, c}, a, b2, c) })
	ev := expectEvent(t, events, Joined, "node-b")
	if ev.Member.URL != "http://node-b.test:4100" {
		t.Errorf("Joined event carries %+v, want the new URL", ev.Member)
	}
}

func TestRestartedSeedIsRejoinedByItsPeers(t *testing.T) {
	// node-b has no seeds at all; only the periodic rejoin of node-a (whose seed it is)
	// can bring it back after a restart.
	b := startNode(t, testConfig("node-b", "eu"))
	ac := testConfig("node-a", "eu")
	ac.Seeds = []string{b.addr()}
	a := startNode(t, ac)
	testsupport.WaitForNil(t, "converge", waitDeadline, func() error { return sameView([]*node{a, b}, a, b) })

	bc := testConfig("node-b", "eu")
	_, ps, _ := net.SplitHostPort(b.addr())
	bc.BindPort, _ = strconv.Atoi(ps)
	b.stop(t)
	testsupport.WaitForNil(t, "node-b gone", waitDeadline, func() error { return sameView([]*node{a}, a) })

	b2 := startNode(t, bc)
	testsupport.WaitForNil(t, "node-a re-joins its restarted seed", waitDeadline, func() error { return sameView([]*node{a, b2}, a, b2) })
	if got := a.counter(a.c.metrics.joinAttempts, "success"); got < 2 {
		t.Errorf("node-a successful joins = %v, want the first and the rejoin", got)
	}
}

func TestSeedsThatComeUpLaterAreJoined(t *testing.T) {
	bPort, cPort := freePort(t, "127.0.0.1"), freePort(t, "127.0.0.1")
	for cPort == bPort {
		cPort = freePort(t, "127.0.0.1")
	}
	ac := testConfig("node-a", "eu")
	ac.Seeds = []string{"127.0.0.1:" + strconv.Itoa(bPort), "127.0.0.1:" + strconv.Itoa(cPort)}
	a := startNode(t, ac)
	testsupport.WaitForNil(t, "node-a has tried its absent seeds", waitDeadline, func() error {
		if f := a.counter(a.c.metrics.joinAttempts, "failure"); f < 4 {
			return fmt.Errorf("%v failed joins", f)
		}
		return nil
	})

	bc := testConfig("node-b", "eu")
	bc.BindPort = bPort
	b := startNode(t, bc)
	cc := testConfig("node-c", "us")
	cc.BindPort = cPort
	c := startNode(t, cc)
	testsupport.WaitForNil(t, "late seeds joined", waitDeadline, func() error { return sameView([]*node{a, b, c}, a, b, c) })
}

func TestDNSDiscoveryARecords(t *testing.T) {
	dns := testdns.Start(t)
	port := freePort(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")

	ac := testConfig("node-a", "eu")
	ac.BindAddr, ac.BindPort = "127.0.0.2", port
	a := startNode(t, ac)
	bc := testConfig("node-b", "eu")
	bc.BindAddr, bc.BindPort = "127.0.0.3", port
	bc.Seeds = []string{a.addr()}
	b := startNode(t, bc)
	testsupport.WaitForNil(t, "seed cluster", waitDeadline, func() error { return sameView([]*node{a, b}, a, b) })

	// The record set includes the new node itself, as a headless service would.
	dns.SetA("kura-gossip.test", "127.0.0.2", "127.0.0.3", "127.0.0.4")
	dc := testConfig("node-d", "ap")
	dc.BindAddr, dc.BindPort = "127.0.0.4", port
	dc.DNSName = "kura-gossip.test."
	dc.DNSServer = dns.Addr()
	d := startNode(t, dc)
	testsupport.WaitForNil(t, "DNS-discovered node joins", waitDeadline, func() error { return sameView([]*node{a, b, d}, a, b, d) })
	if got := d.counter(d.c.metrics.joinAttempts, "failure"); got != 0 {
		t.Errorf("node-d failed joins = %v (did it try itself?)", got)
	}
}

func TestDNSDiscoverySRVRecordsReresolved(t *testing.T) {
	dns := testdns.Start(t)
	a := startNode(t, testConfig("node-a", "eu"))
	bc := testConfig("node-b", "eu")
	bc.Seeds = []string{a.addr()}
	b := startNode(t, bc)

	dc := testConfig("node-d", "eu")
	dc.DNSName = "_gossip._tcp.kura.test."
	dc.DNSServer = dns.Addr()
	d := startNode(t, dc)
	// Until the records exist the name does not resolve; node-d must keep asking.
	testsupport.WaitForNil(t, "node-d re-resolves", waitDeadline, func() error {
		if q := dns.Queries(); q < 6 {
			return fmt.Errorf("%d DNS queries", q)
		}
		return nil
	})
	if err := sameView([]*node{d}, d); err != nil {
		t.Fatal(err)
	}

	portOf := func(n *node) uint16 {
		_, ps, _ := net.SplitHostPort(n.addr())
		p, _ := strconv.Atoi(ps)
		return uint16(p)
	}
	dns.SetA("a.kura.test", "127.0.0.1")
	dns.SetA("b.kura.test", "127.0.0.1")
	dns.SetSRV("_gossip._tcp.kura.test", []testdns.Target{{Host: "a.kura.test", Port: portOf(a)}, {Host: "b.kura.test", Port: portOf(b)}})
	testsupport.WaitForNil(t, "SRV-discovered node joins", waitDeadline, func() error { return sameView([]*node{a, b, d}, a, b, d) })
}
